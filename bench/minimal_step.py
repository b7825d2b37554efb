"""A minimal hand-written JAX train step (no framework): the reference that quark_jax's step is compared with.

Same architecture and FLOPs as quark_jax's model (RMSNorm, RoPE, causal MHA, SwiGLU, untied head), written as
plain functions on a dict of arrays with a Python loop over layers, cross-entropy and optax AdamW.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def init_params(key, vocab: int, d: int, layers: int, heads: int, head_dim: int, mlp: int) -> dict:
    keys = iter(jax.random.split(key, 4 + 7 * layers))
    normal = lambda shape: 0.02 * jax.random.normal(next(keys), shape, jnp.float32)
    return {
        "embed": normal((vocab, d)),
        "head": normal((d, vocab)),
        "norm": jnp.ones((d,)),
        "layers": [
            {"wq": normal((d, heads, head_dim)), "wk": normal((d, heads, head_dim)), "wv": normal((d, heads, head_dim)),
             "wo": normal((heads, head_dim, d)), "gate": normal((d, mlp)), "up": normal((d, mlp)),
             "down": normal((mlp, d)), "n1": jnp.ones((d,)), "n2": jnp.ones((d,))}
            for _ in range(layers)
        ],
    }


def _rms(x, scale):
    return x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-6) * scale


def _rope(x, positions):
    half = x.shape[-1] // 2
    freq = 1.0 / (10000.0 ** (jnp.arange(half) / half))
    angle = positions[..., None, None] * freq
    x1, x2 = x[..., :half], x[..., half:]
    return jnp.concatenate([x1 * jnp.cos(angle) - x2 * jnp.sin(angle), x2 * jnp.cos(angle) + x1 * jnp.sin(angle)], -1)


def loss_fn(params, inputs, targets):
    seq = inputs.shape[1]
    positions = jnp.arange(seq)[None]
    x = params["embed"][inputs]
    mask = jnp.tril(jnp.ones((seq, seq), bool))
    for p in params["layers"]:
        h = _rms(x, p["n1"])
        q = _rope(jnp.einsum("btd,dnh->btnh", h, p["wq"]), positions)
        k = _rope(jnp.einsum("btd,dnh->btnh", h, p["wk"]), positions)
        v = jnp.einsum("btd,dnh->btnh", h, p["wv"])
        scores = jnp.einsum("btnh,bsnh->bnts", q, k) / jnp.sqrt(q.shape[-1])
        weights = jax.nn.softmax(jnp.where(mask, scores, -1e9), -1)
        x = x + jnp.einsum("bnts,bsnh,nhd->btd", weights, v, p["wo"])
        h = _rms(x, p["n2"])
        x = x + (jax.nn.silu(h @ p["gate"]) * (h @ p["up"])) @ p["down"]
    logits = _rms(x, params["norm"]) @ params["head"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


def make_step(tx):
    def step(params, opt_state, inputs, targets):
        loss, grads = jax.value_and_grad(loss_fn)(params, inputs, targets)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1))
