"""The decoder's forward pass against a plain ``jnp`` reference written here from the parameter arrays.

The reference is independent of ``quark_jax.models.layers``: rotary embeddings as complex rotations of
(x[i], x[i + H/2]) pairs, the mask from token indices and segment ids, grouped-query attention by repeating
key/value heads, the SwiGLU MLP, untied or tied output projection. Logits of every non-padding token of
packed rows must agree to 1e-5 (max abs difference). Weights are drawn large and norm scales are perturbed
away from 1, so that logits are O(1) and a layout mistake cannot hide under the tolerance; and a set of
deliberately wrong references (no RoPE, interleaved RoPE pairs, no causal mask, no segment mask, another
head grouping, the head transposed) is checked to differ from the model by far more than the tolerance, so
this comparison would catch those mistakes.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from quark_jax.models.config import ModelConfig
from quark_jax.models.transformer import Transformer

TOLERANCE = 1e-5
CONFIG = ModelConfig(
    vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=48,
    rope_theta=10_000.0, norm_eps=1e-6, init_std=0.15, dtype="float32", remat="none",
)
# Two rows of packed segments: [seg 1: 5 tokens][seg 2: 7][seg 3: 2][padding: 2] and [seg 1: 11][seg 2: 5].
SEGMENT_LENGTHS = [[5, 7, 2], [11, 5]]
LENGTH = 16


def packed_batch(seed: int = 0):
    tokens = np.array(jax.random.randint(jax.random.key(seed), (2, LENGTH), 1, CONFIG.vocab_size), np.int32)
    segments = np.zeros((2, LENGTH), np.int32)
    positions = np.zeros((2, LENGTH), np.int32)
    for row, lengths in enumerate(SEGMENT_LENGTHS):
        start = 0
        for seg, n in enumerate(lengths, start=1):
            segments[row, start:start + n] = seg
            positions[row, start:start + n] = np.arange(n)
            start += n
    tokens[segments == 0] = 0
    return tokens, positions, segments


def model_and_params(tie: bool, seed: int = 0):
    config = dataclasses.replace(CONFIG, tie_embeddings=tie)
    model = Transformer(config, rngs=nnx.Rngs(params=seed))
    state = nnx.state(model, nnx.Param)
    params = nnx.to_pure_dict(state)
    # Norm scales away from 1 (a missing or swapped scale would show).
    keys = iter(jax.random.split(jax.random.key(seed + 100), 8))
    for tree in (params["blocks"]["attn_norm"], params["blocks"]["mlp_norm"], params["final_norm"]):
        tree["scale"] = 1.0 + 0.5 * jax.random.normal(next(keys), tree["scale"].shape, jnp.float32)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(model, state)
    return config, model, params


# ---- the reference -----------------------------------------------------------------------------------


def rms_norm(x, scale, eps):
    return x / jnp.sqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps) * scale


def rotary(x, positions, theta, interleaved=False):
    """x [B, T, heads, H]: pair j of the head (x[j], x[j + H/2]) is the complex number x[j] + i·x[j + H/2],
    turned by the angle position · theta^(-2j/H)."""
    H = x.shape[-1]
    freqs = 1.0 / theta ** (np.arange(0, H, 2, dtype=np.float64) / H)  # [H/2]
    angle = positions[:, :, None, None].astype(np.float64) * freqs  # [B, T, 1, H/2]
    turn = jnp.asarray(np.exp(1j * angle), jnp.complex64)
    if interleaved:  # (x[2j], x[2j+1]) pairs: the GPT-J layout, a different model
        z = x[..., 0::2] + 1j * x[..., 1::2]
        z = z * turn
        return jnp.stack([z.real, z.imag], axis=-1).reshape(x.shape).astype(jnp.float32)
    z = (x[..., : H // 2] + 1j * x[..., H // 2:]) * turn
    return jnp.concatenate([z.real, z.imag], axis=-1).astype(jnp.float32)


def visible(segments, causal=True, by_segment=True):
    """[B, T, S]: key s is visible to query t when both are in the same (non-padding) segment and s <= t."""
    B, T = segments.shape
    allowed = np.ones((B, T, T), bool)
    if causal:
        allowed &= np.tril(np.ones((T, T), bool))[None]
    if by_segment:
        allowed &= segments[:, :, None] == segments[:, None, :]
    allowed &= segments[:, None, :] != 0
    return allowed


def reference_logits(config, params, tokens, positions, segments, *, rope=True, interleaved=False, causal=True,
                     by_segment=True, head_of_kv=None, transpose_head=False):
    N, K, H = config.num_heads, config.num_kv_heads, config.head_dim
    G = N // K
    kv_for_head = np.array([n // G for n in range(N)] if head_of_kv is None else [head_of_kv(n) for n in range(N)])
    mask = jnp.asarray(visible(segments, causal, by_segment))
    x = params["embed"]["embedding"][tokens]  # [B, T, D]
    layers = params["blocks"]
    for layer in range(config.num_layers):
        p = jax.tree.map(lambda a: a[layer], layers)
        h = rms_norm(x, p["attn_norm"]["scale"], config.norm_eps)
        q = jnp.einsum("btd,dnh->btnh", h, p["attn"]["wq"])
        k = jnp.einsum("btd,dkh->btkh", h, p["attn"]["wk"])
        v = jnp.einsum("btd,dkh->btkh", h, p["attn"]["wv"])
        if rope:
            q, k = rotary(q, positions, config.rope_theta, interleaved), rotary(k, positions, config.rope_theta, interleaved)
        k, v = k[:, :, kv_for_head], v[:, :, kv_for_head]  # [B, S, N, H]: each query head's key/value head
        scores = jnp.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(H)
        # Softmax over the visible keys; a padding query sees none and gets zero weights (its logits are not
        # compared, and no real token attends to it).
        top = jnp.max(jnp.where(mask[:, None], scores, -jnp.inf), axis=-1, keepdims=True)
        weights = jnp.where(mask[:, None], jnp.exp(scores - jnp.where(jnp.isfinite(top), top, 0.0)), 0.0)
        weights = weights / jnp.maximum(jnp.sum(weights, axis=-1, keepdims=True), 1e-30)
        attended = jnp.einsum("bnts,bsnh->btnh", weights, v)
        x = x + jnp.einsum("btnh,nhd->btd", attended, p["attn"]["wo"])
        h = rms_norm(x, p["mlp_norm"]["scale"], config.norm_eps)
        gate, up = h @ p["mlp"]["w_gate"], h @ p["mlp"]["w_up"]
        x = x + (gate * jax.nn.sigmoid(gate) * up) @ p["mlp"]["w_down"]
    x = rms_norm(x, params["final_norm"]["scale"], config.norm_eps)
    if config.tie_embeddings:
        head = params["embed"]["embedding"].T  # [D, V]
    else:
        head = params["lm_head"]
    if transpose_head:  # the [V, D] embedding read as if it were laid out [D, V] the other way round
        head = head.reshape(head.shape[::-1]).T
    return x @ head


# ---- the tests ---------------------------------------------------------------------------------------


def max_abs_diff(model_logits, ref_logits, segments):
    valid = segments != 0
    return float(np.max(np.abs(np.asarray(model_logits)[valid] - np.asarray(ref_logits)[valid])))


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_forward_matches_the_reference(tie):
    config, model, params = model_and_params(tie)
    assert ("lm_head" in params) == (not tie)
    tokens, positions, segments = packed_batch()
    logits, _ = model(jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(segments))
    expected = reference_logits(config, params, tokens, positions, segments)
    valid = segments != 0
    assert logits.shape == (2, LENGTH, config.vocab_size) and valid.sum() == 30
    # The logits are large enough for a 1e-5 agreement to mean something.
    assert float(np.std(np.asarray(expected)[valid])) > 0.5
    assert max_abs_diff(logits, expected, segments) <= TOLERANCE


WRONG_REFERENCES = {
    "no_rope": dict(rope=False),
    "interleaved_rope_pairs": dict(interleaved=True),
    "no_causal_mask": dict(causal=False),
    "no_segment_mask": dict(by_segment=False),
    "heads_grouped_round_robin": dict(head_of_kv=lambda n: n % CONFIG.num_kv_heads),
}


@pytest.mark.parametrize("wrong", list(WRONG_REFERENCES), ids=list(WRONG_REFERENCES))
def test_a_wrong_reference_is_far_outside_the_tolerance(wrong):
    """The comparison is sensitive: each mistake moves the logits by more than 1000× the tolerance."""
    config, model, params = model_and_params(tie=False)
    tokens, positions, segments = packed_batch()
    logits, _ = model(jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(segments))
    wrong_logits = reference_logits(config, params, tokens, positions, segments, **WRONG_REFERENCES[wrong])
    assert max_abs_diff(logits, wrong_logits, segments) > 1000 * TOLERANCE


def test_tied_logits_use_the_embedding_as_laid_out():
    config, model, params = model_and_params(tie=True)
    tokens, positions, segments = packed_batch(seed=3)
    logits, _ = model(jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(segments))
    wrong = reference_logits(config, params, tokens, positions, segments, transpose_head=True)
    assert max_abs_diff(logits, wrong, segments) > 1000 * TOLERANCE
