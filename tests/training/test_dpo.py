"""DPO: the loss and implicit rewards, and a run through `quark train` whose margins rise and whose policy
prefers the chosen replies of held-out pairs more often than its frozen reference does."""

import json
import math
import os

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, read_metrics, run_quark, tiny_overrides
from quark_jax.training.objectives.dpo import dpo_terms


def test_dpo_terms():
    policy = jnp.array([[-10.0, -12.0], [-8.0, -5.0]])
    reference = jnp.array([[-11.0, -11.0], [-8.0, -8.0]])
    terms = dpo_terms(policy, reference, beta=0.5)
    np.testing.assert_allclose(terms["rewards/chosen"], [0.5, 0.0])
    np.testing.assert_allclose(terms["rewards/rejected"], [-0.5, 1.5])
    np.testing.assert_allclose(terms["rewards/margin"], [1.0, -1.5])
    np.testing.assert_allclose(terms["loss"], [math.log1p(math.exp(-1.0)), math.log1p(math.exp(1.5))], rtol=1e-6)
    np.testing.assert_array_equal(terms["rewards/accuracy"], [1.0, 0.0])


def test_dpo_run_raises_margins_and_beats_the_reference(trained_run, tmp_path):
    model_dir = tmp_path / "dpo"
    bindings = tiny_overrides(model_dir, 90, INIT_FROM=repr(trained_run["model_dir"]), BATCH_SIZE=16,
                              TASK_FEATURE_LENGTHS="{'targets': 32}", CHECKPOINT_PERIOD=90, BETA=0.1, **{
        "quark_jax.OptimizerConfig.learning_rate": 1e-3, "quark_jax.OptimizerConfig.warmup_steps": 10,
        "quark_jax.TrainConfig.eval_every": 30, "quark_jax.TrainConfig.log_every": 10,
    })
    result = run_quark("train", f"--gin_file={REPO}/configs/runs/dpo.gin", *[f"--gin.{b}" for b in bindings])
    assert result.returncode == 0, result.stderr[-3000:]
    records = read_metrics(model_dir)
    train = [r for r in records if "rewards/margin" in r]
    evals = [r for r in records if "val_policy_accuracy" in r]
    early = float(np.mean([r["rewards/margin"] for r in train[:2]]))
    late = float(np.mean([r["rewards/margin"] for r in train[-2:]]))
    last = evals[-1]
    print(json.dumps({"train_margin_steps_10_20": early, "train_margin_steps_80_90": late,
                      "val_margin": [(r["step"], r["val_rewards/margin"]) for r in evals],
                      "val_policy_accuracy": last["val_policy_accuracy"],
                      "val_reference_accuracy": last["val_reference_accuracy"],
                      "val_rewards_accuracy": last["val_rewards/accuracy"], "val_loss": last["val_loss"]}))
    assert [r["step"] for r in evals] == [0, 30, 60, 90]
    assert late > early + 1.0 and late > 1.0
    # Before the first update the policy is its reference: every implicit reward, hence the margin, is 0.
    assert evals[0]["val_rewards/margin"] == pytest.approx(0.0, abs=1e-5)
    assert evals[0]["val_policy_accuracy"] == evals[0]["val_reference_accuracy"]
    assert evals[-1]["val_rewards/margin"] > evals[1]["val_rewards/margin"] > 0
    assert last["val_policy_accuracy"] > last["val_reference_accuracy"] + 0.1
    assert last["val_reference_accuracy"] == evals[0]["val_reference_accuracy"]  # the reference stays frozen
    with open(os.path.join(model_dir, "objective.json")) as f:
        info = json.load(f)
    assert info["kind"] == "dpo" and info["beta"] == 0.1 and info["reference_dir"] == trained_run["model_dir"]

