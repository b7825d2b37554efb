"""Helper for test_parallelism: trains a small MoE model 3 steps on each of several meshes of this process's
8 devices and on a 1-device mesh, and prints one JSON report.

Run as ``XLA_FLAGS=--xla_force_host_platform_device_count=8 python mesh_run.py MESH [MESH ...]``; a mesh may
end in ``:dropless`` to switch the dispatch mode.
"""

import dataclasses
import json
import sys

import jax
import numpy as np

from quark_jax import sharding as sh
from quark_jax.models.config import ModelConfig
from quark_jax.training.sharded import make_sharded_training, synthetic_batch
from quark_jax.training.config import OptimizerConfig

# moe_tiny's layout (every 2nd layer 8 experts top-2), narrower so that ten compilations stay quick.
CONFIG = ModelConfig(vocab_size=512, d_model=64, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=16,
                     mlp_dim=128, num_experts=8, experts_per_token=2, moe_every=2, expert_mlp_dim=64,
                     num_shared_experts=1, capacity_factor=1.0)
STEPS, BATCH, SEQ = 3, 8, 32


def train(mesh, config, initial):
    """3 steps from the same initial state (made once on one device, then placed on ``mesh``): one compile."""
    run = make_sharded_training(config, mesh, OptimizerConfig(learning_rate=1e-2, warmup_steps=1), total_steps=10)
    with sh.activate(mesh):
        state = jax.device_put(initial, run.state_shardings)
        losses, dropped = [], []
        for i in range(STEPS):
            host = synthetic_batch(config.vocab_size, BATCH, SEQ, seed=i)
            batch = {k: jax.make_array_from_process_local_data(run.batch_sharding, v) for k, v in host.items()}
            state, metrics = run.step(state, batch)
            losses.append(float(metrics["loss"]))
            dropped.append(float(metrics["moe/dropped_fraction"]))
    checksum = sum(float(np.abs(np.asarray(x, np.float64)).sum()) for x in jax.tree.leaves(state.params))
    w = state.params["moe_blocks"]["moe"]["w_gate"]
    return {"losses": losses, "dropped": dropped, "param_abs_sum": checksum,
            "expert_weight_spec": str(w.sharding.spec), "expert_weight_shards": len({str(s.index) for s in w.addressable_shards})}


def main(meshes):
    report = {}
    single = sh.make_mesh("data=1", jax.devices()[:1])
    initial = jax.device_get(make_sharded_training(CONFIG, single).init(jax.random.key(0)))
    for mode in sorted({m.partition(":")[2] or "capacity" for m in meshes}):
        config = dataclasses.replace(CONFIG, moe_dispatch=mode)
        report[f"single:{mode}"] = train(single, config, initial)
    for spec in meshes:
        shape, _, mode = spec.partition(":")
        report[spec] = train(sh.make_mesh(shape), dataclasses.replace(CONFIG, moe_dispatch=mode or "capacity"), initial)
    print("REPORT " + json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1:])
