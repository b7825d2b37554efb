"""Architecture upgrades as init_from transforms: sparse upcycling and depth growth keep the function at step 0,
differ from a random initialisation, and train."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import RUN_CONFIG, read_metrics, tiny_overrides
from quark_jax.models.config import ModelConfig
from quark_jax.models.transformer import init_model
from quark_jax.training import init_transforms
from quark_jax.training.trainer import _flatten, _unflatten_like

DENSE = ModelConfig(vocab_size=128, d_model=32, num_layers=4, num_heads=2, num_kv_heads=1, head_dim=16, mlp_dim=64)
# capacity_factor = E / k: every expert has a slot for every token of a row, so nothing is dropped.
MOE = dataclasses.replace(DENSE, num_experts=4, experts_per_token=2, moe_every=2, expert_mlp_dim=64,
                          capacity_factor=2.0)


def flat_params(model) -> dict:
    return dict(_flatten(nnx.to_pure_dict(nnx.state(model, nnx.Param))))


def with_params(model, flat: dict):
    graphdef, state = nnx.split(model)
    pure = nnx.to_pure_dict(state)
    nnx.replace_by_pure_dict(state, _unflatten_like(pure, flat))
    return nnx.merge(graphdef, state)


def logits_of(model, seed: int = 3) -> np.ndarray:
    tokens = jax.random.randint(jax.random.key(seed), (2, 24), 0, DENSE.vocab_size)
    positions = jnp.broadcast_to(jnp.arange(24), tokens.shape)
    logits, _ = model(tokens, positions, jnp.ones_like(tokens))
    return np.asarray(logits)


@pytest.mark.parametrize("dispatch", ["capacity", "dropless"])
def test_upcycled_moe_logits_equal_the_dense_model_at_step_0(dispatch):
    dense = init_model(DENSE, seed=0)
    target = dataclasses.replace(MOE, moe_dispatch=dispatch)
    fresh = init_model(target, seed=1)
    upcycled = with_params(init_model(target, seed=1),
                           init_transforms.upcycle(flat_params(dense), DENSE, target, flat_params(fresh)))
    want = logits_of(dense)
    np.testing.assert_allclose(logits_of(upcycled), want, atol=2e-5, rtol=1e-5)
    assert np.abs(logits_of(fresh) - want).max() > 1e-2  # a random-init MoE computes something else
    p = flat_params(upcycled)
    # The router is the fresh one, and its choices are not uniform: equality does not come from a dead router.
    np.testing.assert_array_equal(p["moe_blocks.moe.router"], flat_params(fresh)["moe_blocks.moe.router"])
    np.testing.assert_array_equal(p["moe_blocks.moe.w_up"][1, 3], flat_params(dense)["blocks.mlp.w_up"][3])


def test_upcycle_refuses_an_expert_size_other_than_the_mlp():
    target = dataclasses.replace(MOE, expert_mlp_dim=32)
    with pytest.raises(ValueError, match=r"bind ModelConfig.expert_mlp_dim = 64"):
        init_transforms.upcycle(flat_params(init_model(DENSE)), DENSE, target, flat_params(init_model(target)))


def test_grown_model_keeps_the_function_and_its_new_layers_learn():
    shallow = dataclasses.replace(DENSE, num_layers=2)
    dense = init_model(shallow, seed=0)
    fresh = init_model(DENSE, seed=1)
    grown_params = init_transforms.grow_depth(flat_params(dense), shallow, DENSE, flat_params(fresh))
    grown = with_params(init_model(DENSE, seed=1), grown_params)
    want = logits_of(dense)
    np.testing.assert_allclose(logits_of(grown), want, atol=2e-5, rtol=1e-5)
    assert np.abs(logits_of(fresh) - want).max() > 1e-2
    new = np.asarray(init_transforms.new_layer_mask(shallow, DENSE)).astype(bool)
    assert new.tolist() == [False, True, False, True]
    assert not np.asarray(grown_params["blocks.attn.wo"])[new].any()
    # Old layers are the source's, in order; new layers keep their fresh (non-zero) input projections.
    np.testing.assert_array_equal(grown_params["blocks.attn.wq"][2], flat_params(dense)["blocks.attn.wq"][1])
    np.testing.assert_array_equal(grown_params["blocks.mlp.w_gate"][1], flat_params(fresh)["blocks.mlp.w_gate"][1])

    # One gradient step reaches the zeroed output projections of the new layers.
    graphdef, state = nnx.split(grown)
    tokens = jax.random.randint(jax.random.key(5), (2, 24), 0, DENSE.vocab_size)
    positions = jnp.broadcast_to(jnp.arange(24), tokens.shape)

    def loss(state):
        logits, _ = nnx.merge(graphdef, state)(tokens[:, :-1], positions[:, :-1], jnp.ones_like(tokens[:, :-1]))
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], -1))

    grads = dict(_flatten(nnx.to_pure_dict(jax.grad(loss)(state))))
    wo_grad = np.abs(np.asarray(grads["blocks.attn.wo"])).reshape(4, -1).max(axis=1)
    down_grad = np.abs(np.asarray(grads["blocks.mlp.w_down"])).reshape(4, -1).max(axis=1)
    assert (wo_grad[new] > 1e-6).all() and (down_grad[new] > 1e-6).all()


def test_trainer_upcycles_a_dense_run_and_trains(trained_run, tmp_path):
    import quark_jax as qj

    dense_losses = [r["loss"] for r in read_metrics(trained_run["model_dir"]) if "loss" in r]
    bindings = tiny_overrides(tmp_path / "moe", 2, INIT_FROM=repr(trained_run["model_dir"]), BATCH_SIZE=4, **{
        "quark_jax.TrainConfig.init_transform": "'upcycle'",
        "quark_jax.TrainConfig.init_from": "%INIT_FROM",
        "quark_jax.TrainConfig.sample_prompts": "()", "quark_jax.TrainConfig.eval_batches": 0,
        "quark_jax.ModelConfig.num_experts": 4, "quark_jax.ModelConfig.experts_per_token": 2,
        "quark_jax.ModelConfig.moe_every": 2, "quark_jax.ModelConfig.expert_mlp_dim": 704,
        "quark_jax.ModelConfig.capacity_factor": 2.0,
    })
    qj.Trainer.from_gin(RUN_CONFIG, bindings).run()
    losses = [r["loss"] for r in read_metrics(tmp_path / "moe") if "loss" in r]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    # Step 1 starts where the dense run ended (its last losses), far below a fresh model's ln(4096) = 8.3.
    assert abs(losses[0] - np.mean(dense_losses[-5:])) < 0.5, (losses[0], dense_losses[-5:])
