"""Helper for test_plan: compiles the train step of several configs on several meshes of 8 CPU devices
(ahead of time, nothing allocated) and prints XLA's memory_analysis next to the planner's estimate."""

import dataclasses
import json

import jax

from quark_jax import sharding as sh
from quark_jax.models.config import ModelConfig
from quark_jax.plan import plan
from quark_jax.training.sharded import make_sharded_training

TINY = ModelConfig(vocab_size=4096, d_model=256, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=64, mlp_dim=704)
MOE = dataclasses.replace(TINY, num_experts=8, moe_every=2, expert_mlp_dim=352)
CASES = [  # name, config, mesh, batch, length
    ("tiny/none/1 device", TINY, "data=1", 8, 128),
    ("tiny/save_dots/dp2-fsdp2-tp2", dataclasses.replace(TINY, remat="save_dots"), "data=2,fsdp=2,tensor=2", 8, 128),
    ("tiny/full/fsdp8/long", dataclasses.replace(TINY, remat="full"), "fsdp=8", 16, 256),
    ("moe/none/dp2-fsdp2-ep2", MOE, "data=2,fsdp=2,expert=2", 8, 128),
    ("moe/full/fsdp2-tp2-ep2", dataclasses.replace(MOE, remat="full"), "fsdp=2,tensor=2,expert=2", 8, 128),
]


def main():
    rows = []
    for name, config, mesh_shape, batch, length in CASES:
        devices = jax.devices()[: 1 if mesh_shape == "data=1" else 8]
        run = make_sharded_training(config, sh.make_mesh(mesh_shape, devices))
        memory = run.compile(batch, length).memory_analysis()
        estimate = plan(config, mesh_shape, len(devices), batch, length, platform="cpu")
        rows.append({"name": name, "xla_argument_bytes": memory.argument_size_in_bytes,
                     "xla_temp_bytes": memory.temp_size_in_bytes,
                     "plan_state_bytes": estimate.param_bytes + estimate.optimizer_bytes + estimate.batch_bytes,
                     "plan_total_bytes": estimate.total_bytes})
    print("REPORT " + json.dumps(rows))


if __name__ == "__main__":
    main()
