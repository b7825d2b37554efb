"""A whole tiny run through ``qj.Trainer``: outputs, learning, resume-by-rerun, load, generate, eval, CLI."""

import glob
import json
import math
import os
import shutil

import jax
import numpy as np
import pytest

import quark_jax as qj
from conftest import RUN_CONFIG, read_metrics, run_quark, tiny_overrides
from quark_jax.training.trainer import NonFiniteLossError, Trainer

LOGGED = {"step", "loss", "accuracy", "grad_norm", "learning_rate", "tokens_per_s", "mfu"}


@pytest.fixture(scope="module")
def resumed(trained_run, tmp_path_factory):
    """A Trainer re-run on a copy of the finished shared run: it restores step 40 and trains nothing, which gives
    the trained parameters and the run's configuration as objects (the shared run may come from another worker)."""
    run = tmp_path_factory.mktemp("resumed") / "run"
    shutil.copytree(trained_run["model_dir"], run)
    trainer = qj.Trainer.from_gin(RUN_CONFIG, tiny_overrides(run, 40))
    return {"trainer": trainer, "summary": trainer.run(), "model_dir": str(run)}


def test_run_writes_metrics_config_checkpoints_and_plots(trained_run, resumed):
    model_dir = trained_run["model_dir"]
    records = read_metrics(model_dir)
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == list(range(1, 41))
    assert all(LOGGED <= set(r) for r in train)
    assert all(r["tokens_per_s"] > 0 for r in train)
    # MFU = training FLOPs per token × tokens/s / (peak × devices), with the FLOPs counted here independently:
    # 6 × every weight that multiplies a token's activations (all arrays but the RMSNorm scales; the tied
    # embedding counts once, as the output projection) + 6·L·T·N·H for causal attention scores and values.
    model = resumed["trainer"].config.model
    params = resumed["trainer"].params
    matmul_weights = sum(int(np.prod(leaf.shape)) for path, leaf in jax.tree_util.tree_leaves_with_path(params)
                         if "scale" not in jax.tree_util.keystr(path))
    assert model.tie_embeddings and "lm_head" not in params
    seq_len = 128  # conftest.tiny_overrides
    flops_per_token = 6 * matmul_weights + 6 * model.num_layers * seq_len * model.num_heads * model.head_dim
    peak = 1e11  # conftest.tiny_overrides binds TrainConfig.peak_flops_per_s
    for r in train:
        assert r["mfu"] == pytest.approx(flops_per_token * r["tokens_per_s"] / (peak * jax.device_count()), rel=1e-6)
    evals = [r for r in records if "val_loss" in r]
    # A fresh run is validated before its first step too, so the loss curve starts at the initial model.
    assert [r["step"] for r in evals] == [0, 20, 40]
    assert evals[2]["val_loss"] < evals[1]["val_loss"] < evals[0]["val_loss"]
    with open(os.path.join(model_dir, "run.json")) as f:
        assert json.load(f)["trained_context"] == 128  # what qj.load refuses to go beyond
    assert os.path.getsize(os.path.join(model_dir, "loss_curve.png")) > 1000
    assert glob.glob(os.path.join(model_dir, "tensorboard", "events.out.tfevents.*"))
    with open(os.path.join(model_dir, "config.gin")) as f:
        text = f.read()
    assert "TrainConfig.steps = %TRAIN_STEPS" in text and "TRAIN_STEPS = 40" in text
    assert sorted(os.listdir(os.path.join(model_dir, "checkpoints"))) == ["20", "40"]
    with open(os.path.join(model_dir, "samples.txt")) as f:
        assert "--- step 40" in f.read()


def test_loss_falls(trained_run):
    losses = [r["loss"] for r in read_metrics(trained_run["model_dir"]) if "loss" in r]
    assert losses[0] > 8.0  # ~ln(4096) at initialisation
    assert np.mean(losses[-5:]) < losses[0] - 1.5
    summary = trained_run["summary"]
    assert math.isfinite(summary["val_perplexity"]) and summary["val_perplexity"] < 1000


def test_rerunning_a_finished_run_resumes_and_does_nothing(trained_run, resumed):
    summary = resumed["summary"]
    assert summary["start_step"] == 40 and summary["final_step"] == 40
    assert "params" not in summary  # figures only: printing a summary in a notebook stays short
    # Nothing trained, nothing logged.
    assert read_metrics(resumed["model_dir"]) == read_metrics(trained_run["model_dir"])
    assert sorted(os.listdir(os.path.join(resumed["model_dir"], "checkpoints"))) == ["20", "40"]
    restored = qj.load(trained_run["model_dir"])
    for a, b in zip(jax.tree.leaves(resumed["trainer"].params), jax.tree.leaves(restored.params)):
        np.testing.assert_array_equal(a, b)


