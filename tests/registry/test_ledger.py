"""The registry ledger's hash chain, content hashes of data, and `quark runs diff` -- no model needed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest

from quark_jax import cli
from quark_jax.data import fingerprint
from quark_jax.registry import diff
from quark_jax.registry.ledger import GENESIS, Ledger, LedgerTamperedError


def _canonical_hash(record: dict) -> str:
    """The line hash computed here, independently: SHA-256 of the sorted, space-free JSON without "hash"."""
    body = dict(record)
    body.pop("hash")
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _three_events(path) -> Ledger:
    ledger = Ledger(str(path))
    ledger.append("registered", "/runs/a", run_id="a1", kind="lm")
    ledger.append("evaluated", "/runs/a", run_id="a1", passed=True, tasks={"t": {"acc": 0.5}})
    ledger.append("promoted", "/runs/a", run_id="a1", stage="production")
    return ledger


def test_each_line_carries_the_previous_lines_hash(tmp_path):
    ledger = _three_events(tmp_path / "registry.jsonl")
    lines = [json.loads(line) for line in (tmp_path / "registry.jsonl").read_text().splitlines()]
    assert [r["seq"] for r in lines] == [1, 2, 3]
    assert lines[0]["prev"] == GENESIS
    assert [r["prev"] for r in lines[1:]] == [r["hash"] for r in lines[:-1]]
    assert all(r["hash"] == _canonical_hash(r) for r in lines)
    assert ledger.verify() == lines[-1]["hash"]
    assert ledger.current("production")["run_id"] == "a1" and ledger.current("staging") is None


def test_an_edited_line_is_detected_and_named(tmp_path, capsys):
    path = tmp_path / "registry.jsonl"
    _three_events(path)
    lines = path.read_text().splitlines()
    good = path.read_text()

    # Edit the evaluation's verdict: the line no longer matches its own hash.
    edited = json.loads(lines[1])
    edited["passed"] = False
    path.write_text("\n".join([lines[0], json.dumps(edited, sort_keys=True), lines[2]]) + "\n")
    with pytest.raises(LedgerTamperedError, match=r"line 2: its content does not match its hash"):
        Ledger(str(path)).verify()

    # A careful forger re-hashes the edited line: then the next line's 'prev' no longer matches.
    edited["hash"] = _canonical_hash(edited)
    path.write_text("\n".join([lines[0], json.dumps(edited, sort_keys=True), lines[2]]) + "\n")
    with pytest.raises(LedgerTamperedError, match=r"line 3: its 'prev' does not match the hash of line 2"):
        Ledger(str(path)).verify()

    # Deleting the first line breaks the chain at the new first line.
    path.write_text("\n".join(lines[1:]) + "\n")
    with pytest.raises(LedgerTamperedError, match=r"line 1: the first line's 'prev' is not the genesis hash"):
        Ledger(str(path)).verify()
    # Nothing can be appended to a broken chain.
    with pytest.raises(LedgerTamperedError):
        Ledger(str(path)).append("registered", "/runs/b", run_id="b1")

    # Through the command line: one line on stderr, exit status 2; the intact ledger verifies.
    assert cli.main(["runs", "verify", "--registry", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("quark runs verify: ") and "line 1" in err[0]
    path.write_text(good)
    assert cli.main(["runs", "verify", "--registry", str(path)]) == 0
    assert f"3 events, chain intact; head {json.loads(lines[2])['hash']}" in capsys.readouterr().out


def test_content_hashes_follow_bytes_not_paths(tmp_path):
    data = tmp_path / "pairs"
    data.mkdir()
    (data / "train.jsonl").write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    (data / "validation.jsonl").write_text("")
    raw = (data / "train.jsonl").read_bytes()
    assert fingerprint.file_sha256(str(data / "train.jsonl")) == hashlib.sha256(raw).hexdigest()
    digest, files = fingerprint.tree_sha256(str(data))
    assert files == 2
    shutil.copytree(data, tmp_path / "copy")
    assert fingerprint.tree_sha256(str(tmp_path / "copy"))[0] == digest  # moved: same bytes, same hash
    (tmp_path / "copy" / "train.jsonl").write_text('{"prompt": "a", "chosen": "c", "rejected": "b"}\n')
    assert fingerprint.tree_sha256(str(tmp_path / "copy"))[0] != digest  # one record edited
    os.rename(tmp_path / "copy" / "validation.jsonl", tmp_path / "copy" / "held_out.jsonl")
    shutil.copy(data / "train.jsonl", tmp_path / "copy" / "train.jsonl")
    assert fingerprint.tree_sha256(str(tmp_path / "copy"))[0] != digest  # a file renamed
    os.symlink(data / "train.jsonl", data / "link.jsonl")
    with pytest.raises(ValueError, match="link.jsonl is not a regular file"):
        fingerprint.tree_sha256(str(data))


OPERATIVE = """# Macros:
# ==============================================================================
MODEL_DIR = '{model_dir}'
TRAIN_STEPS = {steps}

# Parameters for DataConfig:
# ==============================================================================
DataConfig.task_feature_lengths = {{'targets': 128}}

# Parameters for TrainConfig:
# ==============================================================================
TrainConfig.model_dir = %MODEL_DIR
TrainConfig.sample_prompts = ('def ',
                              'class ')
TrainConfig.steps = %TRAIN_STEPS
"""


def _fake_run(root, name, steps, model, parents):
    run = root / name
    (run / "checkpoints" / str(steps)).mkdir(parents=True)
    (run / "model_config.json").write_text(json.dumps(model))
    (run / "config.gin").write_text(OPERATIVE.format(model_dir=run, steps=steps))
    (run / "lineage.json").write_text(json.dumps({"run_id": name, "kind": "lm", "parents": parents, "evaluations": [
        {"step": steps, "source": "gate", "tasks": {"stdlib_mc": {"acc": steps / 100}}}]}))
    return str(run)


def test_runs_diff_names_changed_bindings_model_fields_and_lineage(tmp_path, capsys):
    bindings = diff.parse_bindings(OPERATIVE.format(model_dir="/r", steps=7))
    assert bindings["TrainConfig.sample_prompts"] == "('def ', 'class ')"  # a continued value is joined
    assert diff.resolve_macros(bindings)["TrainConfig.steps"] == "7"
    a = _fake_run(tmp_path, "a", 40, {"d_model": 256, "num_layers": 4}, [])
    b = _fake_run(tmp_path, "b", 5, {"d_model": 256, "num_layers": 2},
                  [{"role": "init_from", "path": a, "step": 40, "run_id": "a"}])
    assert cli.main(["runs", "diff", a, b]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "model num_layers: 4 -> 2" in out
    assert "config TRAIN_STEPS: 40 -> 5" in out and "config TrainConfig.steps: 40 -> 5" in out
    assert f"config TrainConfig.model_dir: '{a}' -> '{b}'" in out
    assert f"lineage parent.init_from.path: (absent) -> {a}" in out
    assert "lineage eval.stdlib_mc.acc: 0.4 -> 0.05" in out
    assert not [line for line in out if "d_model" in line or "task_feature_lengths" in line or "sample_prompts" in line]
    assert cli.main(["runs", "diff", a, str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("quark runs diff: ") and "nowhere" in err[0]
