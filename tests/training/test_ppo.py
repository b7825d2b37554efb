"""RLHF with PPO / GRPO as a gin run: the programmatic reward rises, KL to the reference stays bounded, the run
resumes exactly, and `qj.load` gives the policy."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

import quark_jax as qj
from conftest import REPO, assert_greedy_completion, copy_without_newest_checkpoint, read_metrics, tiny_overrides
from quark_jax.training.objectives import ppo

PPO_CONFIG = f"{REPO}/configs/runs/ppo.gin"
STEPS = 12

# Toy task for the tiny code model: short code prompts, reward = fraction of digits in the completion.
TOY = {
    "quark_jax.PPO.prompts": "('def ', 'import ', 'class ', 'x = ', 'return ', 'if ', 'for i in ', 'print(')",
    "quark_jax.PPO.prompt_filter": None,
    "quark_jax.PPO.reward_fn": "'digit_fraction'",
    "quark_jax.PPO.max_new_tokens": 16,
    "quark_jax.PPO.max_prompt_tokens": 8,
    "quark_jax.PPO.eval_prompts": 8,
    "quark_jax.OptimizerConfig.learning_rate": 1e-3,
    "quark_jax.OptimizerConfig.warmup_steps": 4,
    "quark_jax.TrainConfig.sample_prompts": "()",
    "quark_jax.TrainConfig.eval_batches": 1,
    "KL_COEF": 0.05,
}


def overrides(trained_run, model_dir, steps, **extra):
    return tiny_overrides(model_dir, steps, INIT_FROM=repr(trained_run["model_dir"]),
                          **{**TOY, "CHECKPOINT_PERIOD": 6, **extra})


def test_gae_and_losses_match_a_direct_computation():
    rewards = jnp.array([[0.0, 0.5, -0.1, 1.0, 0.0]])
    values = jnp.array([[9.0, 0.2, 0.4, 0.1, 9.0]])
    mask = jnp.array([[0.0, 1.0, 1.0, 1.0, 0.0]])
    gamma, lam = 0.9, 0.8
    adv, ret = ppo.gae(rewards, values, mask, gamma, lam)
    # by hand over the three completion positions (the episode ends after the last one)
    d3 = 1.0 - 0.1
    d2 = -0.1 + gamma * 0.1 - 0.4
    d1 = 0.5 + gamma * 0.4 - 0.2
    a3, a2 = d3, d2 + gamma * lam * d3
    a1 = d1 + gamma * lam * a2
    np.testing.assert_allclose(adv[0], [0.0, a1, a2, a3, 0.0], rtol=1e-6)
    np.testing.assert_allclose(ret[0, 1:4], np.array([a1, a2, a3]) + np.array([0.2, 0.4, 0.1]), rtol=1e-6)
    r = ppo.token_rewards(jnp.array([[0.0, -1.0, -2.0, -1.0, 0.0]]), jnp.array([[0.0, -1.5, -2.0, -0.5, 0.0]]),
                          jnp.array([2.0]), mask, kl_coef=0.1)
    np.testing.assert_allclose(r[0], [0.0, -0.05, 0.0, 0.05 + 2.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(ppo.group_advantages(jnp.array([1.0, 0.0, 3.0, 3.0]), 2), [1, -1, 0, 0], atol=1e-4)
    loss, stats = ppo.clipped_policy_loss(jnp.log(jnp.array([[1.5, 0.5]])), jnp.zeros((1, 2)),
                                          jnp.array([[1.0, 1.0]]), jnp.ones((1, 2)), clip_eps=0.2)
    np.testing.assert_allclose(loss, -(1.2 + 0.5) / 2, rtol=1e-6)  # gains are clipped, losses are not
    assert float(stats["clip_fraction"]) == 1.0


def test_ppo_raises_the_reward_with_bounded_kl_and_resumes_exactly(trained_run, tmp_path):
    model_dir = tmp_path / "ppo"
    trainer = qj.Trainer.from_gin(PPO_CONFIG, overrides(trained_run, model_dir, STEPS, BATCH_SIZE=32))
    summary = trainer.run()
    rows = [r for r in read_metrics(model_dir) if "reward/mean" in r]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    rewards, kls = [r["reward/mean"] for r in rows], [r["kl"] for r in rows]
    early, late = float(np.mean(rewards[:3])), float(np.mean(rewards[-3:]))
    figures = {"ppo_reward_early": early, "ppo_reward_late": late, "ppo_kl_max": max(kls),
               "ppo_kl_last": kls[-1], "eval_reward": summary.get("eval_reward"),
               "clip_fraction_last": rows[-1]["clip_fraction"], "value_loss_last": rows[-1]["value_loss"]}
    print(json.dumps(figures))
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-4)  # the first rollout is the reference's own
    assert late > early + 0.1, figures
    assert max(kls) < 20.0, figures  # nats per 16-token completion
    assert all(np.isfinite(r["loss"]) and np.isfinite(r["value_loss"]) for r in rows)
    with open(model_dir / "objective.json") as f:
        assert json.load(f)["kind"] == "ppo"

    # A rollout is a deterministic function of (seed, step, parameters): the step-7 batch rebuilt from the
    # step-6 checkpoint scores exactly what the run logged ...
    objective = trainer.objective
    batches = objective.batches("train", 6, shuffle=True)
    first = next(batches)
    from quark_jax.training.checkpoint import Checkpointer

    checkpointer = Checkpointer(str(model_dir), async_save=False)
    try:
        _, params6, _ = checkpointer.restore_params(trainer.training.abstract_state.params, 6)
    finally:
        checkpointer.close()
    from quark_jax import sharding as sh

    with sh.activate(trainer.mesh):
        batch = objective.prepare(params6, trainer.training.frozen, first, 7)
        again = objective.prepare(params6, trainer.training.frozen, first, 7)
    assert all(np.array_equal(batch[k], again[k]) for k in batch)
    assert float(np.mean(batch["scores"])) == pytest.approx(rows[6]["reward/mean"], abs=1e-6)

    # ... and a run killed after step 6 resumes to the same step-7/8 metrics.
    resumed = tmp_path / "resumed"
    assert copy_without_newest_checkpoint(model_dir, resumed) == 6
    qj.Trainer.from_gin(PPO_CONFIG, overrides(trained_run, resumed, 8, BATCH_SIZE=32)).run()
    again_rows = {r["step"]: r for r in read_metrics(resumed) if "reward/mean" in r}
    for step in (7, 8):
        for key in ("reward/mean", "kl", "loss"):
            assert again_rows[step][key] == pytest.approx(rows[step - 1][key], rel=1e-5, abs=1e-6), (step, key)

    # qj.load gives the policy (value head dropped) and generates greedily.
    model = qj.load(str(model_dir))
    assert model.step == STEPS and "heads" not in model.params
    for prompt, completion in zip(["def ", "x = "], model.complete(["def ", "x = "], max_new_tokens=8)):
        assert_greedy_completion(model, prompt, completion, 8)


def test_grpo_raises_the_reward(trained_run, tmp_path):
    model_dir = tmp_path / "grpo"
    qj.Trainer.from_gin(PPO_CONFIG, overrides(trained_run, model_dir, 10, BATCH_SIZE=8, GROUP_SIZE=4,
                                              ESTIMATOR="'grpo'")).run()
    rows = [r for r in read_metrics(model_dir) if "reward/mean" in r]
    rewards, kls = [r["reward/mean"] for r in rows], [r["kl"] for r in rows]
    early, late = float(np.mean(rewards[:3])), float(np.mean(rewards[-3:]))
    print(json.dumps({"grpo_reward_early": early, "grpo_reward_late": late, "grpo_kl_max": max(kls)}))
    assert late > early + 0.1
    assert max(kls) < 30.0
    assert "value_loss" not in rows[-1] and "kl_loss" in rows[-1]
