"""Multi-host: two local processes with four CPU devices each (joined by ``quark train``'s distributed start-up,
with the environment that launch/local.py sets) train the MoE model as one 8-device job, each reading its own
data shard; the losses equal a single process's on the same global batches.

The job is preempted the way a scheduler does it: SIGTERM reaches *one* host only. Both hosts stop at the same
step, write that step's checkpoint together and exit 143; the same command re-run by both hosts restores it and
continues as the unbroken run. A single process then restores the checkpoint onto a different mesh and
continues exactly as well.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import REPO, RUN_CONFIG, committed_steps, quark_command, tiny_overrides, train_losses

HELPER = os.path.join(os.path.dirname(__file__), "reference_run.py")
# A narrow moe_tiny (the 4096-token vocabulary stays: it is the tokenizer's); the schedule is pinned so that
# runs of different lengths share the same learning rates.
MODEL = {"quark_jax.ModelConfig.d_model": 64, "quark_jax.ModelConfig.head_dim": 16,
         "quark_jax.ModelConfig.mlp_dim": 128, "quark_jax.ModelConfig.expert_mlp_dim": 64,
         "quark_jax.OptimizerConfig.decay_steps": 100, "TASK_FEATURE_LENGTHS": "{'targets': 64}",
         "quark_jax.TrainConfig.eval_batches": 0, "quark_jax.TrainConfig.sample_prompts": "()"}
MESH_A, MESH_B = "data=2,fsdp=2,expert=2", "fsdp=4,tensor=2"
JOB_STEPS, STEPS = 16, 18  # the job's TRAIN_STEPS (preempted well before: ~step 4), then the single process's
SIGNALLED = 1  # the host that receives SIGTERM: not the coordinator, not the one that writes metrics


def bindings(model_dir, steps, mesh):
    return tiny_overrides(model_dir, steps, MESH_SHAPE=repr(mesh), **MODEL)


def reference(model_dir, steps, mesh):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, HELPER, "2", "--", *bindings(model_dir, steps, mesh)], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def start_job(model_dir, log_dir, name):
    """The two processes of the job, as launch/local.py starts them (its environment), output to files."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = quark_command("train", f"--gin_file={RUN_CONFIG}", "--gin_file=configs/models/moe_tiny.gin",
                            *[f"--gin.{b}" for b in bindings(model_dir, JOB_STEPS, MESH_A)])
    processes = []
    for i in range(2):
        env = {**os.environ, "QUARK_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "QUARK_NUM_PROCESSES": "2",
               "QUARK_PROCESS_ID": str(i), "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
               "JAX_PLATFORMS": "cpu"}
        with open(log_dir / f"{name}.{i}.log", "w") as out:
            processes.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT))
    return processes


def finish(processes, log_dir, name):
    codes = [p.wait(timeout=300) for p in processes]
    return codes, [(log_dir / f"{name}.{i}.log").read_text() for i in range(len(processes))]


def logged_steps(model_dir):
    try:
        return sorted(train_losses(model_dir))
    except (FileNotFoundError, ValueError):  # not there yet, or a line being written
        return []


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("multihost")
    timings = {}
    start = time.perf_counter()
    reference(root / "reference", STEPS, MESH_A)
    timings["reference"] = time.perf_counter() - start

    start = time.perf_counter()
    job = root / "job"
    processes = start_job(job, root, "preempted")
    deadline = time.time() + 300
    while time.time() < deadline and all(p.poll() is None for p in processes) and not logged_steps(job):
        time.sleep(0.02)
    processes[SIGNALLED].send_signal(signal.SIGTERM)
    preempted_codes, preempted_logs = finish(processes, root, "preempted")
    timings["preempted job"] = time.perf_counter() - start
    preempted = {"codes": preempted_codes, "logs": preempted_logs, "losses": train_losses(job),
                 "checkpoints": committed_steps(job)}

    start = time.perf_counter()
    rerun_codes, rerun_logs = finish(start_job(job, root, "rerun"), root, "rerun")
    timings["re-run job"] = time.perf_counter() - start
    rerun = {"codes": rerun_codes, "logs": rerun_logs, "losses": train_losses(job)}

    start = time.perf_counter()
    reference(job, STEPS, MESH_B)  # resume the job's checkpoint on another mesh, in one process
    timings["one process, other mesh"] = time.perf_counter() - start
    print("multi-host test timings (s):", {k: round(v, 1) for k, v in timings.items()})
    return {"reference": train_losses(root / "reference"), "preempted": preempted, "rerun": rerun,
            "resumed": train_losses(job), "root": root}


def close(a, b):
    return abs(a - b) / b < 1e-4


def stopped_after(log):
    found = re.findall(r"stopped by SIGTERM after step (\d+)", log)
    return int(found[0]) if len(found) == 1 else None


def test_sigterm_to_one_host_stops_both_at_the_same_step_with_one_checkpoint(runs):
    job = runs["preempted"]
    assert job["codes"] == [143, 143], "\n".join(log[-2000:] for log in job["logs"])
    steps = [stopped_after(log) for log in job["logs"]]
    assert steps[0] == steps[1] and steps[0] is not None, steps
    stopped = steps[0]
    assert 1 <= stopped < JOB_STEPS  # preempted, not finished
    assert job["checkpoints"] == [stopped]  # one checkpoint (CHECKPOINT_PERIOD is past JOB_STEPS), written by both
    assert sorted(job["losses"]) == list(range(1, stopped + 1))
    assert all("Traceback" not in log for log in job["logs"])


def test_two_process_job_matches_single_process(runs):
    for step, loss in runs["preempted"]["losses"].items():
        assert close(loss, runs["reference"][step]), (step, loss, runs["reference"])
    log = runs["preempted"]["logs"][1]
    assert "process 1 of 2" in log and "8 global devices" in log


def test_both_hosts_rerun_the_same_command_and_resume_exactly(runs):
    rerun, stopped = runs["rerun"], max(runs["preempted"]["losses"])
    assert rerun["codes"] == [0, 0], "\n".join(log[-2000:] for log in rerun["logs"])
    assert all("resumed from" in log for log in rerun["logs"])
    assert sorted(rerun["losses"]) == list(range(1, JOB_STEPS + 1))
    for step in range(stopped + 1, JOB_STEPS + 1):
        assert close(rerun["losses"][step], runs["reference"][step]), (step, rerun["losses"], runs["reference"])


def test_checkpoint_written_by_both_hosts_restores_on_another_mesh(runs):
    assert sorted(runs["resumed"]) == list(range(1, STEPS + 1))
    for step in range(JOB_STEPS + 1, STEPS + 1):
        assert close(runs["resumed"][step], runs["reference"][step]), (step, runs["resumed"], runs["reference"])


def test_only_process_zero_writes_metrics(runs):
    lines = (runs["root"] / "job" / "metrics.jsonl").read_text().splitlines()
    steps = [l for l in lines if '"loss"' in l]
    assert len(steps) == STEPS  # each step once (not once per host), across the three runs
