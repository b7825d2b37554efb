"""The decoder: cached decoding, attention variants, packing isolation, parameter counts, remat."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from quark_jax import sharding as sh
from quark_jax.models.config import ModelConfig
from quark_jax.models.transformer import KVCache, abstract_model, init_model

SMALL = ModelConfig(vocab_size=97, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64,
                    tie_embeddings=False)


def forward(model, tokens, segment_ids=None, positions=None):
    batch, length = tokens.shape
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
    if segment_ids is None:
        segment_ids = jnp.ones((batch, length), jnp.int32)
    return model(tokens, positions, segment_ids)[0]


@pytest.mark.parametrize("num_kv_heads", [1, 2, 4], ids=["mqa", "gqa", "mha"])
def test_cached_decoding_matches_full_forward(num_kv_heads):
    config = dataclasses.replace(SMALL, num_kv_heads=num_kv_heads)
    model = init_model(config, seed=1)
    tokens = jax.random.randint(jax.random.key(0), (2, 12), 4, config.vocab_size)
    full = forward(model, tokens)

    cache = KVCache.init(config, batch_size=2, max_length=16)
    prefill = 5
    pos = jnp.broadcast_to(jnp.arange(prefill), (2, prefill))
    logits, cache = model(tokens[:, :prefill], pos, jnp.ones_like(pos), cache)
    steps = [logits]
    for t in range(prefill, 12):
        pos = jnp.full((2, 1), t)
        logits, cache = model(tokens[:, t:t + 1], pos, jnp.ones_like(pos), cache)
        steps.append(logits)
    cached = jnp.concatenate(steps, axis=1)
    np.testing.assert_allclose(cached, full, atol=2e-5, rtol=2e-5)
    assert int(cache.index) == 12


def test_packed_segments_do_not_attend_across_boundaries():
    model = init_model(SMALL, seed=2)
    a = jax.random.randint(jax.random.key(1), (1, 7), 4, SMALL.vocab_size)
    b = jax.random.randint(jax.random.key(2), (1, 9), 4, SMALL.vocab_size)
    packed = jnp.concatenate([a, b], axis=1)
    segments = jnp.array([[1] * 7 + [2] * 9])
    positions = jnp.array([list(range(7)) + list(range(9))])
    logits = forward(model, packed, segments, positions)
    np.testing.assert_allclose(logits[:, :7], forward(model, a), atol=1e-5)
    np.testing.assert_allclose(logits[:, 7:], forward(model, b), atol=1e-5)


def test_causal_future_tokens_do_not_change_the_past():
    model = init_model(SMALL, seed=3)
    tokens = jax.random.randint(jax.random.key(3), (1, 10), 4, SMALL.vocab_size)
    changed = tokens.at[0, 6:].set(5)
    np.testing.assert_allclose(forward(model, tokens)[:, :6], forward(model, changed)[:, :6], atol=1e-6)


@pytest.mark.parametrize("remat", ["full", "save_dots"])
def test_remat_policies_give_the_same_gradients(remat):
    tokens = jax.random.randint(jax.random.key(4), (2, 8), 4, SMALL.vocab_size)

    def grads(config):
        model = init_model(config, seed=0)
        graphdef, params = nnx.split(model)

        def loss(p):
            return jnp.mean(forward(nnx.merge(graphdef, p), tokens) ** 2)

        return jax.grad(loss)(params)

    reference = grads(SMALL)
    rematted = grads(dataclasses.replace(SMALL, remat=remat))
    for x, y in zip(jax.tree.leaves(reference), jax.tree.leaves(rematted)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)


def test_bfloat16_compute_keeps_float32_params_and_logits():
    config = dataclasses.replace(SMALL, dtype="bfloat16")
    model = init_model(config)
    logits = forward(model, jnp.ones((1, 4), jnp.int32))
    assert logits.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(logits)))
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize("tie", [True, False])
def test_num_params_matches_the_built_model(tie):
    config = dataclasses.replace(SMALL, tie_embeddings=tie)
    model = abstract_model(config)
    built = sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert built == config.num_params()


def test_every_parameter_has_logical_axes_covered_by_the_rules():
    model = abstract_model(SMALL)
    state = nnx.state(model, nnx.Param)
    for path, variable in jax.tree_util.tree_leaves_with_path(state, is_leaf=lambda x: isinstance(x, nnx.Variable)):
        names = variable.get_metadata().get("out_sharding")
        assert names is not None and len(names) == variable.get_value().ndim, path
    assert sh.used_logical_names(state) <= {name for name, _ in sh.DEFAULT_RULES}


def test_bad_shapes_and_configs_name_the_culprit():
    model = init_model(SMALL)
    with pytest.raises(ValueError, match="same \\[batch, length\\] shape"):
        model(jnp.ones((1, 4), jnp.int32), jnp.ones((1, 5), jnp.int32), jnp.ones((1, 4), jnp.int32))
    with pytest.raises(ValueError, match="num_heads=6 must be a multiple of num_kv_heads=4"):
        dataclasses.replace(SMALL, num_heads=6, num_kv_heads=4)
