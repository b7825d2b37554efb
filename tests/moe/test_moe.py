"""MoE layer: reference equalities, capacity dropping, the balancing loss's gradient, parameter counts, and a
train step that optimises and logs the auxiliary losses."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from quark_jax import sharding as sh
from quark_jax.models.config import ModelConfig
from quark_jax.models.layers import MLP
from quark_jax.models.moe import MoE, expert_capacity
from quark_jax.models.transformer import KVCache, Transformer, abstract_model
from quark_jax.training.config import OptimizerConfig
from quark_jax.training.losses import lm_loss_sums
from quark_jax.training.sharded import make_sharded_training, synthetic_batch

SMALL = ModelConfig(vocab_size=256, d_model=32, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=16, mlp_dim=48,
                    num_experts=4, experts_per_token=2, moe_every=1)


def jitted(module):
    """``module`` as a jitted pure function of its inputs (eager op-by-op dispatch is slow on the CPU)."""
    graphdef, state = nnx.split(module)
    return jax.jit(lambda *args: nnx.merge(graphdef, state)(*args))


def inputs(shape=(3, 16, 32), seed=0):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


@pytest.mark.parametrize("dispatch", ["capacity", "dropless"])
def test_one_expert_top1_equals_the_dense_mlp(dispatch):
    config = dataclasses.replace(SMALL, num_experts=1, experts_per_token=1, moe_dispatch=dispatch)
    moe = MoE(config, rngs=nnx.Rngs(0))
    mlp = MLP(config, rngs=nnx.Rngs(1))
    for name in ("w_gate", "w_up", "w_down"):
        getattr(mlp, name)[...] = getattr(moe, name)[...][0]
    x = inputs()
    y, aux = jitted(moe)(x)
    np.testing.assert_allclose(y, jitted(mlp)(x), rtol=1e-5, atol=1e-6)
    assert float(aux["dropped_fraction"]) == 0.0
    assert float(aux["load_balance_loss"]) == pytest.approx(1.0)


def test_dropless_equals_capacity_mode_when_capacity_is_large():
    capacity = dataclasses.replace(SMALL, capacity_factor=SMALL.num_experts / SMALL.experts_per_token)  # C = T
    dropless = dataclasses.replace(capacity, moe_dispatch="dropless")
    assert expert_capacity(capacity, 16) == 16
    x = inputs()
    y_cap, aux_cap = jitted(MoE(capacity, rngs=nnx.Rngs(0)))(x)
    y_drop, aux_drop = jitted(MoE(dropless, rngs=nnx.Rngs(0)))(x)
    np.testing.assert_allclose(y_cap, y_drop, rtol=1e-5, atol=1e-6)
    assert float(aux_cap["dropped_fraction"]) == 0.0
    for key in ("load_balance_loss", "router_z_loss"):
        assert float(aux_cap[key]) == pytest.approx(float(aux_drop[key]), rel=1e-6)
    # and the whole model agrees too
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 256)
    pos, seg = jnp.broadcast_to(jnp.arange(16), (2, 16)), jnp.ones((2, 16), jnp.int32)
    a, _ = jitted(Transformer(capacity, rngs=nnx.Rngs(2)))(tokens, pos, seg)
    b, _ = jitted(Transformer(dropless, rngs=nnx.Rngs(2)))(tokens, pos, seg)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_small_capacity_drops_the_overflow_and_only_that():
    config = dataclasses.replace(SMALL, capacity_factor=0.5)
    moe = MoE(config, rngs=nnx.Rngs(0))
    x = inputs()
    C = expert_capacity(config, 16)
    assert C == 4
    _, gates, experts = moe.route(x)
    y, kept = moe._capacity(x, gates, experts)
    # every expert keeps at most C assignments per row, and exactly min(C, demand) of them
    for b in range(x.shape[0]):
        for e in range(config.num_experts):
            demand = int(jnp.sum(experts[b] == e))
            assert int(jnp.sum(kept[b] & (experts[b] == e))) == min(C, demand)
    _, aux = moe(x)
    assert 0.0 < float(aux["dropped_fraction"]) == pytest.approx(1 - float(jnp.mean(kept)))


def test_balancing_loss_gradient_moves_the_router_toward_balance():
    config = dataclasses.replace(SMALL, experts_per_token=1)
    moe = MoE(config, rngs=nnx.Rngs(0))
    x = inputs((4, 64, 32))
    # Skew the router: a direction shared by all inputs strongly prefers expert 0.
    bias_dir = jnp.mean(x, axis=(0, 1))
    moe.router[...] = moe.router[...] + 2.0 * jnp.outer(bias_dir / jnp.sum(bias_dir**2), jnp.eye(4)[0])
    x = x + bias_dir  # make every token carry the shared direction

    @jax.jit
    def aux_of(router):  # the layer's routing and aux statistics as a function of the router weights
        logits = jnp.einsum("BTD,DE->BTE", x, router)
        _, experts = jax.lax.top_k(jax.nn.softmax(logits), config.experts_per_token)
        return moe.aux(logits, experts, jnp.ones(experts.shape, bool), None)

    balance_loss = jax.jit(jax.grad(lambda r: aux_of(r)["load_balance_loss"]))
    router = moe.router[...]
    first_aux = aux_of(router)
    first, first_load = float(first_aux["load_balance_loss"]), first_aux["expert_load"]
    for _ in range(100):
        router = router - 5.0 * balance_loss(router)
    last_aux = aux_of(router)
    last, load = float(last_aux["load_balance_loss"]), last_aux["expert_load"]
    assert float(first_load[0]) > 0.6 and first > 1.5, (first_load, first)
    assert last < first - 0.3, (first, last)
    assert float(jnp.max(load)) < 0.4, (first_load, load)  # balanced is 0.25


def test_parameter_counts_total_and_active():
    for config in (SMALL, dataclasses.replace(SMALL, num_layers=4, moe_every=2, num_shared_experts=2, expert_mlp_dim=24)):
        model = abstract_model(config)
        built = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
        assert built == config.num_params()
    mixtral = ModelConfig(vocab_size=32000, d_model=4096, num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128,
                          mlp_dim=14336, tie_embeddings=False, num_experts=8, experts_per_token=2)
    assert round(mixtral.num_params() / 1e9, 1) == 46.7  # Mixtral-8x7B: 46.7B total
    assert round(mixtral.active_params() / 1e9, 1) == 12.9  # and 12.9B active
    assert mixtral.matmul_params() < mixtral.active_params()  # the embedding gather is not a matmul


def test_decoding_with_a_cache_matches_the_full_forward():
    config = dataclasses.replace(SMALL, num_layers=4, moe_every=2, capacity_factor=2.0)
    model = Transformer(config, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 8), 0, 256)
    pos, seg = jnp.broadcast_to(jnp.arange(8), (2, 8)), jnp.ones((2, 8), jnp.int32)
    full, _ = jitted(model)(tokens, pos, seg)
    cache = KVCache.init(config, 2, 8)
    logits, cache = model(tokens[:, :5], pos[:, :5], seg[:, :5], cache)
    steps = [logits]
    for t in range(5, 8):
        logits, cache = model(tokens[:, t:t + 1], pos[:, t:t + 1], seg[:, t:t + 1], cache)
        steps.append(logits)
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, rtol=1e-4, atol=1e-4)


def test_train_step_adds_and_logs_the_aux_losses():
    config = dataclasses.replace(SMALL, num_layers=4, moe_every=2, load_balance_loss_weight=0.1)
    mesh = sh.make_mesh("data=1", jax.devices()[:1])
    run = make_sharded_training(config, mesh, OptimizerConfig(learning_rate=1e-2, warmup_steps=1), total_steps=10)
    batch = synthetic_batch(config.vocab_size, 4, 16)
    with sh.activate(mesh):
        state = run.init(jax.random.key(0))
        initial = jax.device_get(state.params)  # copied: the step donates the state
        state, metrics = run.step(state, batch)
    metrics = jax.device_get(metrics)
    loads = [float(metrics[f"moe/expert_load_{e}"]) for e in range(config.num_experts)]
    assert sum(loads) == pytest.approx(1.0, abs=1e-5)
    assert float(metrics["moe/load_balance_loss"]) >= 0.99  # >= 1 up to the top-k vs probability mismatch
    assert float(metrics["moe/router_z_loss"]) > 0.0
    assert 0.0 <= float(metrics["moe/dropped_fraction"]) < 1.0
    # The router receives gradient from the main loss and from the aux losses, and the step moves it.
    def loss_terms(router):
        params = {**initial, "moe_blocks": {**initial["moe_blocks"],
                                            "moe": {**initial["moe_blocks"]["moe"], "router": router}}}
        sums = lm_loss_sums(params, run.graphdef, {k: jnp.asarray(v) for k, v in batch.items()}, 0.0)
        return sums["nll_sum"], sums["moe_loss_sum"]

    router = jnp.asarray(initial["moe_blocks"]["moe"]["router"])
    for term in (0, 1):
        grad = jax.grad(lambda r: loss_terms(r)[term])(router)
        assert np.isfinite(np.asarray(grad)).all() and float(jnp.linalg.norm(grad)) > 1e-6, term
    # The first update runs at the warm-up's learning rate 0; the second moves the router by about the
    # learning rate (Adam), far more than weight decay alone would.
    with sh.activate(mesh):
        state, second = run.step(state, batch)
    assert float(jax.device_get(second)["learning_rate"]) > 0
    moved = np.asarray(jax.device_get(state.params["moe_blocks"]["moe"]["router"])) - np.asarray(router)
    assert np.abs(moved).max() > 1e-3


def test_every_moe_parameter_has_logical_axes_covered_by_the_rules():
    config = dataclasses.replace(SMALL, num_layers=4, moe_every=2, num_shared_experts=1)
    state = nnx.state(abstract_model(config), nnx.Param)
    for path, variable in jax.tree_util.tree_leaves_with_path(state, is_leaf=lambda x: isinstance(x, nnx.Variable)):
        names = variable.get_metadata().get("out_sharding")
        assert names is not None and len(names) == variable.get_value().ndim, path
    assert sh.EXPERTS in sh.used_logical_names(state)
    assert sh.used_logical_names(state) | {sh.ACT_EXPERT, sh.EXPERT_BATCH} <= {name for name, _ in sh.DEFAULT_RULES}
    assert state["moe_blocks"]["moe"]["w_gate"].get_metadata()["out_sharding"] == (sh.LAYERS, sh.EXPERTS, sh.EMBED, sh.MLP)


@pytest.mark.parametrize("bad, message", [
    (dict(experts_per_token=5), "experts_per_token=5 must be in \\[1, num_experts=4\\]"),
    (dict(moe_every=3), "moe_every=3 must be >= 1 and divide num_layers=2"),
    (dict(moe_dispatch="sparse"), "moe_dispatch='sparse'"),
    (dict(capacity_factor=0.0), "capacity_factor=0.0 must be > 0"),
])
def test_bad_moe_configs_name_the_field(bad, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(SMALL, **bad)
