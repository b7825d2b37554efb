"""Sharding: a data=2,fsdp=2,tensor=2 run on 8 CPU devices equals the one-device run, and each device holds a
quarter of the parameters (FSDP × tensor = 4-way). Each run is its own process, since the device count is
fixed when JAX starts."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, train_losses
from quark_jax import sharding as sh

HELPER = os.path.join(os.path.dirname(__file__), "sharded_run.py")


def run(model_dir, mesh_shape, devices):
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    result = subprocess.run([sys.executable, HELPER, str(model_dir), mesh_shape], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(l for l in result.stdout.splitlines() if l.startswith("REPORT "))
    return json.loads(line[len("REPORT "):])


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    root = tmp_path_factory.mktemp("sharding")
    return {
        "single": (run(root / "single", "data=1", 1), root / "single"),
        "sharded": (run(root / "sharded", "data=2,fsdp=2,tensor=2", 8), root / "sharded"),
    }


def test_sharded_losses_equal_single_device(reports):
    single, sharded = train_losses(reports["single"][1]), train_losses(reports["sharded"][1])
    assert sorted(single) == sorted(sharded) == [1, 2, 3, 4]
    for step in single:
        assert abs(sharded[step] - single[step]) / single[step] < 1e-4, (step, single[step], sharded[step])
    a, b = reports["single"][0]["param_abs_sum"], reports["sharded"][0]["param_abs_sum"]
    assert abs(a - b) / a < 1e-4


def test_each_device_holds_a_quarter_of_the_parameters(reports):
    report = reports["sharded"][0]
    assert report["devices"] == 8
    per_device = np.array(list(report["per_device_param_bytes"].values()))
    assert len(per_device) == 8
    quarter = report["total_param_bytes"] / 4
    # Only the RMSNorm scales (<1% of the bytes) are replicated.
    assert np.all(np.abs(per_device - quarter) / quarter < 0.01), per_device / quarter


def test_mesh_shape_parsing_and_errors():
    assert sh.parse_mesh_shape("data=2,fsdp=-1", 8) == {"data": 2, "fsdp": 4, "tensor": 1, "expert": 1}
    with pytest.raises(ValueError, match="asks for 4 devices but 8"):
        sh.parse_mesh_shape("data=2,fsdp=2", 8)
    with pytest.raises(ValueError, match="bad entry 'model=2'"):
        sh.parse_mesh_shape("model=2", 2)
    with pytest.raises(ValueError, match="only one axis may be -1"):
        sh.parse_mesh_shape("data=-1,fsdp=-1", 8)
