"""Concurrent appends to a run's lineage: two processes appending evaluation results at once lose none."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO

APPENDER = """
import sys
from quark_jax import lineage
run_dir, name = sys.argv[1], sys.argv[2]
for i in range(20):
    lineage.append_evaluation(run_dir, {"step": i, "source": name, "figures": {"val_loss": float(i)}})
"""


def test_two_processes_appending_twenty_evaluations_each_keep_all_forty(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, *sys.path])}
    workers = [subprocess.Popen([sys.executable, "-c", APPENDER, str(run_dir), name], env=env)
               for name in ("writer_a", "writer_b")]
    assert [w.wait(timeout=60) for w in workers] == [0, 0]
    records = json.loads((run_dir / "lineage.json").read_text())["evaluations"]
    assert len(records) == 40
    for name in ("writer_a", "writer_b"):  # each writer's records, all present and in its own order
        assert [r["step"] for r in records if r["source"] == name] == list(range(20))
    assert sorted(os.listdir(run_dir)) == ["lineage.json", "lineage.json.lock"]  # no temporary file left behind
