"""Reward model: preference data and batches, the Bradley-Terry head on held-out pairs, scoring for PPO, resume."""

import json
import os

import jax
import numpy as np
import pytest

import quark_jax as qj
from conftest import REPO, copy_without_newest_checkpoint, read_metrics, tiny_overrides
from quark_jax import gin_utils
from quark_jax.data import preferences, tokenizer
from quark_jax.training.objectives import DPO, RewardModel
from quark_jax.training.objectives.reward import response_mask, reward_pooling, reward_scores

REWARD_CONFIG = f"{REPO}/configs/runs/reward.gin"
SHIPPED = preferences.split_path("data/preferences", "train")


def test_configs_build():
    for name, cls in (("reward", RewardModel), ("dpo", DPO)):
        gin_utils.parse([f"{REPO}/configs/runs/{name}.gin"], ["MODEL_DIR='/tmp/unused'", "INIT_FROM='/tmp/x'"])
        config = gin_utils.build_train_config()
        assert isinstance(config.objective, cls) and config.init_from == "/tmp/x"
    assert config.objective.beta == 0.1


def test_shipped_set_is_the_builder_output(tmp_path):
    counts = preferences.build(str(tmp_path))
    for split, count in counts.items():
        built = (tmp_path / f"{split}.jsonl").read_text()
        assert built == open(preferences.split_path("data/preferences", split)).read(), split
        assert count == len(built.splitlines())
    train = {r["prompt"] for r in preferences.read_pairs(str(tmp_path / "train.jsonl"))}
    validation = {r["prompt"] for r in preferences.read_pairs(str(tmp_path / "validation.jsonl"))}
    assert not train & validation and counts["validation"] > 150


def test_pair_arrays_and_errors(tmp_path):
    vocabulary = tokenizer.get_vocabulary()
    pairs = preferences.tokenized_pairs(SHIPPED, 32)
    record = preferences.read_pairs(SHIPPED)[0]
    for side, key in enumerate(("chosen", "rejected")):
        n = int(pairs["last_index"][0, side])
        tokens = pairs["input_tokens"][0, side]
        assert tokens[0] == 0 and tokens[n] == vocabulary.eos_id and not tokens[n + 1:].any()
        assert (pairs["targets"][0, side, :n] == tokens[1:n + 1]).all()
        assert pairs["segment_ids"][0, side].sum() == n + 1 and pairs["positions"][0, side, n] == n
        learned = [int(t) for t, w in zip(pairs["targets"][0, side], pairs["loss_weights"][0, side]) if w]
        assert learned[-1] == vocabulary.eos_id
        assert vocabulary.decode(learned[:-1]) == record[key] + "<|end|>"  # the response only
    # Mean pooling reads the reply: from the <|assistant|> marker to the EOS.
    mask = np.asarray(response_mask(pairs["input_tokens"][:1, 0], pairs["segment_ids"][:1, 0],
                                    tokenizer.special_tokens()["<|assistant|>"]))[0]
    assert vocabulary.decode([int(t) for t, m in zip(pairs["input_tokens"][0, 0], mask) if m]) == (
        "<|assistant|>" + record["chosen"] + "<|end|>")
    with pytest.raises(ValueError, match=r"pair\(s\) do not fit in 16 positions \(first: pair 1"):
        preferences.tokenized_pairs(SHIPPED, 16)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "b"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: .*missing or not a string: \['rejected'\]"):
        preferences.read_pairs(str(bad))
    with pytest.raises(FileNotFoundError, match="nothere.jsonl not found"):
        preferences.read_pairs(str(tmp_path / "nothere.jsonl"))


