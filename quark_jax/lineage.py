"""Where a run came from: ``MODEL_DIR/lineage.json``, written by the trainer when a run starts.

::

    {"format": 1, "run_id": "3f2a...", "created": 1800000000.0, "run_dir": "/abs/run", "kind": "dpo",
     "parents": [{"role": "init_from", "path": "/abs/base", "step": 40, "run_id": "...", "kind": "lm"},
                 {"role": "reference", ...}],
     "data": [{"role": "mixture", "name": "stdlib"},
              {"role": "objective_data", "path": "/abs/pairs", "sha256": "...", "files": 3,
               "derived_from": {"feedback": "/abs/feedback.jsonl", "sha256": "...", ...}}],
     "config": {"file": "config.gin", "sha256": "..."},
     "code": {"git_commit": "e9bd4d2..." | null, "git_dirty": false | null, "version": "0.1.0"},
     "starts": [{"time": ..., "git_commit": ..., "config_sha256": ...}],
     "evaluations": [{"time": ..., "step": 40, "source": "validation", "figures": {"val_loss": 2.1}},
                     {"time": ..., "step": 40, "source": "quark eval", "tasks": {"stdlib_mc": {"acc": 0.5}},
                      "limit": 8, "seed": 0, "gate": {"baseline": ..., "baseline_sha256": ..., "passed": true,
                      "regressions": []}}]}

**Parents** are the other runs whose parameters this one read, by role: ``init_from`` (the warm start),
``teacher`` (distillation), ``reference`` (DPO, PPO), ``base`` (LoRA), ``reward_model`` (PPO); each with its
newest checkpoint step when this run started and its own ``run_id`` (when it has a lineage), so lineages chain.

**Data** names the training mixture; where the data is a directory built by ``quark data build`` (a mixture
registered from a built directory) or an objective's JSONL directory (preference pairs, labelled examples), it
also carries a content hash (:mod:`quark_jax.data.fingerprint`) and, for pairs made from server feedback, the
feedback file and its hash (the ``source.json`` that ``quark data feedback`` writes beside the pairs).

**Code** is the git commit of the checkout the package runs from (null when it is not a git checkout, e.g. an
installed wheel). A resumed run keeps its ``run_id``, ``created`` and evaluations and adds an entry to
``starts``. Evaluation results are appended as they are produced (the trainer's periodic task suites and final
validation, ``quark eval --tasks``, the promotion gate). Every write replaces the file atomically, and every
read-modify-write (a start, an appended evaluation) holds an exclusive ``flock`` on ``lineage.json.lock`` beside
it, so two processes appending at once (the trainer's final validation and a ``quark eval``) never lose one.
On an object store (``gs://``) there is no such lock: there the trainer's process 0 is the only writer.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

from quark_jax import run_paths
from quark_jax.data import fingerprint

LINEAGE_FILE = "lineage.json"
LOCK_FILE = "lineage.json.lock"
FORMAT = 1
# objective.json field -> parent role
PARENT_FIELDS = {"teacher_dir": "teacher", "reference_dir": "reference", "base_dir": "base",
                 "reward_model_dir": "reward_model"}
SOURCE_FILE = "source.json"  # beside preference pairs made from feedback (quark_jax.serving.feedback)


def _path(run_dir: str) -> str:
    return run_paths.safe_path(run_dir, LINEAGE_FILE)


def read_lineage(run_dir: str) -> dict:
    """The run's ``lineage.json`` (``{}`` when it has none: a run from before lineages, or an import)."""
    path = _path(run_dir)
    if not run_paths.exists(path):
        return {}
    try:
        return json.loads(run_paths.read_text(path))
    except ValueError as e:
        raise ValueError(f"{path} is not readable JSON ({e}); restore it from a copy") from None


