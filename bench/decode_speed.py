"""Inference speed of quark_jax's compiled generate function, one JSON line per measurement.

    python bench/decode_speed.py                      # all four lines
    python bench/decode_speed.py --only decode        # decode | prefill | quantized | answer64

Model: ``configs/models/small.gin`` (~30M parameters) with random weights; generation never stops early
(the end-of-sequence id is set to -1), so every run produces exactly the tokens asked for.

* ``decode``:    per-token latency and tokens/s at batch 1 and 8. Measured inside one compiled function
                 (one bucket) as (time with max_tokens=M − time with max_tokens=1) / (M − 1), so prefill and
                 dispatch cancel. ``floor_ms`` is the memory floor of one step: (weight bytes + KV-cache
                 bytes) / memory bandwidth, the bandwidth measured in this process by a large copy
                 (and a large read; the faster is used);
                 ``ratio_to_floor`` = measured / floor (the issue's goal: ≤ 2 at batch 1).
                 ``single_step_ms``: the same step jitted alone, called from Python (no loop).
                 ``minimal_reference_ms``: a hand-written scan of plain matmuls over the same weights.
* ``prefill``:   time to first token (prefill + first sample) and prefill tokens/s for a 256-token prompt.
* ``quantized``: batch-1 decode per-token latency of float32 weights, int8, int4 and bfloat16 compute.
* ``answer64``:  wall time of a 64-token answer through the text API (warm, i.e. compiled; and cold,
                 including compilation, with the persistent cache disabled). Goal: < 2 s warm.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from quark_jax.inference.decode import DecodeSpec, make_generate_fn
from quark_jax.inference.quantize import param_bytes, quantize_params
from quark_jax.models.config import ModelConfig
from quark_jax.models.transformer import Transformer, abstract_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_config(**overrides) -> ModelConfig:
    """ModelConfig of configs/models/small.gin, through gin as a run would build it."""
    import gin

    from quark_jax import gin_utils

    gin_utils.parse([os.path.join(REPO, "configs", "models", "small.gin")])
    config = gin.get_configurable("quark_jax.ModelConfig")()
    return dataclasses.replace(config, **overrides)


def memory_bandwidth(megabytes: int = 512, repeats: int = 10) -> dict[str, float]:
    """Bytes/s of a large copy (read + write, the output donated into the input buffer so no fresh pages
    are faulted in) and of a large read (a sum), best of ``repeats`` each."""
    x = jnp.ones((megabytes * 2**20 // 4,), jnp.float32)
    nbytes = x.nbytes
    copy = jax.jit(lambda a: a + 1.0, donate_argnums=0)
    read = jax.jit(jnp.sum)
    x = copy(x).block_until_ready()
    read(x).block_until_ready()
    best_copy = best_read = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        x = copy(x).block_until_ready()
        best_copy = min(best_copy, time.perf_counter() - start)
        best_read = min(best_read, _timed(lambda: read(x).block_until_ready()))
    return {"copy": 2 * nbytes / best_copy, "read": nbytes / best_read}


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class Harness:
    """One compiled generate function per (batch, prompt bucket, max new tokens), called with arrays."""

    def __init__(self, config: ModelConfig, params, batch: int, prompt_len: int, max_new: int):
        graphdef = nnx.graphdef(abstract_model(config))
        self.fn = make_generate_fn(graphdef, DecodeSpec(max_new_tokens=max_new, eos_id=-1, sampling=False))
        self.params, self.batch, self.max_new = params, batch, max_new
        rng = np.random.default_rng(0)
        self.prompts = rng.integers(4, config.vocab_size, (batch, prompt_len)).astype(np.int32)
        self.lengths = np.full(batch, prompt_len, np.int32)
        self.keys = jax.vmap(jax.random.key)(np.arange(batch, dtype=np.uint32))

    def run(self, max_tokens: int) -> float:
        b = self.batch
        args = (self.params, self.prompts, self.lengths, np.full(b, max_tokens, np.int32), np.zeros(b, np.float32),
                np.zeros(b, np.int32), np.ones(b, np.float32), self.keys, np.full((b, 1, 1), -1, np.int32))
        start = time.perf_counter()
        out = self.fn(*args)
        out.tokens.block_until_ready()
        return time.perf_counter() - start

    def per_token(self, repeats: int = 3) -> float:
        self.run(self.max_new)  # compile
        full = statistics.median(self.run(self.max_new) for _ in range(repeats))
        first = statistics.median(self.run(1) for _ in range(repeats))
        return (full - first) / (self.max_new - 1)


def random_params(config: ModelConfig):
    return nnx.to_pure_dict(nnx.state(Transformer(config, rngs=nnx.Rngs(params=0)), nnx.Param))


def floor_seconds(config: ModelConfig, params, batch: int, cache_len: int, bandwidth: float) -> float:
    """Bytes one decode step must read (all weights, the whole KV cache) over the memory bandwidth."""
    itemsize = jnp.dtype(config.compute_dtype).itemsize
    cache = 2 * config.num_layers * batch * cache_len * config.num_kv_heads * config.head_dim * itemsize
    return (param_bytes(params) + cache) / bandwidth


def single_step_seconds(config: ModelConfig, params, cache_len: int, repeats: int = 20) -> float:
    """One decode step (batch 1) as its own jitted call from Python: the loop-free reference."""
    from quark_jax.models.transformer import KVCache

    graphdef = nnx.graphdef(abstract_model(config))

    @jax.jit
    def step(params, cache, token):
        logits, cache = nnx.merge(graphdef, params)(token, jnp.full((1, 1), 3), jnp.ones((1, 1), jnp.int32), cache)
        return jnp.argmax(logits[:, -1], axis=-1), cache

    cache, token = KVCache.init(config, 1, cache_len), jnp.ones((1, 1), jnp.int32)
    step(params, cache, token)[0].block_until_ready()
    return statistics.median(_timed(lambda: step(params, cache, token)[0].block_until_ready()) for _ in range(repeats))


def minimal_step_seconds(config: ModelConfig, params, batch: int, repeats: int = 20) -> float:
    """A hand-written reference: the same weights through plain scanned matmuls (no attention over a cache,
    no norms, no RoPE), one jitted call per step. What reading and multiplying the weights costs alone."""
    attn, mlp = params["blocks"]["attn"], params["blocks"]["mlp"]
    L, D = config.num_layers, config.d_model
    weights = (attn["wq"].reshape(L, D, -1), attn["wk"].reshape(L, D, -1), attn["wv"].reshape(L, D, -1),
               attn["wo"].reshape(L, -1, D), mlp["w_gate"], mlp["w_up"], mlp["w_down"])
    embedding = params["embed"]["embedding"]

    @jax.jit
    def step(weights, embedding, x):
        def layer(x, w):
            q, k, v = x @ w[0], x @ w[1], x @ w[2]
            x = x + q @ w[3] + 0 * (k.sum() + v.sum())
            return x + (jax.nn.silu(x @ w[4]) * (x @ w[5])) @ w[6], None

        x, _ = jax.lax.scan(layer, x, weights)
        return jnp.argmax(x @ embedding.T, axis=-1)

    x = jnp.ones((batch, D), jnp.float32)
    step(weights, embedding, x).block_until_ready()
    return statistics.median(_timed(lambda: step(weights, embedding, x).block_until_ready()) for _ in range(repeats))


def bench_decode(config, params, bandwidth, prompt_len=16, max_new=128, read_bandwidth=None) -> dict:
    result = {"bench": "decode", "model": "small", "params_M": round(config.num_params() / 1e6, 1),
              "prompt_tokens": prompt_len, "new_tokens": max_new, "memory_GBps": round(bandwidth / 1e9, 2)}
    for batch in (1, 8):
        per_token = Harness(config, params, batch, prompt_len, max_new).per_token()
        floor = floor_seconds(config, params, batch, prompt_len + max_new, bandwidth)
        result[f"b{batch}"] = {"ms_per_step": round(per_token * 1e3, 3), "tokens_per_s": round(batch / per_token, 1),
                               "floor_ms": round(floor * 1e3, 3), "ratio_to_floor": round(per_token / floor, 2)}
        minimal = minimal_step_seconds(config, params, batch)
        result[f"b{batch}"]["minimal_reference_ms"] = round(minimal * 1e3, 3)
        if read_bandwidth:  # the floor if weights can only be streamed as fast as the large read ran
            read_floor = floor * bandwidth / read_bandwidth
            result[f"b{batch}"]["ratio_to_read_floor"] = round(per_token / read_floor, 2)
    # The same step jitted alone and called from Python (no while loop around it): shows what, if anything,
    # the while loop adds per iteration.
    single = single_step_seconds(config, params, prompt_len + max_new)
    result["b1"]["single_step_ms"] = round(single * 1e3, 3)
    return result


def bench_prefill(config, params, prompt_len=256) -> dict:
    result = {"bench": "prefill", "model": "small", "prompt_tokens": prompt_len}
    for batch in (1, 8):
        harness = Harness(config, params, batch, prompt_len, 2)
        harness.run(1)  # compile
        ttft = statistics.median(harness.run(1) for _ in range(5))
        result[f"b{batch}"] = {"ttft_ms": round(ttft * 1e3, 1), "prefill_tokens_per_s": round(batch * prompt_len / ttft, 1)}
    return result


def bench_quantized(config, params, bandwidth, prompt_len=16, max_new=64) -> dict:
    result = {"bench": "quantized_decode_b1", "model": "small", "new_tokens": max_new}
    variants = {
        "float32": (config, params),
        "int8": (config, quantize_params(params, "int8")),
        "int4": (config, quantize_params(params, "int4")),
        "bfloat16_compute": (dataclasses.replace(config, dtype="bfloat16"), params),
    }
    base = None
    for name, (cfg, p) in variants.items():
        per_token = Harness(cfg, p, 1, prompt_len, max_new).per_token()
        base = base or per_token
        result[name] = {"ms_per_token": round(per_token * 1e3, 3), "weight_MB": round(param_bytes(p) / 1e6, 1),
                        "speedup_vs_float32": round(base / per_token, 2)}
    return result


def bench_answer64(config, params) -> dict:
    from quark_jax.data.tokenizer import get_vocabulary
    from quark_jax.inference.generate import Generator

    graphdef = nnx.graphdef(abstract_model(config))
    generator = Generator(graphdef, params, get_vocabulary(), eos_id=-1, compilation_cache=False)
    prompt = ["def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"]
    cold = _timed(lambda: generator.generate(prompt, max_new_tokens=64))
    warm = [_timed(lambda: generator.generate(prompt, max_new_tokens=64)) for _ in range(3)]
    tokens = generator.complete(prompt, max_new_tokens=64)[0].tokens
    return {"bench": "answer64", "model": "small", "new_tokens": len(tokens), "warm_s": round(statistics.median(warm), 3),
            "cold_s_including_compile": round(cold, 2), "goal_s": 2.0, "meets_goal": statistics.median(warm) < 2.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("decode", "prefill", "quantized", "answer64"))
    args = parser.parse_args()
    config = small_config()
    params = random_params(config)
    device = {"device": jax.devices()[0].device_kind, "devices": jax.device_count()}
    measured = memory_bandwidth() if args.only in (None, "decode", "quantized") else {"copy": 0.0, "read": 0.0}
    # The faster of the two is the stricter floor (a step cannot read faster than the machine can).
    bandwidth = max(measured.values())
    if args.only in (None, "decode"):
        extra = {"copy_GBps": round(measured["copy"] / 1e9, 2), "read_GBps": round(measured["read"] / 1e9, 2)}
        decode = bench_decode(config, params, bandwidth, read_bandwidth=measured["read"])
        print(json.dumps({**decode, **extra, **device}), flush=True)
    if args.only in (None, "prefill"):
        print(json.dumps({**bench_prefill(config, params), **device}), flush=True)
    if args.only in (None, "quantized"):
        print(json.dumps({**bench_quantized(config, params, bandwidth), **device}), flush=True)
    if args.only in (None, "answer64"):
        print(json.dumps({**bench_answer64(config, params), **device}), flush=True)


if __name__ == "__main__":
    main()
