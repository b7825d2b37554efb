"""The regression gate in CI: the shared tiny run (``trained_run``: tiny_base.gin, 40 steps, seed 0; training is
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
NOTE = ("The shared test run (tests/conftest.py trained_run: tiny_base.gin, 40 steps, seed 0) on the first 8 examples "
        "of each task; checked by tests/evaluation/test_baseline_gate.py, which also regenerates it.")


def test_the_shared_run_passes_the_committed_baseline(trained_run, tmp_path, capsys):
    from quark_jax.evaluation.cli_main import eval_tasks_main

    code = eval_tasks_main(trained_run["model_dir"], TASKS, str(tmp_path / "report"), batch_size=16, limit=LIMIT,
                           baseline=BASELINE, progress=False)
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "no regressions" in printed


def test_quark_eval_names_each_regression_and_exits_1(trained_run, tmp_path, capsys):
    """Through the command line: a baseline whose code perplexity is twice as good is a regression, printed as a
    table row naming task and metric, exit status 1; an unknown task is a one-line usage error (status 2)."""
    from quark_jax import cli

    baseline = json.loads(open(BASELINE).read())
    baseline["tasks"]["perplexity_code"]["perplexity"]["value"] /= 2
    better = tmp_path / "better.json"
    better.write_text(json.dumps(baseline))
    code = cli.main(["eval", "--model_dir", trained_run["model_dir"], "--tasks", TASKS, "--limit", str(LIMIT),
                     "--output", str(tmp_path / "report"), "--baseline", str(better), "--no_progress"])
    out = capsys.readouterr().out
    assert code == 1, out
    table = out[out.index("1 regression(s):"):]
    rows = [line for line in table.splitlines() if line.startswith("| perplexity_code | perplexity |")]
    assert len(rows) == 1 and "<=" in rows[0]
    assert (tmp_path / "report" / "report.md").exists() and (tmp_path / "report" / "report.html").exists()
    assert cli.main(["eval", "--model_dir", trained_run["model_dir"], "--tasks", "stdlib_mcq"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("quark eval: ") and "stdlib_mcq" in err[0]


def test_quark_eval_pairwise_writes_a_blind_sheet_and_reads_it_back(trained_run, tmp_path, capsys):
    from quark_jax import cli

    sheet = tmp_path / "sheet"
    run = trained_run["model_dir"]
    assert cli.main(["eval", "pairwise", "--a", run, "--b", run, "--task", "stdlib_qa", "--limit", "3",
                     "--output", str(sheet)]) == 0
    html = (sheet / "sheet.html").read_text()
    assert run not in html  # blind: the page never names the runs
    key = json.loads((sheet / "key.json").read_text())
    items = key["items"]
    ratings = {"sheet_id": key["sheet_id"], "ratings": {item["id"]: "tie" for item in items}}
    (tmp_path / "ratings.json").write_text(json.dumps(ratings))
    capsys.readouterr()
    assert cli.main(["eval", "pairwise", "--read", str(sheet), "--ratings", str(tmp_path / "ratings.json")]) == 0
    assert "in 50.0% of 3 rated items" in capsys.readouterr().out  # all ties: a win rate of one half


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
