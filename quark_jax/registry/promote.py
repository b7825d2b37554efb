"""Registering runs, and promotion past the evaluation regression gate.

:func:`register` enters a run into the ledger with what its lineage says (parents, data hashes, config hash,
code commit). :func:`run_gate` evaluates the run's newest checkpoint on a baseline's tasks
(:mod:`quark_jax.evaluation.harness`) and compares the figures with the baseline
(:func:`quark_jax.evaluation.regression.compare`), recording the result in the run's lineage. Figures already
recorded for the same checkpoint, tasks, limit and seed (by an earlier gate or ``quark eval --tasks``) are read
back instead of evaluating again -- the evaluation is deterministic; only the verdict depends on the baseline.
:func:`promote` writes ``evaluated`` and then ``promoted`` -- or ``rejected``, raising :class:`PromotionRefused`
whose one-line message names every regression.
"""

from __future__ import annotations

import dataclasses

from quark_jax import lineage, run_paths
from quark_jax.data import fingerprint
from quark_jax.registry.ledger import Ledger


class PromotionRefused(Exception):
    """The gate failed (or there was nothing to gate on): one line naming the run, the stage and why."""


@dataclasses.dataclass(frozen=True)
class GateResult:
    """What the regression gate found for one checkpoint of a run."""

    run: str
    step: int | None
    baseline: str
    baseline_sha256: str
    tasks: dict[str, dict[str, float]]  # {task: {metric: value}}
    regressions: list[dict]
    reused: bool  # read back from the run's lineage rather than evaluated now

    @property
    def passed(self) -> bool:
        return not self.regressions


def run_dir_of(run: str) -> str:
    """The absolute run directory of ``run`` (checked: model config and parameters present)."""
    from quark_jax import runs

    return run_paths.absolute(runs.resolve(run, "run"))


def register(run: str, ledger: Ledger) -> dict | None:
    """Appends ``registered`` for the run (its lineage's parents, data, config and code) unless this run id is
    registered already; returns the new event, or None. A run without a lineage (made before lineages, or
    imported) gets one holding only a run id and its kind."""
    run = run_dir_of(run)
    record = lineage.ensure_lineage(run)
    if ledger.is_registered(run, record["run_id"]):
        return None
    return ledger.append(
        "registered", run, run_id=record["run_id"], kind=record.get("kind"),
        parents=[{k: p.get(k) for k in ("role", "path", "step", "run_id")} for p in record.get("parents", [])],
        data=[{k: d[k] for k in ("role", "name", "path", "sha256") if k in d}
              | ({"derived_from": {k: d["derived_from"].get(k) for k in ("feedback", "sha256")}}
                 if isinstance(d.get("derived_from"), dict) else {})
              for d in record.get("data", [])],
        config_sha256=(record.get("config") or {}).get("sha256"),
        git_commit=(record.get("code") or {}).get("git_commit"))


def run_gate(run: str, baseline: str, tasks: str | None = None, limit: int | None = None, seed: int = 0,
             batch_size: int = 16, reuse: bool = True) -> GateResult:
    """The regression gate on the run's newest checkpoint (see the module docstring)."""
    from quark_jax.evaluation import regression

    run = run_dir_of(run)
    stored = regression.read_baseline(baseline)
    baseline_sha = fingerprint.file_sha256(baseline)
    spec = tasks or ",".join(stored["tasks"])
    step = lineage.newest_step(run)
    key = {"step": step, "limit": limit, "seed": seed, "task_spec": spec}
    figures = None
    if reuse:  # the figures depend on the checkpoint, tasks, limit and seed only; the verdict on the baseline
        figures = next((record["tasks"] for record in reversed(lineage.evaluations(run))
                        if record.get("tasks") and all(record.get(k) == v for k, v in key.items())), None)
    reused = figures is not None
    if figures is None:
        figures = lineage.task_figures(_evaluate(run, spec, limit, seed, batch_size))
    as_results = {"tasks": {task: {"metrics": {m: {"value": v} for m, v in metrics.items()}}
                            for task, metrics in figures.items()}}
    regressions = [r.as_dict() for r in regression.compare(as_results, stored)]
    baseline = run_paths.absolute(baseline)
    lineage.append_evaluation(run, {**key, "source": "gate", "tasks": figures, "reused": reused, "gate": {
        "baseline": baseline, "baseline_sha256": baseline_sha, "passed": not regressions,
        "regressions": regressions}})
    return GateResult(run, step, baseline, baseline_sha, figures, regressions, reused)


def _evaluate(run: str, spec: str, limit: int | None, seed: int, batch_size: int) -> dict:
    import quark_jax
    from quark_jax.evaluation import harness
    from quark_jax.evaluation import tasks as task_lib

    selected = task_lib.find_tasks(spec)
    for task in selected:  # a bad task file fails before the model is loaded
        task_lib.load_examples(task, limit)
    model = quark_jax.load(run)
    return harness.evaluate(model, selected, batch_size=batch_size, limit=limit, progress=False, seed=seed,
                            model_dir=run)


def describe_regressions(regressions: list[dict]) -> str:
    """``task/metric now (allowed <= x)`` for each regression, ``; ``-separated."""
    parts = []
    for r in regressions:
        now = "missing" if r["now"] is None else f"{r['now']:.4g}"
        parts.append(f"{r['task']}/{r['metric']} {now} (allowed {'>=' if r['higher_is_better'] else '<='} "
                     f"{r['allowed']:.4g})")
    return "; ".join(parts)


def promote(run: str, stage: str, ledger: Ledger, baseline: str, tasks: str | None = None,
            limit: int | None = None, seed: int = 0, batch_size: int = 16) -> dict:
    """Registers the run if needed, gates it and appends ``evaluated`` then ``promoted`` (returned) or
    ``rejected`` (then raises :class:`PromotionRefused`)."""
    from quark_jax.evaluation import regression

    run = run_dir_of(run)
    regression.read_baseline(baseline)  # a missing or malformed baseline fails before anything is recorded
    ledger.verify()  # a tampered ledger is refused before any work
    register(run, ledger)
    run_id = lineage.read_lineage(run)["run_id"]
    result = run_gate(run, baseline, tasks, limit, seed, batch_size)
    evaluated = ledger.append("evaluated", run, run_id=run_id, step=result.step, baseline=result.baseline,
                              baseline_sha256=result.baseline_sha256, tasks=result.tasks, passed=result.passed,
                              regressions=result.regressions, reused=result.reused, limit=limit, seed=seed)
    if not result.passed:
        ledger.append("rejected", run, run_id=run_id, stage=stage, step=result.step, evaluation=evaluated["hash"],
                      reason=describe_regressions(result.regressions))
        raise PromotionRefused(
            f"{run} not promoted to {stage}: {len(result.regressions)} regression(s) against {baseline}: "
            f"{describe_regressions(result.regressions)}")
    previous = ledger.current(stage)
    return ledger.append("promoted", run, run_id=run_id, stage=stage, step=result.step, evaluation=evaluated["hash"],
                         replaces=previous["run"] if previous else None)
