"""Distillation: the distilled student beats the same student trained without the teacher; chunked vocabulary
projections equal the direct computation; a killed distillation run resumes with exactly the same losses."""

import json
import signal
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import quark_jax as qj
from conftest import (REPO, RUN_CONFIG, assert_greedy_completion, quark_command, run_quark, tiny_overrides,
                      train_losses)
from quark_jax.training.objectives.distill import distill_sums

DISTILL_CONFIG = f"{REPO}/configs/runs/distill.gin"
STUDENT_STEPS = 40


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """The tiny model trained for 150 steps (validation loss ~5.7; the 40-step session run is ~6.7)."""
    model_dir = tmp_path_factory.mktemp("teacher")
    summary = qj.Trainer.from_gin(RUN_CONFIG, tiny_overrides(model_dir, 150, **{
        "CHECKPOINT_PERIOD": 150, "quark_jax.TrainConfig.log_every": 50, "quark_jax.TrainConfig.sample_prompts": "()",
    })).run()
    return {"model_dir": str(model_dir), "val_loss": summary["val_loss"]}


def student_bindings(model_dir, teacher_dir, steps, **extra):
    return tiny_overrides(model_dir, steps, TEACHER_DIR=repr(teacher_dir), **{
        "quark_jax.TrainConfig.sample_prompts": "()", "CHECKPOINT_PERIOD": steps, **extra})


def test_chunked_distillation_loss_equals_the_direct_computation():
    rng = np.random.default_rng(0)
    B, T, D, V, tau = 2, 8, 4, 11, 2.0
    hs, ht = (jnp.asarray(rng.normal(size=(B, T, D)), jnp.float32) for _ in range(2))
    ws, wt = (jnp.asarray(rng.normal(size=(D, V)), jnp.float32) for _ in range(2))
    targets = jnp.asarray(rng.integers(0, V, (B, T)))
    weights = jnp.asarray(rng.integers(0, 2, (B, T)), jnp.float32)
    student, teacher = (lambda h: h @ ws), (lambda h: h @ wt)
    chunked = distill_sums(student, teacher, hs, ht, targets, weights, tau, chunk=2)
    p_t = jax.nn.softmax(teacher(ht) / tau)
    kl = jnp.sum(p_t * (jnp.log(p_t) - jax.nn.log_softmax(student(hs) / tau)), -1)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(student(hs)), targets[..., None], -1)[..., 0]
    np.testing.assert_allclose(chunked["kl_sum"], jnp.sum(kl * weights), rtol=1e-5)
    np.testing.assert_allclose(chunked["nll_sum"], jnp.sum(nll * weights), rtol=1e-5)
    # The gradient through the rematerialised chunks equals the direct one too.
    direct_grad = jax.grad(lambda h: jnp.sum(jnp.sum(p_t * -jax.nn.log_softmax((h @ ws) / tau), -1) * weights))(hs)
    chunk_grad = jax.grad(lambda h: distill_sums(lambda x: x @ ws, teacher, h, ht, targets, weights, tau, 4)["kl_sum"])(hs)
    np.testing.assert_allclose(chunk_grad, direct_grad, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="vocab_chunk=3 must divide the sequence length 8"):
        distill_sums(student, teacher, hs, ht, targets, weights, tau, chunk=3)


def test_distilled_student_beats_the_student_trained_without_the_teacher(teacher, tmp_path):
    results, trainers = {}, {}
    for name, alpha in (("distilled", 0.9), ("no_teacher", 0.0)):
        trainers[name] = qj.Trainer.from_gin(DISTILL_CONFIG, student_bindings(
            tmp_path / name, teacher["model_dir"], STUDENT_STEPS, ALPHA=alpha, TEMPERATURE=1.0))
        results[name] = trainers[name].run()["val_loss"]
    print(json.dumps({"teacher_val_loss": teacher["val_loss"], "student_val_loss": results,
                      "student_steps": STUDENT_STEPS}))
    assert results["distilled"] < results["no_teacher"] - 0.1
    model = qj.load(str(tmp_path / "distilled"))  # the student loads like any run (its own, smaller config)
    assert model.config.d_model == 128 and model.step == STUDENT_STEPS
    trained = trainers["distilled"].params
    assert jax.tree.structure(model.params) == jax.tree.structure(trained)
    for loaded, final in zip(jax.tree.leaves(model.params), jax.tree.leaves(trained)):
        np.testing.assert_array_equal(np.asarray(loaded), np.asarray(final))
    assert_greedy_completion(model, "def ", model.complete(["def "], max_new_tokens=4)[0], 4)


def test_killed_distillation_run_resumes_with_exactly_the_same_losses(teacher, tmp_path):
    steps = 12
    bindings = student_bindings(tmp_path / "unbroken", teacher["model_dir"], steps, CHECKPOINT_PERIOD=4, **{
        "quark_jax.TrainConfig.eval_batches": 0})
    qj.Trainer.from_gin(DISTILL_CONFIG, bindings).run()
    killed = tmp_path / "killed"
    args = ["train", f"--gin_file={DISTILL_CONFIG}",
            *[f"--gin.{b}" for b in bindings + [f"MODEL_DIR={str(killed)!r}"]]]
    process = subprocess.Popen(quark_command(*args), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None and not (killed / "checkpoints" / "4" / "commit_success.txt").exists():
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert max(train_losses(killed)) < steps
    resumed = run_quark(*args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    assert train_losses(killed) == train_losses(tmp_path / "unbroken")
