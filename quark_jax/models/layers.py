"""Building blocks of the decoder: embedding, RMSNorm, rotary embeddings, GQA attention, SwiGLU MLP.

Axis legend (used in every einsum and shape comment in quark_jax/models):
  B batch · T query length · S key length · D embed · N query heads · K kv heads · G heads per kv head
  H head dim · F mlp hidden · V vocab · L layers
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from quark_jax import sharding as sh
from quark_jax.models.config import ModelConfig


def param(rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str | None, ...], std: float) -> nnx.Param:
    """A float32 parameter drawn from N(0, std²) that carries its logical axis names.

    ``eager_sharding=False``: the trainer places parameters itself (jit with out_shardings computed from
    these names), so flax must not try to shard at creation time.
    """
    assert len(shape) == len(axes), (shape, axes)
    value = std * jax.random.normal(rngs.params(), shape, jnp.float32)
    return nnx.Param(value, out_sharding=axes, eager_sharding=False)


class Embed(nnx.Module):
    """Token embedding; with tied weights it also produces the output logits."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.embedding = param(rngs, (config.vocab_size, config.d_model), (sh.VOCAB, sh.EMBED), config.init_std)

    def __call__(self, tokens: Int[Array, "B T"]) -> Float[Array, "B T D"]:
        x = jnp.take(self.embedding[...], tokens, axis=0).astype(self.config.compute_dtype)
        return sh.constrain(x, (sh.BATCH, sh.LENGTH, sh.ACT_EMBED))

    def attend(self, x: Float[Array, "B T D"]) -> Float[Array, "B T V"]:
        logits = jnp.einsum("BTD,VD->BTV", x, self.embedding[...].astype(x.dtype))
        return sh.constrain(logits, (sh.BATCH, sh.LENGTH, sh.ACT_VOCAB))


class RMSNorm(nnx.Module):
    """Root-mean-square layer norm (Zhang & Sennrich 2019), computed in float32 for stability."""

    def __init__(self, config: ModelConfig):
        self.eps = config.norm_eps
        self.scale = nnx.Param(jnp.ones((config.d_model,), jnp.float32), out_sharding=(sh.NORM,), eager_sharding=False)

    def __call__(self, x: Float[Array, "B T D"]) -> Float[Array, "B T D"]:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (normed * self.scale[...]).astype(x.dtype)


def apply_rope(x: Float[Array, "B T N H"], positions: Int[Array, "B T"], theta: float) -> Float[Array, "B T N H"]:
    """Rotary position embedding (Su et al. 2021) in the "rotate half" layout used by Llama checkpoints.

    The first and second halves of the head dimension form the (real, imaginary) pairs, so weights imported
    from Hugging Face Llama need no permutation.
    """
    half = x.shape[-1] // 2
    inv_freq = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)  # [H/2]
    angles = positions[..., None].astype(jnp.float32) * inv_freq  # [B T H/2]
    sin, cos = jnp.sin(angles)[:, :, None, :], jnp.cos(angles)[:, :, None, :]  # [B T 1 H/2]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x.dtype)


def attention_mask(
    q_positions: Int[Array, "B T"], q_segments: Int[Array, "B T"],
    k_positions: Int[Array, "B S"], k_segments: Int[Array, "B S"],
) -> Bool[Array, "B T S"]:
    """Causal, segment-aware mask: a query sees keys of its own (non-padding) segment at earlier positions.

    Positions restart at 0 in every packed segment, so ``k_pos <= q_pos`` within one segment is exactly the
    causal order. The same rule serves training (keys = the sequence itself) and decoding (keys = the KV
    cache, whose unwritten slots have segment 0).
    """
    same_segment = (q_segments[:, :, None] == k_segments[:, None, :]) & (k_segments[:, None, :] != 0)
    causal = k_positions[:, None, :] <= q_positions[:, :, None]
    return same_segment & causal


def write_at(cache: Array, new: Array, index: Int[Array, ""] | Int[Array, "B"]) -> Array:
    """``cache`` [B S ...] with ``new`` [B T ...] written along S from ``index``: one slot shared by the batch
    (a scalar: rows padded to one length) or one per row (a ``[B]`` vector: the decode slots of a continuous
    batch, each at its own length)."""
    trailing = (0,) * (cache.ndim - 2)
    new = new.astype(cache.dtype)
    if jnp.ndim(index) == 0:
        return jax.lax.dynamic_update_slice(cache, new, (0, index, *trailing))
    return jax.vmap(lambda row, x, i: jax.lax.dynamic_update_slice(row, x, (i, *trailing)))(cache, new, index)


def project(equation: str, x: Array, weight: nnx.Variable, dtype) -> Array:
    """``einsum(equation, x, weight)`` in ``dtype``. A weight whose value carries a low-rank adapter
    (``quark_jax.models.lora.LoRAArray``) adds its path x·A·B unmerged; a quantized one dequantizes."""
    value = weight.get_value()
    if hasattr(value, "project"):
        return value.project(equation, x, dtype)
    return jnp.einsum(equation, x, weight[...].astype(dtype))


