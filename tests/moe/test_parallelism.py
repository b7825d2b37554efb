"""Parallelism: data, FSDP, tensor and expert parallelism, alone and combined, on 8 CPU devices equal one device.

One subprocess (the device count is fixed when JAX starts) trains a small MoE model (dense and MoE layers,
a shared expert, capacity dispatch that drops tokens) 3 steps on each mesh and on a 1-device mesh.
"""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

HELPER = os.path.join(os.path.dirname(__file__), "mesh_run.py")
MESHES = [
    "fsdp=8",
    "data=2,tensor=4",
    "expert=8",
    "data=2,fsdp=2,tensor=2",
    "fsdp=2,tensor=2,expert=2",
    "data=2,expert=4:dropless",
]


@pytest.fixture(scope="module")
def report():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    result = subprocess.run([sys.executable, HELPER, *MESHES], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(l for l in result.stdout.splitlines() if l.startswith("REPORT "))
    return json.loads(line[len("REPORT "):])


@pytest.mark.parametrize("mesh", MESHES)
def test_mesh_equals_single_device(report, mesh):
    mode = mesh.partition(":")[2] or "capacity"
    single, sharded = report[f"single:{mode}"], report[mesh]
    for step, (a, b) in enumerate(zip(single["losses"], sharded["losses"]), 1):
        assert abs(a - b) / a < 1e-4, (mesh, step, a, b)
    assert sharded["dropped"] == pytest.approx(single["dropped"], abs=1e-6)
    assert abs(single["param_abs_sum"] - sharded["param_abs_sum"]) / single["param_abs_sum"] < 1e-4


def test_capacity_mode_drops_and_dropless_does_not(report):
    assert min(report["single:capacity"]["dropped"]) > 0.05  # capacity_factor 1.0 with an untrained router
    assert max(report["single:dropless"]["dropped"]) == 0.0


def test_expert_weights_are_split_over_the_expert_axis(report):
    assert report["expert=8"]["expert_weight_spec"] == "P(None, 'expert', None, None)"
    assert report["expert=8"]["expert_weight_shards"] == 8  # each device holds one expert
    assert report["fsdp=2,tensor=2,expert=2"]["expert_weight_spec"] == "P(None, 'expert', 'fsdp', 'tensor')"
