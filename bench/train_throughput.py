"""Training throughput of quark_jax's own train step, as one JSON line.

    python bench/train_throughput.py --preset cpu-d1024

Runs the framework's real step (``make_train_step``: model, z-loss cross-entropy, AdamW with clipping and a
weight-decay mask, sharded jit with donated state) on synthetic packed batches and reports:

* ``tokens_per_s``       trained tokens per second (median of timed windows)
* ``model_flops_per_s``  tokens_per_s × ModelConfig.flops_per_token(seq): 6·N_matmul per token (N_matmul
                         counts every weight in a matmul, the output projection included, not the embedding
                         gather) plus causal attention 6·L·T·heads·head_dim (QKᵀ and AV, forward + backward,
                         halved by the causal mask)
* ``matmul_flops_per_s`` a 2048² float32 matmul measured in this process (best of 10)
* ``mfu_vs_matmul``      model_flops_per_s / (matmul_flops_per_s × devices)
* ``quark_over_minimal`` tokens/s over that of bench/minimal_step.py (a hand-written step of the same shape,
                         same process): the framework's overhead, or gain
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from quark_jax import sharding as sh
from quark_jax.models.config import ModelConfig
from quark_jax.models.transformer import Transformer, abstract_model
from quark_jax.training.metrics import measure_matmul_flops
from quark_jax.training.config import OptimizerConfig
from quark_jax.training.optim import make_optimizer, weight_decay_mask
from quark_jax.training.state import TrainState
from quark_jax.training.steps import make_train_step

PRESETS = {
    # The reference shape for this 2-core machine.
    "cpu-d1024": dict(model=ModelConfig(vocab_size=8192, d_model=1024, num_layers=4, num_heads=16, num_kv_heads=16,
                                        head_dim=64, mlp_dim=2816, tie_embeddings=False), seq=256, batch=4),
    "cpu-tiny": dict(model=ModelConfig(), seq=256, batch=8),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu-d1024")
    parser.add_argument("--mesh_shape", default="data=-1")
    parser.add_argument("--steps", type=int, default=12, help="timed steps (after 2 warm-up steps)")
    parser.add_argument("--scan_unroll", type=int, default=0, help="override ModelConfig.scan_unroll")
    parser.add_argument("--no_reference", action="store_true", help="skip the minimal hand-written step")
    parser.add_argument("--dtype", default=None, help="override compute dtype (float32 / bfloat16)")
    args = parser.parse_args()
    preset = PRESETS[args.preset]
    config: ModelConfig = preset["model"]
    if args.dtype:
        config = dataclasses.replace(config, dtype=args.dtype)
    if args.scan_unroll:
        config = dataclasses.replace(config, scan_unroll=args.scan_unroll)
    seq, batch = preset["seq"], preset["batch"]

    peak = measure_matmul_flops()
    mesh = sh.make_mesh(args.mesh_shape)
    abstract = abstract_model(config)
    graphdef, abstract_state = nnx.split(abstract)
    param_shardings = nnx.to_pure_dict(sh.state_shardings(abstract_state, mesh))
    tx, schedule = make_optimizer(OptimizerConfig(learning_rate=1e-4, warmup_steps=10), 1000,
                                  weight_decay_mask(abstract_state))

    def init(key):
        params = nnx.to_pure_dict(nnx.state(Transformer(config, rngs=nnx.Rngs(params=key)), nnx.Param))
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    rng = np.random.default_rng(0)
    tokens = rng.integers(4, config.vocab_size, (batch, seq + 1), dtype=np.int32)
    host_batch = {
        "decoder_input_tokens": tokens[:, :-1], "decoder_target_tokens": tokens[:, 1:],
        "decoder_loss_weights": np.ones((batch, seq), np.int32),
        "decoder_segment_ids": np.ones((batch, seq), np.int32),
        "decoder_positions": np.broadcast_to(np.arange(seq, dtype=np.int32), (batch, seq)).copy(),
    }
    with sh.activate(mesh):
        state = jax.jit(init, out_shardings=None)(jax.random.key(0))
        batch_sharding = sh.batch_sharding(mesh)
        device_batch = {k: jax.device_put(v, batch_sharding) for k, v in host_batch.items()}
        step = jax.jit(make_train_step(graphdef, tx, schedule, z_loss=1e-4), donate_argnums=0)
        compile_start = time.perf_counter()
        compiled = step.lower(state, device_batch).compile()
        compile_s = time.perf_counter() - compile_start
        for _ in range(2):
            state, metrics = compiled(state, device_batch)
        jax.block_until_ready(metrics)
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            state, metrics = compiled(state, device_batch)
            jax.block_until_ready(metrics["loss"])
            times.append(time.perf_counter() - start)

    step_s = statistics.median(times)
    reference = None if args.no_reference else _reference_tokens_per_s(config, batch, seq, args.steps, tokens)
    tokens_per_s = batch * seq / step_s
    flops_per_s = tokens_per_s * config.flops_per_token(seq)
    print(json.dumps({
        "bench": "train_throughput", "preset": args.preset, "mesh_shape": args.mesh_shape,
        "devices": jax.device_count(), "backend": jax.default_backend(), "dtype": config.dtype, "scan_unroll": config.scan_unroll,
        "params": config.num_params(), "seq": seq, "batch": batch, "step_s": round(step_s, 4),
        "compile_s": round(compile_s, 2), "tokens_per_s": round(tokens_per_s, 1),
        "model_flops_per_s": round(flops_per_s), "matmul_flops_per_s": round(peak),
        "mfu_vs_matmul": round(flops_per_s / (peak * jax.device_count()), 4),
        "final_loss": round(float(metrics["loss"]), 4),
        **({} if reference is None else {
            "minimal_step_tokens_per_s": round(reference, 1),
            "minimal_step_mfu_vs_matmul": round(reference * config.flops_per_token(seq) / (peak * jax.device_count()), 4),
            "quark_over_minimal": round(tokens_per_s / reference, 4),
        }),
    }))


def _reference_tokens_per_s(config: ModelConfig, batch: int, seq: int, steps: int, tokens: np.ndarray) -> float:
    """Tokens/s of bench/minimal_step.py's hand-written step of the same shape, in this process."""
    import optax

    import minimal_step

    params = minimal_step.init_params(jax.random.key(0), config.vocab_size, config.d_model, config.num_layers,
                                      config.num_heads, config.head_dim, config.mlp_dim)
    tx = optax.adamw(1e-4)
    opt_state = tx.init(params)
    step = minimal_step.make_step(tx)
    inputs, targets = jnp.asarray(tokens[:, :-1]), jnp.asarray(tokens[:, 1:])
    for _ in range(2):
        params, opt_state, loss = step(params, opt_state, inputs, targets)
    jax.block_until_ready(loss)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        params, opt_state, loss = step(params, opt_state, inputs, targets)
        jax.block_until_ready(loss)
        times.append(time.perf_counter() - start)
    return batch * seq / statistics.median(times)


if __name__ == "__main__":
    main()
