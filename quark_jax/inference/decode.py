"""Compiled prefill + decode with a KV cache, and token sampling (greedy, temperature, top-k, top-p).

Axis legend: B batch · P prompt length (bucketed) · V vocab · M max new tokens.

Prompts of different lengths are right-padded to one bucket length; padding gets segment id 0 so no token
ever attends to it, and every row continues at its own position (``prompt_length + i``). The cache slots
left empty between a short prompt and the first generated token are masked the same way, so batched
generation equals generating each prompt alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, Int

from quark_jax.models.transformer import KVCache


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How the next token is chosen. ``temperature == 0`` is greedy; top_k 0 and top_p 1 disable those filters."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k} must be >= 0")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1]")


def sample_tokens(logits: Float[Array, "B V"], key: jax.Array, sampling: SamplingConfig) -> Int[Array, "B"]:
    """Draws one token per row from ``logits`` under ``sampling``."""
    if sampling.temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / sampling.temperature
    neg_inf = jnp.finfo(jnp.float32).min
    if sampling.top_k:
        kth = jax.lax.top_k(logits, min(sampling.top_k, logits.shape[-1]))[0][:, -1:]
        logits = jnp.where(logits < kth, neg_inf, logits)
    if sampling.top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
        # Keep the smallest prefix whose mass reaches top_p (always at least the top token).
        cutoff_index = jnp.sum(cumulative < sampling.top_p, axis=-1, keepdims=True)
        cutoff = jnp.take_along_axis(sorted_logits, cutoff_index, axis=-1)
        logits = jnp.where(logits < cutoff, neg_inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def make_generate_fn(
    graphdef: nnx.GraphDef, sampling: SamplingConfig, max_new_tokens: int, eos_id: int, pad_id: int = 0
) -> Callable[..., Int[Array, "B M"]]:
    """Builds a jitted ``generate(params, prompts, prompt_lengths, key) -> new_tokens``.

    Prefill runs the whole (padded) prompt through the model once; decoding is a ``lax.while_loop`` that
    feeds one token per step and stops when every row has produced ``eos_id`` or ``max_new_tokens`` tokens.
    Tokens after a row's EOS are ``pad_id``.
    """

    def generate(params: Any, prompts: Int[Array, "B P"], prompt_lengths: Int[Array, "B"], key: jax.Array):
        model = nnx.merge(graphdef, params)
        batch, prompt_len = prompts.shape
        cache = KVCache.init(model.config, batch, prompt_len + max_new_tokens)
        positions = jnp.broadcast_to(jnp.arange(prompt_len, dtype=jnp.int32), (batch, prompt_len))
        segments = (positions < prompt_lengths[:, None]).astype(jnp.int32)
        logits, cache = model(prompts, positions, segments, cache)
        last = jnp.take_along_axis(logits, (prompt_lengths - 1)[:, None, None], axis=1)[:, 0]

        key, sub = jax.random.split(key)
        token = sample_tokens(last, sub, sampling)
        out = jnp.full((batch, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(token)
        done = token == eos_id

        def cond(carry):
            i, _, _, _, done, _ = carry
            return (i < max_new_tokens) & ~jnp.all(done)

        def body(carry):
            i, cache, token, out, done, key = carry
            position = (prompt_lengths + i - 1)[:, None]
            logits, cache = model(token[:, None], position, jnp.ones_like(position), cache)
            key, sub = jax.random.split(key)
            next_token = jnp.where(done, pad_id, sample_tokens(logits[:, 0], sub, sampling))
            out = out.at[:, i].set(next_token)
            return i + 1, cache, next_token, out, done | (next_token == eos_id), key

        carry = (jnp.int32(1), cache, token, out, done, key)
        _, _, _, out, _, _ = jax.lax.while_loop(cond, body, carry)
        return out

    return jax.jit(generate)


def bucket_length(length: int, minimum: int = 16) -> int:
    """The power of two (at least ``minimum``) that a prompt of ``length`` tokens is padded to."""
    bucket = minimum
    while bucket < length:
        bucket *= 2
    return bucket
