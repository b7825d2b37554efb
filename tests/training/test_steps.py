"""The pure train step: gradient accumulation, non-finite handling, the optimizer schedule, learning."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from quark_jax.data import pipeline
from quark_jax.models.config import ModelConfig
from quark_jax.models.transformer import Transformer
from quark_jax.training.config import OptimizerConfig
from quark_jax.training.optim import make_optimizer, make_schedule, weight_decay_mask
from quark_jax.training.state import TrainState
from quark_jax.training.steps import make_train_step

CONFIG = ModelConfig(vocab_size=4096, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, mlp_dim=128)


@pytest.fixture(scope="module")
def setup():
    model = Transformer(CONFIG, rngs=nnx.Rngs(params=0))
    graphdef, state = nnx.split(model)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    tx, schedule = make_optimizer(OptimizerConfig(learning_rate=3e-3, warmup_steps=2), 50, weight_decay_mask(state))
    batches = pipeline.batch_iterator("stdlib", {"targets": 64}, 8, seed=0)
    batch = {k: jnp.asarray(v) for k, v in next(batches).items()}
    return graphdef, params, tx, schedule, batch, batches


def fresh_state(params, tx):
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def test_gradient_accumulation_equals_the_full_batch(setup):
    graphdef, params, tx, schedule, batch, _ = setup
    full = jax.jit(make_train_step(graphdef, tx, schedule, z_loss=1e-4))
    accumulated = jax.jit(make_train_step(graphdef, tx, schedule, z_loss=1e-4, grad_accum_steps=4))
    s1, m1 = full(fresh_state(params, tx), batch)
    s2, m2 = accumulated(fresh_state(params, tx), batch)
    np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-5)
    np.testing.assert_allclose(m1["grad_norm"], m2["grad_norm"], rtol=1e-4)
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_loss_falls_on_real_data(setup):
    graphdef, params, tx, schedule, _, batches = setup
    step = jax.jit(make_train_step(graphdef, tx, schedule))
    state = fresh_state(params, tx)
    losses = []
    for _ in range(30):
        state, metrics = step(state, {k: jnp.asarray(v) for k, v in next(batches).items()})
        losses.append(float(metrics["loss"]))
    assert losses[0] > 8.0  # ~ln(4096) = 8.3 at initialisation
    assert np.mean(losses[-5:]) < losses[0] - 1.5


def test_skip_nonfinite_leaves_the_state_untouched(setup):
    graphdef, params, tx, schedule, batch, _ = setup
    poisoned = jax.tree.map(lambda x: x, params)
    poisoned["final_norm"]["scale"] = poisoned["final_norm"]["scale"].at[0].set(jnp.nan)
    state = fresh_state(poisoned, tx)
    new_state, metrics = jax.jit(make_train_step(graphdef, tx, schedule, skip_nonfinite=True))(state, batch)
    assert not bool(metrics["finite"])
    assert int(new_state.step) == 1
    for a, b in zip(jax.tree.leaves((state.params, state.opt_state)), jax.tree.leaves((new_state.params, new_state.opt_state))):
        np.testing.assert_array_equal(a, b)


def test_schedule_warms_up_then_decays_and_norms_do_not_decay(setup):
    schedule = make_schedule(OptimizerConfig(learning_rate=1.0, warmup_steps=10, end_learning_rate_ratio=0.1), 100)
    assert float(schedule(0)) == 0.0 and abs(float(schedule(10)) - 1.0) < 1e-6
    assert abs(float(schedule(100)) - 0.1) < 1e-6 and float(schedule(55)) < float(schedule(20))
    graphdef, params, *_ = setup
    mask = weight_decay_mask(nnx.state(nnx.merge(graphdef, params)))
    assert mask["final_norm"]["scale"] is False
    assert mask["blocks"]["mlp"]["w_up"] is True and mask["blocks"]["attn_norm"]["scale"] is False