def test_load_and_generate(trained_run, resumed):
    model = qj.load(trained_run["model_dir"])
    assert model.step == 40 and model.config == resumed["trainer"].config.model
    assert model.tokenizer.vocab_size == 4096
    prompts = ["def fib(n):", "import"]
    greedy = model.generate(prompts, max_new_tokens=8)
    assert len(greedy) == 2 and greedy == model.generate(prompts, max_new_tokens=8)
    # Batching with padding gives what each prompt gets alone.
    assert greedy[0] == model.generate(prompts[0], max_new_tokens=8)[0]
    assert greedy[1] == model.generate([prompts[1]], max_new_tokens=8)[0]
    sampled = model.generate(prompts, max_new_tokens=8, temperature=1.0, top_k=50, top_p=0.9, seed=3)
    assert sampled == model.generate(prompts, max_new_tokens=8, temperature=1.0, top_k=50, top_p=0.9, seed=3)


def test_cli_generate_and_eval(trained_run):
    model_dir = trained_run["model_dir"]
    result = run_quark("generate", f"--model_dir={model_dir}", "--prompt", "def fib(n):", "--max_new_tokens", "8")
    assert result.returncode == 0, result.stderr
    expected = qj.load(model_dir).generate(["def fib(n):"], max_new_tokens=8)[0]
    assert result.stdout.strip() == ("def fib(n):" + expected).strip()

    result = run_quark("eval", f"--model_dir={model_dir}", "--sequence_length=128", "--batches=2")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["step"] == 40 and report["batches"] == 2
    # The same two validation batches the trainer evaluated at its last step (eval_batches=2, no shuffling).
    assert report["loss"] == pytest.approx(trained_run["summary"]["val_loss"], rel=1e-5)

    missing = run_quark("generate", "--model_dir=/nonexistent/run")
    assert missing.returncode == 2 and "/nonexistent/run: no such directory" in missing.stderr, missing.stderr


def test_nonfinite_loss_stops_naming_the_step(tmp_path):
    overrides = tiny_overrides(tmp_path / "nan", 3, **{
        "quark_jax.OptimizerConfig.learning_rate": 1e30, "quark_jax.OptimizerConfig.warmup_steps": 0,
        "quark_jax.TrainConfig.eval_batches": 0, "quark_jax.TrainConfig.sample_prompts": "()",
    })
    with pytest.raises(NonFiniteLossError, match=r"at step 2\b"):
        Trainer.from_gin(RUN_CONFIG, overrides).run()
    summary = Trainer.from_gin(
        RUN_CONFIG, [*overrides, f"MODEL_DIR='{tmp_path / 'skip'}'", "quark_jax.TrainConfig.on_nonfinite='skip'"]
    ).run()
    records = [r for r in read_metrics(tmp_path / "skip") if "loss" in r]
    assert [r.get("skipped", 0.0) for r in records] == [0.0, 1.0, 1.0]
    assert summary["final_step"] == 3


def test_a_failed_attempt_with_another_model_writes_nothing(trained_run, resumed, tmp_path):
    """With model_config.json gone, a command with another model is refused from the checkpoint's own shapes,
    before anything in the run directory is written; the right command still resumes afterwards."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run["model_dir"], run)
    os.remove(run / "model_config.json")
    before = {p: (run / p).read_bytes() for p in ("config.gin", "run.json", "objective.json")}
    wrong = run_quark("train", f"--gin_file={RUN_CONFIG}",
                      *[f"--gin.{b}" for b in tiny_overrides(run, 41, **{"quark_jax.ModelConfig.num_layers": 2})])
    assert wrong.returncode == 2, wrong.stderr[-2000:]
    assert "holds checkpoints (step 40) of a different model" in wrong.stderr and "blocks." in wrong.stderr
    assert "Traceback" not in wrong.stderr
    assert not (run / "model_config.json").exists()
    assert {p: (run / p).read_bytes() for p in before} == before
    assert sorted(os.listdir(run / "checkpoints")) == ["20", "40"] and not (run / "checkpoints_unreadable").exists()
    trainer = Trainer.from_gin(RUN_CONFIG, tiny_overrides(run, 40))
    assert trainer.run()["start_step"] == 40
    layers = json.loads((run / "model_config.json").read_text())["num_layers"]
    assert layers == resumed["trainer"].config.model.num_layers