class Attention(nnx.Module):
    """Grouped-query attention: N query heads share K key/value heads in groups of G = N / K."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        D, N, K, H = config.d_model, config.num_heads, config.num_kv_heads, config.head_dim
        std = config.init_std
        self.wq = param(rngs, (D, N, H), (sh.EMBED, sh.HEADS, sh.HEAD_DIM), std)
        self.wk = param(rngs, (D, K, H), (sh.EMBED, sh.KV_HEADS, sh.HEAD_DIM), std)
        self.wv = param(rngs, (D, K, H), (sh.EMBED, sh.KV_HEADS, sh.HEAD_DIM), std)
        # Residual-branch outputs start smaller so the residual stream's variance does not grow with depth
        # (GPT-2's 1/sqrt(2L) scaling).
        self.wo = param(rngs, (N, H, D), (sh.HEADS, sh.HEAD_DIM, sh.EMBED), std / (2 * config.num_layers) ** 0.5)

    def __call__(
        self,
        x: Float[Array, "B T D"],
        positions: Int[Array, "B T"],
        segment_ids: Int[Array, "B T"],
        kv: tuple[Float[Array, "B S K H"], Float[Array, "B S K H"]] | None = None,
        kv_index: Int[Array, ""] | Int[Array, "B"] | None = None,
        key_positions: Int[Array, "B S"] | None = None,
        key_segment_ids: Int[Array, "B S"] | None = None,
    ) -> tuple[Float[Array, "B T D"], tuple[Float[Array, "B S K H"], Float[Array, "B S K H"]] | None]:
        """Self-attention over the chunk ``x``; with ``kv`` (a layer's KV cache) the chunk's keys and values
        are written at ``kv_index`` (shared, or one slot per row) and the queries attend to the whole cache."""
        cfg = self.config
        dtype = cfg.compute_dtype
        q = project("BTD,DNH->BTNH", x, self.wq, dtype)
        k = project("BTD,DKH->BTKH", x, self.wk, dtype)
        v = project("BTD,DKH->BTKH", x, self.wv, dtype)
        q = sh.constrain(apply_rope(q, positions, cfg.rope_theta), (sh.BATCH, sh.LENGTH, sh.ACT_HEADS, None))
        k = sh.constrain(apply_rope(k, positions, cfg.rope_theta), (sh.BATCH, sh.LENGTH, sh.ACT_KV_HEADS, None))
        v = sh.constrain(v, (sh.BATCH, sh.LENGTH, sh.ACT_KV_HEADS, None))

        if kv is None:
            keys, values, key_positions, key_segment_ids = k, v, positions, segment_ids
        else:
            cache_k, cache_v = kv
            keys = write_at(cache_k, k, kv_index)
            values = write_at(cache_v, v, kv_index)
            kv = (keys, values)

        B, T, N, H = q.shape
        K = cfg.num_kv_heads
        q = q.reshape(B, T, K, N // K, H)
        scores = jnp.einsum("BTKGH,BSKH->BKGTS", q, keys.astype(dtype)).astype(jnp.float32) * H**-0.5
        mask = attention_mask(positions, segment_ids, key_positions, key_segment_ids)
        # A finite fill: rows with no visible key (padding queries) become uniform instead of NaN.
        scores = jnp.where(mask[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
        out = jnp.einsum("BKGTS,BSKH->BTKGH", probs, values.astype(dtype)).reshape(B, T, N, H)
        out = sh.constrain(out, (sh.BATCH, sh.LENGTH, sh.ACT_HEADS, None))
        y = project("BTNH,NHD->BTD", out, self.wo, dtype)
        return sh.constrain(y, (sh.BATCH, sh.LENGTH, sh.ACT_EMBED)), kv


class MLP(nnx.Module):
    """SwiGLU feed-forward block (Shazeer 2020): down(silu(x·gate) * x·up)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, hidden_dim: int | None = None):
        self.config = config
        D, F, std = config.d_model, hidden_dim or config.mlp_dim, config.init_std
        self.w_gate = param(rngs, (D, F), (sh.EMBED, sh.MLP), std)
        self.w_up = param(rngs, (D, F), (sh.EMBED, sh.MLP), std)
        self.w_down = param(rngs, (F, D), (sh.MLP, sh.EMBED), std / (2 * config.num_layers) ** 0.5)

    def __call__(self, x: Float[Array, "B T D"]) -> Float[Array, "B T D"]:
        dtype = self.config.compute_dtype
        gate = project("BTD,DF->BTF", x, self.w_gate, dtype)
        up = project("BTD,DF->BTF", x, self.w_up, dtype)
        hidden = sh.constrain(jax.nn.silu(gate) * up, (sh.BATCH, sh.LENGTH, sh.ACT_MLP))
        y = project("BTF,FD->BTD", hidden, self.w_down, dtype)
        return sh.constrain(y, (sh.BATCH, sh.LENGTH, sh.ACT_EMBED))


# Contraction axes (negative: they survive slicing off the leading ``layers`` axis) of each matmul weight,
# by parameter name. The embedding is both gathered by row and contracted over D in the tied output
# projection, so its "channel" is the vocabulary row. MoE expert weights (models/moe.py) use the same
# names with a leading expert axis and need no new entries (the router stays float32: routing decisions
# are discrete and cheap to keep exact). Read by weight-only quantization and by LoRA (which axes are inputs).
CONTRACTION_AXES: dict[str, tuple[int, ...]] = {
    "wq": (-3,), "wk": (-3,), "wv": (-3,),  # [L D N H] : D
    "wo": (-3, -2),  # [L N H D] : N H
    "w_gate": (-2,), "w_up": (-2,),  # [L D F] : D
    "w_down": (-2,),  # [L F D] : F
    "embedding": (-1,),  # [V D] : D
    "lm_head": (-2,),  # [D V] : D
}
