"""Crash safety: a run killed with SIGKILL and re-run reproduces the unbroken run's losses exactly;
an unreadable latest checkpoint is skipped (with a warning) in favour of the previous one."""

import logging
import os
import shutil
import signal
import subprocess
import time

import pytest

from conftest import REPO, RUN_CONFIG, committed_steps, quark_command, run_quark, tiny_overrides, train_args, train_losses
from quark_jax.training.trainer import Trainer

STEPS = 16


def bindings(model_dir):
    return tiny_overrides(model_dir, STEPS, CHECKPOINT_PERIOD=4, **{
        "quark_jax.TrainConfig.eval_batches": 0, "quark_jax.TrainConfig.sample_prompts": "()",
        "quark_jax.CheckpointConfig.max_to_keep": 3,
    })


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    unbroken, killed = root / "unbroken", root / "killed"
    result = run_quark(*train_args(bindings(unbroken)))
    assert result.returncode == 0, result.stderr[-3000:]

    process = subprocess.Popen(quark_command(*train_args(bindings(killed))), cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None and not any(s >= 8 for s in committed_steps(killed)):
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = max(train_losses(killed))
    assert killed_at < STEPS
    resumed = run_quark(*train_args(bindings(killed)))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return {"unbroken": unbroken, "killed": killed, "killed_at": killed_at, "resume_log": resumed.stderr}


def test_killed_run_resumes_with_exactly_the_same_losses(runs):
    reference, resumed = train_losses(runs["unbroken"]), train_losses(runs["killed"])
    assert sorted(reference) == sorted(resumed) == list(range(1, STEPS + 1))
    assert resumed == reference  # bit-for-bit, from the resume point on (and before it)
    assert "resumed from" in runs["resume_log"]


def test_sigterm_checkpoints_the_current_step_and_resumes_exactly(runs, tmp_path):
    model_dir = tmp_path / "preempted"
    process = subprocess.Popen(quark_command(*train_args(bindings(model_dir))), cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None and max(_logged(model_dir), default=0) < 5:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 143, stderr[-2000:]
    stopped_at = max(committed_steps(model_dir))
    assert 5 <= stopped_at < STEPS and "stopped by SIGTERM" in stderr
    resumed = run_quark(*train_args(bindings(model_dir)))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert train_losses(model_dir) == train_losses(runs["unbroken"])


def _logged(model_dir):
    try:
        return list(train_losses(model_dir))
    except (FileNotFoundError, ValueError):
        return []


def test_a_different_model_in_an_existing_run_dir_is_refused(runs):
    result = run_quark(*train_args(bindings(runs["unbroken"]) + ["quark_jax.ModelConfig.mlp_dim=512"]))
    assert result.returncode == 2
    assert "holds checkpoints of a different model" in result.stderr and "mlp_dim: 704 there, 512 now" in result.stderr


def test_unreadable_latest_checkpoint_falls_back_to_the_previous(runs, tmp_path, caplog):
    model_dir = tmp_path / "corrupt"
    shutil.copytree(runs["unbroken"], model_dir)
    assert committed_steps(model_dir) == [8, 12, 16]
    # Damage every data file of the newest checkpoint's parameters (as a disk or copy failure would).
    for root, _, files in os.walk(model_dir / "checkpoints" / "16" / "params"):
        for name in files:
            if "manifest" in name or os.path.basename(root) == "d":
                with open(os.path.join(root, name), "r+b") as f:
                    f.truncate(max(os.path.getsize(f.name) // 2, 1))
    # A save interrupted mid-write leaves a temporary directory; it must be ignored too.
    shutil.copytree(model_dir / "checkpoints" / "12", model_dir / "checkpoints" / "20.orbax-checkpoint-tmp-1")
    with caplog.at_level(logging.WARNING):
        summary = Trainer.from_gin(RUN_CONFIG, bindings(model_dir) + [f"MODEL_DIR='{model_dir}'"]).run()
    assert summary["start_step"] == 12
    assert "step 16" in caplog.text and "unreadable" in caplog.text
    assert "half-written" in caplog.text
    losses, reference = train_losses(model_dir), train_losses(runs["unbroken"])
    assert {s: losses[s] for s in range(13, 17)} == {s: reference[s] for s in range(13, 17)}
