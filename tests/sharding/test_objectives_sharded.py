"""Every post-training objective (distillation, LoRA, reward model, DPO, PPO) on a data=2,fsdp=2,tensor=2 mesh
of 8 CPU devices gives the same losses as on one device: frozen models, heads and adapters are sharded by the
same logical rules. Each mesh is its own process (the device count is fixed when JAX starts)."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

HELPER = os.path.join(os.path.dirname(__file__), "objectives_run.py")


def run(base_dir, out_dir, mesh_shape, devices):
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    result = subprocess.run([sys.executable, HELPER, str(base_dir), str(out_dir), mesh_shape], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(l for l in result.stdout.splitlines() if l.startswith("REPORT "))
    return json.loads(line[len("REPORT "):])


@pytest.fixture(scope="module")
def reports(trained_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("objectives_sharded")
    return {"single": run(trained_run["model_dir"], root / "single", "data=1", 1),
            "sharded": run(trained_run["model_dir"], root / "sharded", "data=2,fsdp=2,tensor=2", 8)}


@pytest.mark.parametrize("objective", ["distill", "lora", "reward", "dpo", "ppo"])
def test_sharded_objective_equals_single_device(reports, objective):
    single, sharded = reports["single"][objective], reports["sharded"][objective]
    print(json.dumps({objective: {"single": single, "sharded": sharded}}))
    assert sorted(single) == sorted(sharded) == ["1", "2", "3"]
    assert all(values["grad_norm"] > 0 for values in single.values())  # a real update at every step
    for step, values in single.items():
        assert set(values) == set(sharded[step])
        for key, value in values.items():
            assert abs(sharded[step][key] - value) <= 1e-4 * max(abs(value), 1e-2), (step, key, value, sharded[step][key])
