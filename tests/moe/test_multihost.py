"""Multi-host: two local processes with four CPU devices each (launched by launch/local.py, joined by
``quark train``'s distributed start-up) train the MoE model as one 8-device job, each reading its own data
shard, and write a checkpoint together; the losses equal a single process's on the same global batches. A
single process then restores that checkpoint onto a different mesh and continues exactly as the unbroken run.
"""

import os
import subprocess
import sys

import pytest

from conftest import REPO, RUN_CONFIG, tiny_overrides, train_losses

HELPER = os.path.join(os.path.dirname(__file__), "reference_run.py")
LAUNCHER = os.path.join(REPO, "launch", "local.py")
# A narrow moe_tiny (the 4096-token vocabulary stays: it is the tokenizer's); the schedule is pinned so that
# runs of different lengths share the same learning rates.
MODEL = {"quark_jax.ModelConfig.d_model": 64, "quark_jax.ModelConfig.head_dim": 16,
         "quark_jax.ModelConfig.mlp_dim": 128, "quark_jax.ModelConfig.expert_mlp_dim": 64,
         "quark_jax.OptimizerConfig.decay_steps": 100, "TASK_FEATURE_LENGTHS": "{'targets': 64}",
         "quark_jax.TrainConfig.eval_batches": 0, "quark_jax.TrainConfig.sample_prompts": "()"}
MESH_A, MESH_B = "data=2,fsdp=2,expert=2", "fsdp=4,tensor=2"


def bindings(model_dir, steps, mesh):
    return tiny_overrides(model_dir, steps, MESH_SHAPE=repr(mesh), **MODEL)


def reference(model_dir, steps, mesh):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, HELPER, "2", "--", *bindings(model_dir, steps, mesh)], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("multihost")
    reference(root / "reference", 4, MESH_A)
    job = subprocess.run(
        [sys.executable, LAUNCHER, "--num_processes=2", "--devices_per_process=4", "--",
         "quark", "train", f"--gin_file={RUN_CONFIG}", "--gin_file=configs/models/moe_tiny.gin",
         *[f"--gin.{b}" for b in bindings(root / "job", 2, MESH_A)]],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert job.returncode == 0, job.stdout[-4000:]
    job_losses = train_losses(root / "job")
    reference(root / "job", 4, MESH_B)  # resume the job's checkpoint on another mesh, in one process
    return {"reference": train_losses(root / "reference"), "job": job_losses,
            "resumed": train_losses(root / "job"), "log": job.stdout, "root": root}


def test_two_process_job_matches_single_process(runs):
    assert sorted(runs["job"]) == [1, 2]
    for step, loss in runs["job"].items():
        assert abs(loss - runs["reference"][step]) / runs["reference"][step] < 1e-4, (step, loss, runs["reference"])
    assert "process 1 of 2" in runs["log"] and "8 global devices" in runs["log"]


def test_checkpoint_written_by_both_hosts_restores_on_another_mesh(runs):
    assert os.path.isdir(runs["root"] / "job" / "checkpoints" / "2")
    assert sorted(runs["resumed"]) == [1, 2, 3, 4]
    for step in (3, 4):
        a, b = runs["resumed"][step], runs["reference"][step]
        assert abs(a - b) / b < 1e-4, (step, a, b)


def test_only_process_zero_writes_metrics(runs):
    lines = (runs["root"] / "job" / "metrics.jsonl").read_text().splitlines()
    steps = [l for l in lines if '"loss"' in l]
    assert len(steps) == 4  # steps 1-2 by the job (once, not twice), 3-4 by the resumed run
