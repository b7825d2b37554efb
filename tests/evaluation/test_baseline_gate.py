"""The regression gate in CI: the shared tiny run (``trained_run``: pretrain_tiny, 40 steps, seed 0; training is
deterministic) against the committed baseline ``evals/baselines/tiny_test.json``.

After changing the built-in suites or the tiny run, regenerate the baseline from a fresh shared run with::

    python tests/evaluation/test_baseline_gate.py MODEL_DIR
"""

from __future__ import annotations

import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASELINE = os.path.join(REPO, "evals", "baselines", "tiny_test.json")
TASKS, LIMIT = "stdlib_mc,perplexity_code,perplexity_chat", 8
NOTE = ("The shared test run (tests/conftest.py trained_run: pretrain_tiny, 40 steps, seed 0) on the first 8 examples "
        "of each task; checked by tests/evaluation/test_baseline_gate.py, which also regenerates it.")


def test_the_shared_run_passes_the_committed_baseline(trained_run, tmp_path, capsys):
    from quark_jax.evaluation.cli_main import eval_tasks_main

    code = eval_tasks_main(trained_run["model_dir"], TASKS, str(tmp_path / "report"), batch_size=16, limit=LIMIT,
                           baseline=BASELINE, progress=False)
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "no regressions" in printed


def write_baseline(model_dir: str) -> None:
    import quark_jax as qj
    from quark_jax.evaluation import harness, regression

    results = harness.evaluate(qj.load(model_dir), TASKS, batch_size=16, limit=LIMIT, progress=False)
    baseline = regression.write_baseline(results, BASELINE)
    with open(BASELINE, "w") as f:
        json.dump({"note": NOTE, **baseline, "model_dir": None}, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    write_baseline(sys.argv[1])
