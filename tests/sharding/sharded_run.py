"""Helper for test_sharding: trains the tiny model on this process's devices and prints a JSON report.

Run as ``XLA_FLAGS=--xla_force_host_platform_device_count=N python sharded_run.py MODEL_DIR MESH_SHAPE``.
"""

import json
import sys

import jax
import numpy as np

sys.path.insert(0, __file__.rsplit("/", 2)[0])  # tests/ for conftest helpers
from conftest import RUN_CONFIG, tiny_overrides  # noqa: E402

import quark_jax as qj  # noqa: E402


def main(model_dir: str, mesh_shape: str) -> None:
    overrides = tiny_overrides(model_dir, 4, MESH_SHAPE=repr(mesh_shape), **{
        "quark_jax.TrainConfig.eval_batches": 0, "quark_jax.TrainConfig.sample_prompts": "()",
        "quark_jax.CheckpointConfig.async_save": False,
    })
    trainer = qj.Trainer.from_gin(RUN_CONFIG, overrides)
    trainer.run()
    params = jax.tree.leaves(trainer.params)
    total = sum(x.nbytes for x in params)
    per_device = {}
    for x in params:
        for shard in x.addressable_shards:
            per_device[str(shard.device)] = per_device.get(str(shard.device), 0) + shard.data.nbytes
    checksum = float(sum(np.abs(np.asarray(x, np.float64)).sum() for x in params))
    print("REPORT " + json.dumps({
        "devices": jax.device_count(), "total_param_bytes": total, "per_device_param_bytes": per_device,
        "param_abs_sum": checksum,
    }))


if __name__ == "__main__":
    main(*sys.argv[1:])