def test_batches_are_a_function_of_seed_and_position():
    pairs = preferences.tokenized_pairs(SHIPPED, 32)
    n = len(pairs["last_index"])
    stream = preferences.pair_batches(pairs, 16, seed=3)
    unbroken = [next(stream) for _ in range(n // 16 + 3)]  # crosses into the second epoch
    resumed = preferences.pair_batches(pairs, 16, seed=3, start_batch=len(unbroken) - 5)
    for expected in unbroken[-5:]:
        got = next(resumed)
        assert all((got[k] == expected[k]).all() for k in expected)
    first_epoch = np.concatenate([b["input_tokens"] for b in unbroken])[:n]
    assert len({row.tobytes() for row in first_epoch}) == len({row.tobytes() for row in pairs["input_tokens"]})
    other_seed = next(preferences.pair_batches(pairs, 16, seed=4))
    assert not (other_seed["input_tokens"] == unbroken[0]["input_tokens"]).all()
    one_pass = list(preferences.pair_batches(pairs, 16, seed=0, shuffle=False, repeat=False))
    assert sum(b["valid"].sum() for b in one_pass) == n and one_pass[-1]["valid"][-1] == (n % 16 == 0)


@pytest.fixture(scope="module")
def reward_run(trained_run, tmp_path_factory):
    """The tiny model trained as a reward model for 150 steps (shared with the PPO-scoring test)."""
    model_dir = tmp_path_factory.mktemp("rm")
    import logging

    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logging.getLogger().addHandler(handler)
    previous = logging.getLogger().level
    logging.getLogger().setLevel(logging.INFO)
    try:
        trainer = qj.Trainer.from_gin(REWARD_CONFIG, tiny_overrides(
            model_dir, 150, INIT_FROM=repr(trained_run["model_dir"]), BATCH_SIZE=16,
            TASK_FEATURE_LENGTHS="{'targets': 32}", CHECKPOINT_PERIOD=150, **{
                "quark_jax.OptimizerConfig.learning_rate": 1e-3, "quark_jax.OptimizerConfig.warmup_steps": 10,
                "quark_jax.TrainConfig.eval_every": 50, "quark_jax.TrainConfig.log_every": 10}))
        summary = trainer.run()
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(previous)
    return {"model_dir": model_dir, "trainer": trainer, "summary": summary, "log": "\n".join(records)}


def test_reward_model_learns_held_out_preferences(reward_run):
    model_dir, trainer = reward_run["model_dir"], reward_run["trainer"]
    assert "warm-started" in reward_run["log"] and "heads.reward" in reward_run["log"]  # the head keeps its init
    evals = [r for r in read_metrics(model_dir) if "val_accuracy" in r]
    train = [r for r in read_metrics(model_dir) if "accuracy" in r]
    # The PPO entry point: a pure scorer of (params with heads) on plain token arrays.
    params = trainer.params
    batch = next(preferences.pair_batches(preferences.tokenized_pairs(
        preferences.split_path("data/preferences", "validation"), 32), 64, seed=0, shuffle=False))
    flat = {k: v.reshape(-1, *v.shape[2:]) for k, v in batch.items() if k != "valid"}
    pooling = reward_pooling(str(model_dir))
    scores = jax.jit(reward_scores, static_argnums=(0, 6))(
        trainer.graphdef, params, flat["input_tokens"], flat["positions"], flat["segment_ids"], flat["last_index"],
        pooling).reshape(-1, 2)
    scored_accuracy = float(np.mean(scores[:, 0] > scores[:, 1]))
    print(json.dumps({"val_accuracy": [(r["step"], r["val_accuracy"]) for r in evals],
                      "val_margin": evals[-1]["val_margin"], "val_loss": evals[-1]["val_loss"],
                      "train_accuracy_first_last": [train[0]["accuracy"], train[-1]["accuracy"]],
                      "reward_scores_accuracy_64_pairs": scored_accuracy, "pooling": pooling}))
    assert evals[-1]["step"] == 150 and evals[-1]["val_accuracy"] >= 0.9
    assert evals[-1]["val_margin"] > 1.0 and evals[-1]["val_loss"] < 0.3
    assert scored_accuracy >= 0.85
    with open(os.path.join(model_dir, "objective.json")) as f:
        assert json.load(f)["kind"] == "reward_model"
    # The exported model has no head; qj.load gives the plain transformer.
    assert "heads" not in qj.load(str(model_dir)).params


@pytest.mark.parametrize("name, metric", [("reward", "accuracy"), ("dpo", "rewards/margin")])
def test_pair_objective_run_resumes_exactly(trained_run, tmp_path, name, metric):
    """A reward-model or DPO run that lost its newest checkpoint (killed after step 4) resumes — DPO reloading
    its frozen reference — and reproduces the unbroken run's steps 5..8 exactly."""
    config = f"{REPO}/configs/runs/{name}.gin"

    def bindings(model_dir):
        return tiny_overrides(model_dir, 8, INIT_FROM=repr(trained_run["model_dir"]), BATCH_SIZE=4,
                              TASK_FEATURE_LENGTHS="{'targets': 32}", CHECKPOINT_PERIOD=4, **{
            "quark_jax.TrainConfig.eval_batches": 0, "quark_jax.TrainConfig.sample_prompts": "()",
            "quark_jax.CheckpointConfig.async_save": False})

    unbroken, killed = tmp_path / "unbroken", tmp_path / "killed"
    qj.Trainer.from_gin(config, bindings(unbroken)).run()
    copy_without_newest_checkpoint(unbroken, killed)
    summary = qj.Trainer.from_gin(config, bindings(killed)).run()
    assert summary["start_step"] == 4
    logged = lambda d: {r["step"]: (r["loss"], r[metric]) for r in read_metrics(d) if "loss" in r}
    print(json.dumps({name: {"unbroken": logged(unbroken), "resumed": logged(killed)}}))
    assert logged(killed) == logged(unbroken) and len(logged(unbroken)) == 8
    assert any(value != 0.0 for _, value in logged(unbroken).values())  # the model moved off its start


def test_ppo_scores_rollouts_with_the_reward_model(reward_run, trained_run, tmp_path):
    """PPO with REWARD_MODEL_DIR: a short run scores its rollouts with the reward model, and PPO's conversion of
    rollout arrays to the reward model's input gives exactly the reward model's own scores."""
    trainer = qj.Trainer.from_gin(f"{REPO}/configs/runs/ppo.gin", tiny_overrides(
        tmp_path / "ppo_rm", 2, INIT_FROM=repr(trained_run["model_dir"]), BATCH_SIZE=8, CHECKPOINT_PERIOD=2,
        REWARD_MODEL_DIR=repr(str(reward_run["model_dir"])), **{
            "quark_jax.PPO.max_new_tokens": 8, "quark_jax.PPO.eval_prompts": 8,
            "quark_jax.TrainConfig.sample_prompts": "()", "quark_jax.TrainConfig.eval_batches": 0}))
    trainer.run()
    rewards = [r["reward/mean"] for r in read_metrics(tmp_path / "ppo_rm") if "reward/mean" in r]
    assert len(rewards) == 2 and all(np.isfinite(rewards))
    objective = trainer.config.objective
    batch = next(preferences.pair_batches(preferences.tokenized_pairs(
        preferences.split_path("data/preferences", "validation"), 32), 8, seed=0, shuffle=False))
    flat = {k: v.reshape(-1, *v.shape[2:]) for k, v in batch.items() if k != "valid"}
    rm_params = trainer.training.frozen["reward_model"]
    expected = jax.jit(reward_scores, static_argnums=(0, 6))(
        objective._reward_model[1], rm_params, flat["input_tokens"], flat["positions"], flat["segment_ids"],
        flat["last_index"], reward_pooling(str(reward_run["model_dir"])))
    # Rollout layout: the sequence without BOS (prompt + completion + EOS), segment 1 on real tokens.
    n, T = flat["input_tokens"].shape
    tokens, segments = np.zeros((n, T), np.int32), np.zeros((n, T), np.int32)
    for row in range(n):
        last = int(flat["last_index"][row])
        tokens[row, :last] = flat["input_tokens"][row, 1:last + 1]
        segments[row, :last] = 1
    got = objective._score_with_reward_model(rm_params, tokens, segments)
    np.testing.assert_allclose(got, np.asarray(expected), rtol=1e-4, atol=1e-4)
    assert float(np.mean(got.reshape(-1, 2)[:, 0] > got.reshape(-1, 2)[:, 1])) >= 0.85
