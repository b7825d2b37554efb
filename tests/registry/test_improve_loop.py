"""The loop on the shared tiny run: server feedback -> preference pairs -> a 3-step DPO run -> the regression gate
-> promote (`quark improve`), then a refused promotion (`quark runs promote`) and a tampered ledger."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

from quark_jax import cli

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASELINE = os.path.join(REPO, "evals", "baselines", "tiny_test.json")
GATE = ["--tasks", "perplexity_code", "--limit", "4"]
# The DPO run kept small: 3 steps of 2 pairs, 32-token sequences; no samples, held-out pass or FLOPs measurement.
DPO_BINDINGS = ["--gin.BATCH_SIZE=2", "--gin.TASK_FEATURE_LENGTHS={'targets': 32}",
                "--gin.quark_jax.TrainConfig.sample_prompts=()", "--gin.quark_jax.TrainConfig.eval_batches=0",
                "--gin.quark_jax.TrainConfig.peak_flops_per_s=1e11", "--gin.quark_jax.TrainConfig.progress_bar=False"]


def _feedback(path) -> None:
    """What `quark serve --log_dir` appends on POST /v1/feedback: preferred choices and thumbs up/down."""
    entries = [
        {"time": 1.0, "id": "chatcmpl-1", "preferred": 0, "prompt": "What is 2 + 2?", "choices": ["4", "5"]},
        {"time": 2.0, "id": "chatcmpl-2", "preferred": 1, "prompt": "Which module reads JSON?",
         "choices": ["pickle", "json"]},
        {"time": 3.0, "id": "chatcmpl-3", "rating": 1, "choice": 0, "prompt": "Say hi.", "choices": ["hi"]},
        {"time": 4.0, "id": "chatcmpl-4", "rating": -1, "choice": 0, "prompt": "Say hi.", "choices": ["bye"]},
    ]
    path.write_text("".join(json.dumps(e) + "\n" for e in entries))


def _passes(figures: dict, baseline: dict) -> bool:
    """The gate recomputed here from the baseline file: lower-is-better perplexity within its tolerance."""
    return all(figures[task][metric] <= entry["value"] + entry["tolerance"] if not entry["higher_is_better"]
               else figures[task][metric] >= entry["value"] - entry["tolerance"]
               for task, metrics in baseline["tasks"].items() if task in figures
               for metric, entry in metrics.items())


def test_feedback_to_dpo_to_gate_to_promotion(trained_run, tmp_path, capsys):
    base = str(tmp_path / "base")
    shutil.copytree(trained_run["model_dir"], base)  # registering writes the base's lineage.json
    feedback, ledger, out = tmp_path / "feedback.jsonl", str(tmp_path / "registry.jsonl"), tmp_path / "improved"
    _feedback(feedback)

    code = cli.main(["improve", "--feedback", str(feedback), "--base", base, "--out", str(out), "--baseline", BASELINE,
                     "--registry", ledger, "--steps", "3", *GATE, *DPO_BINDINGS])
    captured = capsys.readouterr()
    dpo = str(out / "dpo")

    # The DPO run's lineage names the base (warm start and reference, at its newest step 40, by run id) and the
    # pairs it trained on with the feedback file's content hash.
    lineage = json.loads((out / "dpo" / "lineage.json").read_text())
    base_id = json.loads((tmp_path / "base" / "lineage.json").read_text())["run_id"]
    assert lineage["kind"] == "dpo"
    assert {(p["role"], p["path"], p["step"], p["run_id"]) for p in lineage["parents"]} == {
        ("init_from", base, 40, base_id), ("reference", base, 40, base_id)}
    pairs = next(d for d in lineage["data"] if d["role"] == "objective_data")
    assert pairs["path"] == str(out / "pairs")
    assert pairs["derived_from"]["sha256"] == hashlib.sha256(feedback.read_bytes()).hexdigest()
    assert pairs["derived_from"]["feedback"] == str(feedback)
    gin_text = (out / "dpo" / "config.gin").read_text()
    assert lineage["config"]["sha256"] == hashlib.sha256(gin_text.encode()).hexdigest()

    # The ledger: base registered, the DPO run registered, evaluated, then promoted or rejected as the gate says,
    # and the gate's verdict agrees with the baseline comparison redone here.
    records = [json.loads(line) for line in open(ledger)]
    assert [(r["event"], r["run"]) for r in records[:3]] == [("registered", base), ("registered", dpo),
                                                            ("evaluated", dpo)]
    evaluated = records[2]
    baseline = json.loads(open(BASELINE).read())
    assert evaluated["passed"] == _passes(evaluated["tasks"], baseline)
    assert set(evaluated["tasks"]) == {"perplexity_code"} and evaluated["step"] == 3
    gates = [e for e in json.loads((out / "dpo" / "lineage.json").read_text())["evaluations"] if e["source"] == "gate"]
    assert len(gates) == 1 and gates[0]["tasks"] == evaluated["tasks"] and gates[0]["step"] == 3
    assert gates[0]["gate"]["passed"] == evaluated["passed"]
    assert gates[0]["gate"]["baseline_sha256"] == hashlib.sha256(open(BASELINE, "rb").read()).hexdigest()
    final = records[3]
    assert final["evaluation"] == evaluated["hash"] and final["stage"] == "production"
    if evaluated["passed"]:
        assert (code, final["event"]) == (0, "promoted")
        assert f"promoted {dpo} (step 3) to production; ledger head {final['hash']}" in captured.out
    else:
        assert (code, final["event"]) == (2, "rejected")
        assert captured.err.strip().startswith(f"quark improve: {dpo} not promoted to production")

    # A stricter baseline (code perplexity halved): the promotion is refused in one line naming the metric; the
    # ledger records the evaluation and the rejection, and the stage keeps what it had.
    baseline["tasks"]["perplexity_code"]["perplexity"]["value"] /= 2
    strict = tmp_path / "strict.json"
    strict.write_text(json.dumps(baseline))
    code = cli.main(["runs", "promote", dpo, "--stage", "production", "--baseline", str(strict), "--registry", ledger,
                     *GATE])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"quark runs promote: {dpo} not promoted to production: 1 regression(s)")
    assert "perplexity_code/perplexity" in err[0]
    records = [json.loads(line) for line in open(ledger)]
    assert [r["event"] for r in records[-2:]] == ["evaluated", "rejected"]
    # Same checkpoint, tasks, limit and seed: the figures are read back from the lineage, only the verdict is new.
    assert records[-2]["passed"] is False and records[-2]["reused"] is True
    assert records[-2]["tasks"] == evaluated["tasks"] and evaluated["reused"] is False
    assert records[-1]["evaluation"] == records[-2]["hash"]

    # `quark runs list` shows who serves; `show` prints the lineage and the run's events.
    assert cli.main(["runs", "list", "--registry", ledger]) == 0
    listed = capsys.readouterr().out
    row = next(line for line in listed.splitlines() if line.startswith(dpo + " "))
    assert "kind=dpo" in row and f"serving={'production' if evaluated['passed'] else '-'}" in row
    assert "last=rejected(production)" in row
    assert cli.main(["runs", "show", dpo, "--registry", ledger]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["lineage"]["run_id"] == lineage["run_id"] and len(shown["ledger"]) == 5

    # Tampering: flipping the strict evaluation's verdict is detected by every command that reads the ledger.
    lines = open(ledger).read().splitlines()
    forged = json.loads(lines[-2])
    forged["passed"] = True
    lines[-2] = json.dumps(forged, sort_keys=True)
    with open(ledger, "w") as f:
        f.write("\n".join(lines) + "\n")
    assert cli.main(["runs", "list", "--registry", ledger]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"line {len(lines) - 1}: its content does not match its hash" in err[0]
    assert cli.main(["runs", "promote", dpo, "--baseline", BASELINE, "--registry", ledger, *GATE]) == 2
    assert "does not match its hash" in capsys.readouterr().err
