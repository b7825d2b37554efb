"""Scale-out benchmarks, one JSON line each (issue 5):

    python bench/scale_out.py compile_time   # train-step compile time at 16 vs 2 layers (the layer scan)
    python bench/scale_out.py moe_throughput # MoE vs dense with the same active parameters, tokens/s
    python bench/scale_out.py remat_memory   # peak bytes per remat policy from compiled.memory_analysis()

All use the framework's own sharded train step (``quark_jax.training.sharded``) on one device.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import jax

from quark_jax import sharding as sh
from quark_jax.models.config import ModelConfig
from quark_jax.plan import plan
from quark_jax.training.sharded import make_sharded_training, synthetic_batch

DENSE = ModelConfig(vocab_size=4096, d_model=256, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=64, mlp_dim=704)
# Same active parameters per token: 8 experts of half the dense hidden size, top-2, in every layer.
MOE = dataclasses.replace(DENSE, num_experts=8, experts_per_token=2, moe_every=1, expert_mlp_dim=352)


def _mesh():
    return sh.make_mesh("data=1", jax.devices()[:1])


def compile_seconds(config: ModelConfig, batch: int, seq: int) -> float:
    run = make_sharded_training(config, _mesh())
    start = time.perf_counter()
    run.compile(batch, seq)
    return time.perf_counter() - start


def hlo_chars(config: ModelConfig, batch: int, seq: int) -> int:
    """Size of the optimised HLO of the train step: a load-independent measure of what XLA compiles."""
    run = make_sharded_training(config, _mesh())
    return len(run.compile(batch, seq).as_text())


def bench_compile_time(args) -> dict:
    out = {"bench": "compile_time", "backend": jax.default_backend()}
    for name, base in (("dense", DENSE), ("moe", dataclasses.replace(MOE, moe_every=2))):
        times = {}
        for layers in (2, 4, 16):
            config = dataclasses.replace(base, num_layers=layers)
            compile_seconds(config, 8, 128)  # warm the process (tracing caches, thread pools)
            times[layers] = min(compile_seconds(config, 8, 128) for _ in range(3))
        sizes = {layers: hlo_chars(dataclasses.replace(base, num_layers=layers), 8, 128) for layers in (2, 4, 16)}
        out[f"{name}_hlo_chars_ratio_16_over_2"] = round(sizes[16] / sizes[2], 3)
        out[f"{name}_hlo_chars_ratio_16_over_4"] = round(sizes[16] / sizes[4], 3)
        for layers, seconds in times.items():
            out[f"{name}_compile_s_{layers}_layers"] = round(seconds, 2)
        out[f"{name}_ratio_16_over_2"] = round(times[16] / times[2], 3)
        # At 2 layers the MoE model is one group: XLA removes the trip-count-1 loops and compiles
        # straight-line code, so 4 layers (two groups, a real loop) is the like-for-like baseline.
        out[f"{name}_ratio_16_over_4"] = round(times[16] / times[4], 3)
    return out


def tokens_per_s(config: ModelConfig, batch: int, seq: int, steps: int) -> float:
    mesh = _mesh()
    run = make_sharded_training(config, mesh)
    with sh.activate(mesh):
        state = run.init(jax.random.key(0))
        device_batch = jax.device_put(synthetic_batch(config.vocab_size, batch, seq), run.batch_sharding)
        for _ in range(2):
            state, metrics = run.step(state, device_batch)
        jax.block_until_ready(metrics)
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            state, metrics = run.step(state, device_batch)
            jax.block_until_ready(metrics["loss"])
            times.append(time.perf_counter() - start)
    return batch * seq / statistics.median(times)


def bench_moe_throughput(args) -> dict:
    out = {"bench": "moe_throughput", "backend": jax.default_backend(), "batch": 8, "seq": 256}
    for name, config in (("dense", DENSE), ("moe_capacity", MOE),
                         ("moe_dropless", dataclasses.replace(MOE, moe_dispatch="dropless"))):
        out[f"{name}_total_params"] = config.num_params()
        out[f"{name}_active_params"] = config.active_params()
        out[f"{name}_tokens_per_s"] = round(tokens_per_s(config, 8, 256, args.steps), 1)
    out["moe_capacity_over_dense"] = round(out["moe_capacity_tokens_per_s"] / out["dense_tokens_per_s"], 3)
    out["moe_dropless_over_dense"] = round(out["moe_dropless_tokens_per_s"] / out["dense_tokens_per_s"], 3)
    return out


def bench_remat_memory(args) -> dict:
    out = {"bench": "remat_memory", "backend": jax.default_backend(), "batch": 8, "seq": 256}
    for name, base in (("dense", DENSE), ("moe", MOE)):
        for policy in ("none", "save_dots", "full"):
            config = dataclasses.replace(base, remat=policy)
            memory = make_sharded_training(config, _mesh()).compile(8, 256).memory_analysis()
            peak = memory.argument_size_in_bytes + memory.temp_size_in_bytes
            out[f"{name}_{policy}_peak_mib"] = round(peak / 2**20, 1)
            out[f"{name}_{policy}_temp_mib"] = round(memory.temp_size_in_bytes / 2**20, 1)
            out[f"{name}_{policy}_plan_mib"] = round(plan(config, "data=1", 1, 8, 256).total_bytes / 2**20, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bench", choices=["compile_time", "moe_throughput", "remat_memory"])
    parser.add_argument("--steps", type=int, default=8, help="timed steps (throughput)")
    args = parser.parse_args()
    print(json.dumps(globals()[f"bench_{args.bench}"](args)), flush=True)


if __name__ == "__main__":
    main()
