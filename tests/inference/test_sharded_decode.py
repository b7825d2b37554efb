"""Sharded decoding: a data=2,fsdp=2,tensor=2 mesh on 8 CPU devices decodes exactly what one device does.
Each run is its own process, since the device count is fixed when JAX starts."""

import json
import os
import subprocess
import sys

import numpy as np

HELPER = os.path.join(os.path.dirname(__file__), "sharded_decode.py")


def run(mesh_shape: str, devices: int) -> dict:
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, HELPER, mesh_shape], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(l for l in result.stdout.splitlines() if l.startswith("REPORT "))
    return json.loads(line[len("REPORT "):])


def test_sharded_decoding_equals_one_device():
    single, sharded = run("data=1", 1), run("data=2,fsdp=2,tensor=2", 8)
    assert sharded["devices"] == 8 and len(sharded["per_device_param_bytes"]) == 8
    # Parameters really are split (fsdp × tensor = 4-way, norms replicated).
    total = sum(single["per_device_param_bytes"].values())
    assert max(sharded["per_device_param_bytes"].values()) < 0.3 * total
    assert sharded["greedy"] == single["greedy"]
    for a, b in zip(sharded["logprobs"], single["logprobs"]):
        np.testing.assert_allclose(a, b, atol=1e-4)
    assert sharded["sampled"] == single["sampled"]
    assert [t for t, _ in sharded["beams"]] == [t for t, _ in single["beams"]]