@contextlib.contextmanager
def _locked(run_dir: str) -> Iterator[None]:
    """Holds an exclusive ``flock`` on ``run_dir/lineage.json.lock`` (created if missing, never through a
    symlink) while the lineage is read, changed and replaced; nothing on an object store (no locks there)."""
    if not run_paths.is_local(run_dir):
        yield
        return
    run_paths.makedirs(run_dir)
    fd = os.open(run_paths.safe_path(run_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _write(run_dir: str, lineage: Mapping[str, Any]) -> None:
    run_paths.write_text(_path(run_dir), json.dumps(lineage, indent=2, default=float) + "\n")


def newest_step(run_dir: str) -> int | None:
    """The newest committed checkpoint step of a run directory (orbax renames a step into place once it is
    complete, so a digit-named directory is a committed step); None without checkpoints."""
    steps = [int(n) for n in run_paths.listdir(run_paths.join(run_dir, "checkpoints")) if n.isdigit()]
    return max(steps) if steps else None


def git_state(package_dir: str | None = None) -> dict[str, Any]:
    """``{"git_commit", "git_dirty"}`` of the checkout this package runs from; both None when the package is not
    the top of a git work tree (an installed wheel inside someone else's repository does not count)."""
    package_dir = package_dir or os.path.dirname(os.path.abspath(__file__))
    checkout = os.path.dirname(package_dir)

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", checkout, *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if not top or os.path.realpath(top) != os.path.realpath(checkout):
        return {"git_commit": None, "git_dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": git("rev-parse", "HEAD"), "git_dirty": None if status is None else bool(status)}


def parent(role: str, run_dir: str) -> dict[str, Any]:
    """A parent entry: role, absolute path, newest step, and the parent's own run id and kind when recorded."""
    path = run_paths.absolute(run_dir)
    if path.rsplit("/", 1)[-1] == "checkpoints":
        path = path.rsplit("/", 1)[0]
    entry: dict[str, Any] = {"role": role, "path": path, "step": None, "run_id": None, "kind": None}
    if run_paths.isdir(path):
        entry["step"] = newest_step(path)
        entry["run_id"] = read_lineage(path).get("run_id")
        objective = run_paths.safe_path(path, "objective.json")
        if run_paths.exists(objective):
            entry["kind"] = json.loads(run_paths.read_text(objective)).get("kind", "lm")
    return entry


def parents_of(init_from: str | None, objective_info: Mapping[str, Any], extra: Mapping[str, str] = ()) -> list[dict]:
    """The parent runs of a run: ``init_from``, the run directories its objective names (teacher, reference,
    base, reward model) and ``extra`` ({role: run_dir})."""
    found = [("init_from", init_from)] if init_from else []
    found += [(role, objective_info.get(name)) for name, role in PARENT_FIELDS.items() if objective_info.get(name)]
    found += list(dict(extra).items())
    return [parent(role, run_dir) for role, run_dir in found]


def describe_data(role: str, path: str) -> dict[str, Any]:
    """A data entry for a file or directory: its absolute path and content hash; the feedback it was made from
    when a ``source.json`` lies beside it."""
    path = run_paths.absolute(path)
    entry: dict[str, Any] = {"role": role, "path": path}
    if not run_paths.exists(path):
        entry["missing"] = True
        return entry
    if run_paths.isdir(path):
        entry["sha256"], entry["files"] = fingerprint.tree_sha256(path)
        source = run_paths.join(path, SOURCE_FILE)
        if run_paths.exists(source):
            entry["derived_from"] = json.loads(run_paths.read_text(source))
    else:
        entry["sha256"] = fingerprint.file_sha256(path)
    return entry


def data_versions(mixture: str, objective_info: Mapping[str, Any]) -> list[dict]:
    """The data a run reads: its mixture (with the built directory's hash when it was registered from one) and
    an objective's own data directory (hashed)."""
    from quark_jax.data.built_tasks import REGISTERED_DIRS

    entries = [{"role": "mixture", "name": mixture}]
    if mixture in REGISTERED_DIRS:
        entries[0].update(describe_data("mixture", REGISTERED_DIRS[mixture]), role="mixture")
    if objective_info.get("data_dir"):
        entries.append(describe_data("objective_data", objective_info["data_dir"]))
    return entries


def record_training(run_dir: str, init_from: str | None, mixture: str, objective_info: Mapping[str, Any],
                    gin_config_text: str, extra_parents: Mapping[str, str] = ()) -> dict:
    """Writes (or, on a resumed run, updates) ``lineage.json`` at the start of training; returns it."""
    # the package's version, read without importing the package here (it imports the trainer, which imports this)
    code = {**git_state(), "version": getattr(sys.modules.get("quark_jax"), "__version__", None)}
    config = {"file": "config.gin", "sha256": fingerprint.text_sha256(gin_config_text) if gin_config_text else None}
    start = {"time": time.time(), "git_commit": code["git_commit"], "config_sha256": config["sha256"]}
    parents, data = parents_of(init_from, objective_info, extra_parents), data_versions(mixture, objective_info)
    with _locked(run_dir):
        previous = read_lineage(run_dir)
        lineage = _training_record(previous, run_dir, objective_info, parents, data, config, code, start)
        _write(run_dir, lineage)
    return lineage


def _training_record(previous: Mapping[str, Any], run_dir: str, objective_info: Mapping[str, Any], parents: list,
                     data: list, config: dict, code: dict, start: dict) -> dict:
    return {
        "format": FORMAT,
        "run_id": previous.get("run_id") or uuid.uuid4().hex,
        "created": previous.get("created") or start["time"],
        "run_dir": run_paths.absolute(run_dir),
        "kind": objective_info.get("kind", "lm"),
        "parents": parents,
        "data": data,
        "config": config,
        "code": code,
        "starts": [*previous.get("starts", []), start],
        "evaluations": previous.get("evaluations", []),
    }


def task_figures(results: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """``{task: {metric: value}}`` of a harness result (:func:`quark_jax.evaluation.harness.evaluate`)."""
    return {task: {metric: float(figure["value"]) for metric, figure in t["metrics"].items()}
            for task, t in results["tasks"].items()}


def append_evaluation(run_dir: str, record: Mapping[str, Any]) -> dict:
    """Appends one evaluation record (``step``, ``source``, and ``tasks`` or ``figures``) to the run's lineage,
    stamped with the time; returns the record as written. A run without a lineage gets one holding only this.
    Concurrent appends (other processes, other threads) are serialised by the lineage's lock: none is lost."""
    record = {"time": time.time(), **record}
    with _locked(run_dir):
        lineage = read_lineage(run_dir)
        lineage.setdefault("evaluations", []).append(record)
        _write(run_dir, lineage)
    return record


def evaluations(run_dir: str) -> list[dict]:
    return read_lineage(run_dir).get("evaluations", [])


def objective_parents(objective: Any) -> dict[str, str]:
    """The parent run directories an objective holds as attributes (``reward_model_dir`` of PPO ...), for
    objectives whose ``objective.json`` does not carry them as plain paths."""
    return {name: value for name in PARENT_FIELDS if isinstance(value := getattr(objective, name, None), str)}


def ensure_lineage(run_dir: str) -> dict:
    """The run's lineage; a run without one (made before lineages, imported, quantized) first gets a minimal
    one: a run id, its kind, no parents."""
    record = read_lineage(run_dir)
    if record.get("run_id"):
        return record
    with _locked(run_dir):
        record = read_lineage(run_dir)  # another process may have written it meanwhile
        if record.get("run_id"):
            return record
        objective = run_paths.safe_path(run_dir, "objective.json")
        kind = json.loads(run_paths.read_text(objective)).get("kind", "lm") if run_paths.exists(objective) else "lm"
        record = {"format": FORMAT, "created": time.time(), "run_dir": run_paths.absolute(run_dir), "kind": kind,
                  "parents": [], "data": [], "config": None, "code": None, "starts": [], "evaluations": [], **record,
                  "run_id": uuid.uuid4().hex}
        _write(run_dir, record)
    return record
