"""Run directories you can trust: one writer per run (the lease), SIGTERM during a save, a failed (disk full)
save, a run killed during its final evaluation, and runs whose updates keep being skipped."""

import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import REPO, RUN_CONFIG, committed_steps, quark_command, read_metrics, run_quark, tiny_overrides, train_args, train_losses
from quark_jax.training import run_lock
from quark_jax.training.trainer import (CheckpointWriteError, NonFiniteLossError, Trainer, _nonfinite_quantity)

QUIET = {"quark_jax.TrainConfig.eval_batches": 0, "quark_jax.TrainConfig.sample_prompts": "()"}


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def write_lease(model_dir, **fields):
    os.makedirs(model_dir, exist_ok=True)
    lease = {"host": socket.gethostname(), "pid": os.getpid(), "token": "t0", "started": time.time() - 3600,
             "heartbeat": time.time(), **fields}
    with open(os.path.join(model_dir, run_lock.LEASE_FILE), "w") as f:
        json.dump(lease, f)
    return lease


# ---- the lease, in-process ------------------------------------------------------------------------------------
def test_lease_refuses_a_live_holder_and_takes_over_stale_ones(tmp_path, caplog):
    write_lease(tmp_path, host="other-host", pid=4242)
    with pytest.raises(run_lock.RunDirBusyError, match=r"host other-host pid 4242 since \d{4}-\d\d-\d\d"):
        run_lock.RunLease(str(tmp_path)).acquire()
    # Another host's lease whose heartbeat stopped 2 minutes ago: stale after 60 s.
    write_lease(tmp_path, host="other-host", pid=4242, heartbeat=time.time() - 120)
    lease = run_lock.RunLease(str(tmp_path), stale_after_s=60).acquire()
    assert "took over the stale lease of host other-host pid 4242" in caplog.text
    with open(tmp_path / run_lock.LEASE_FILE) as f:
        assert json.load(f)["token"] == lease.token
    lease.release()
    assert not os.path.exists(tmp_path / run_lock.LEASE_FILE)
    # This host, fresh heartbeat, but the process is gone.
    write_lease(tmp_path, pid=dead_pid())
    lease = run_lock.RunLease(str(tmp_path)).acquire()
    assert "no longer exists on this host" in caplog.text
    lease.release()


def test_heartbeat_refreshes_and_a_lost_lease_is_noticed(tmp_path):
    lease = run_lock.RunLease(str(tmp_path), stale_after_s=0.4, heartbeat_s=0.05).acquire()
    try:
        first = json.load(open(tmp_path / run_lock.LEASE_FILE))["heartbeat"]
        time.sleep(0.3)
        assert json.load(open(tmp_path / run_lock.LEASE_FILE))["heartbeat"] > first
        lease.check()  # still ours
        write_lease(tmp_path, host="other-host", pid=1, token="intruder")  # taken over behind our back
        deadline = time.time() + 5
        while not lease.lost and time.time() < deadline:
            time.sleep(0.02)
        with pytest.raises(run_lock.LeaseLostError, match="other-host pid 1"):
            lease.check()
    finally:
        lease.release()
    assert json.load(open(tmp_path / run_lock.LEASE_FILE))["token"] == "intruder"  # not ours to delete


# ---- the lease, two `quark train` processes -------------------------------------------------------------------
def test_a_second_writer_is_refused_and_the_first_finishes_intact(tmp_path):
    model_dir = tmp_path / "run"
    steps = 150
    bindings = tiny_overrides(model_dir, steps, CHECKPOINT_PERIOD=50, **QUIET)
    first = subprocess.Popen(quark_command(*train_args(bindings)), cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    lease_file = model_dir / run_lock.LEASE_FILE
    deadline = time.time() + 300
    while time.time() < deadline and first.poll() is None and not lease_file.exists():
        time.sleep(0.05)
    assert first.poll() is None, "the first run ended before its lease was seen"
    start = time.time()
    second = run_quark(*train_args(bindings), timeout=300)
    assert first.poll() is None, "the first run finished before the second was refused: make it longer"
    assert second.returncode == 75, second.stderr[-3000:]
    refusal = [line for line in second.stderr.splitlines() if line.startswith("quark train:")]
    assert len(refusal) == 1 and f"pid {first.pid} since" in refusal[0] and "being written by another run" in refusal[0]
    assert "Traceback" not in second.stderr
    assert time.time() - start < 60
    _, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr[-3000:]
    records = [r for r in read_metrics(model_dir) if "loss" in r]
    assert [r["step"] for r in records] == list(range(1, steps + 1))  # each step exactly once
    assert committed_steps(model_dir) == [50, 100, 150]
    assert not lease_file.exists()


def test_a_stale_lease_is_taken_over_with_a_warning(tmp_path):
    model_dir = tmp_path / "run"
    write_lease(model_dir, pid=dead_pid(), heartbeat=time.time() - 600)
    result = run_quark(*train_args(tiny_overrides(model_dir, 3, **QUIET)))
    assert result.returncode == 0, result.stderr[-3000:]
    warning = [line for line in result.stderr.splitlines() if "took over the stale lease" in line]
    assert len(warning) == 1 and re.search(r"heartbeat is 6\d\d s old \(> 60 s\)", warning[0]), result.stderr
    assert sorted(train_losses(model_dir)) == [1, 2, 3]
    assert not (model_dir / run_lock.LEASE_FILE).exists()


# ---- SIGTERM during a save ------------------------------------------------------------------------------------
SIGTERM_STEPS = 12


def sigterm_bindings(model_dir):
    return tiny_overrides(model_dir, SIGTERM_STEPS, CHECKPOINT_PERIOD=1, **QUIET, **{
        "quark_jax.CheckpointConfig.max_to_keep": 2})


def test_sigterm_during_a_save_and_a_second_sigterm_checkpoint_and_resume_exactly(tmp_path):
    unbroken = run_quark(*train_args(sigterm_bindings(tmp_path / "unbroken")))
    assert unbroken.returncode == 0, unbroken.stderr[-3000:]

    model_dir = tmp_path / "preempted"
    process = subprocess.Popen(quark_command(*train_args(sigterm_bindings(model_dir))), cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    checkpoints = model_dir / "checkpoints"
    deadline = time.time() + 300
    # The first save's temporary directory: orbax is writing the checkpoint right now.
    while time.time() < deadline and process.poll() is None and not (
            checkpoints.is_dir() and any("tmp" in n for n in os.listdir(checkpoints))):
        time.sleep(0.005)
    assert process.poll() is None
    process.send_signal(signal.SIGTERM)
    time.sleep(0.1)
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)  # impatient schedulers send it again
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 143, stderr[-3000:]
    assert "Traceback" not in stderr and "TypeError" not in stderr
    stopped = [line for line in stderr.splitlines() if "stopped by SIGTERM after step" in line]
    assert len(stopped) == 1
    stopped_at = int(stopped[0].split("after step ")[1].split()[0])
    assert max(committed_steps(model_dir)) == stopped_at < SIGTERM_STEPS
    assert not (model_dir / run_lock.LEASE_FILE).exists()
    resumed = run_quark(*train_args(sigterm_bindings(model_dir)))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    assert train_losses(model_dir) == train_losses(tmp_path / "unbroken")


# ---- a run killed during its final evaluation -----------------------------------------------------------------
def test_a_rerun_completes_the_final_artefacts_of_a_run_killed_during_its_final_evaluation(tmp_path):
    model_dir = tmp_path / "run"
    bindings = tiny_overrides(model_dir, 4, CHECKPOINT_PERIOD=2, **{"quark_jax.TrainConfig.eval_batches": 2})
    complete = Trainer.from_gin(RUN_CONFIG, bindings).run()
    final_files = ("summary.json", "loss_curve.png", "samples.txt")
    assert all((model_dir / name).exists() for name in final_files)
    # What a kill after the final checkpoint but during the final evaluation leaves: no final artefacts.
    for name in final_files:
        os.remove(model_dir / name)
    records = read_metrics(model_dir)
    assert [r["step"] for r in records if "val_loss" in r] == [4]
    with open(model_dir / "metrics.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records if "val_loss" not in r)

    summary = Trainer.from_gin(RUN_CONFIG, bindings).run()
    assert summary["val_loss"] == pytest.approx(complete["val_loss"], rel=1e-6)
    assert all((model_dir / name).exists() for name in final_files)
    rewritten = read_metrics(model_dir)  # the final validation logged again, once
    assert [r for r in rewritten if "val_loss" not in r] == [r for r in records if "val_loss" not in r]
    assert [r for r in rewritten if "val_loss" in r] == [pytest.approx(r, rel=1e-6) for r in records if "val_loss" in r]
    assert json.load(open(model_dir / "summary.json"))["final_step"] == 4
    # A finished run is left alone.
    again = Trainer.from_gin(RUN_CONFIG, bindings).run()
    assert "val_loss" not in again and read_metrics(model_dir) == rewritten
    # Killed later, after the validation record and the samples, before summary.json: nothing is written twice.
    os.remove(model_dir / "summary.json")
    os.remove(model_dir / "loss_curve.png")
    completed = Trainer.from_gin(RUN_CONFIG, bindings).run()
    assert completed["val_loss"] == pytest.approx(complete["val_loss"], rel=1e-6)
    assert read_metrics(model_dir) == rewritten
    assert open(model_dir / "samples.txt").read().count("--- step 4\n") == 1
    assert (model_dir / "summary.json").exists() and (model_dir / "loss_curve.png").exists()


# ---- skipped updates ------------------------------------------------------------------------------------------
def test_too_many_consecutive_skipped_updates_stop_the_run(tmp_path):
    overrides = tiny_overrides(tmp_path / "skip", 8, **QUIET, **{
        "quark_jax.OptimizerConfig.learning_rate": 1e30, "quark_jax.OptimizerConfig.warmup_steps": 0,
        "quark_jax.TrainConfig.on_nonfinite": "'skip'", "quark_jax.TrainConfig.max_consecutive_skips": 3,
    })
    with pytest.raises(NonFiniteLossError, match=r"^4 consecutive updates skipped .* at step 5\b.*"
                                                 r"max_consecutive_skips=3"):
        Trainer.from_gin(RUN_CONFIG, overrides).run()
    assert [r.get("skipped", 0.0) for r in read_metrics(tmp_path / "skip") if "loss" in r] == [0.0, 1.0, 1.0, 1.0]


def test_the_nonfinite_quantity_is_named():
    assert _nonfinite_quantity({"loss": 8.31774, "grad_norm": float("nan")}) == \
        "non-finite gradient norm nan (loss 8.3177)"
    assert _nonfinite_quantity({"loss": float("inf"), "grad_norm": float("nan")}).startswith("non-finite loss inf")


# ---- a failed asynchronous save (disk full) ---------------------------------------------------------------------
# Raises ENOSPC when orbax commits checkpoint step >= fail_from in its background thread (the commit writes
# commit_success.txt into the step's temporary directory before renaming it into place). `failures` records the
# newest step in metrics.jsonl at that moment (metrics are logged one step late).
INJECT = textwrap.dedent("""
    import errno, json, re
    from orbax.checkpoint._src.path import async_path

    failures = []

    def inject_enospc(fail_from):
        write_text = async_path.write_text

        async def failing(path, text, *args, **kwargs):
            match = re.match(r"(\\d+)\\.orbax-checkpoint-tmp", path.parent.name)
            if match and int(match.group(1)) >= fail_from:
                with open(path.parent.parent.parent / "metrics.jsonl") as f:
                    failures.append(max(json.loads(line)["step"] for line in f if line.strip()))
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
            return await write_text(path, text, *args, **kwargs)

        async_path.write_text = failing
        return write_text
""")


def disk_full_bindings(model_dir):
    return tiny_overrides(model_dir, 40, CHECKPOINT_PERIOD=4, **QUIET)


def test_a_failed_save_stops_the_run_at_once_and_keeps_the_previous_checkpoint(tmp_path):
    namespace: dict = {}
    exec(INJECT, namespace)
    from orbax.checkpoint._src.path import async_path

    model_dir = tmp_path / "run"
    original = namespace["inject_enospc"](8)
    try:
        with pytest.raises(CheckpointWriteError) as raised:
            Trainer.from_gin(RUN_CONFIG, disk_full_bindings(model_dir)).run()
    finally:
        async_path.write_text = original
    error = raised.value
    assert error.errno == errno.ENOSPC
    message = error.strerror
    assert "\n" not in message and str(model_dir / "checkpoints") in message
    assert "No space left on device" in message and "newest complete checkpoint is step 4" in message
    assert committed_steps(model_dir) == [4]
    # Stopped at the first step boundary after the commit failed (not at the next save, step 12): the step
    # logged then, the one running, and the one whose metrics are fetched on the way out.
    assert len(namespace["failures"]) == 1
    assert 8 <= max(train_losses(model_dir)) <= namespace["failures"][0] + 2 < 40
    assert not any("tmp" in n for n in os.listdir(model_dir / "checkpoints"))
    # The re-run (disk freed) resumes from step 4 without blaming a killed run.
    resumed = run_quark(*train_args(disk_full_bindings(model_dir)))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr and "half-written" not in resumed.stderr
    assert sorted(train_losses(model_dir)) == list(range(1, 41))


def test_quark_train_exits_74_with_one_line_when_the_disk_is_full(tmp_path):
    model_dir = tmp_path / "run"
    code = INJECT + textwrap.dedent(f"""
        import sys
        inject_enospc(8)
        from quark_jax.cli import main
        sys.exit(main({train_args(disk_full_bindings(model_dir))!r}))
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 74, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("quark train:")]
    assert len(lines) == 1 and "No space left on device" in lines[0] and str(model_dir / "checkpoints") in lines[0]
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) < 20, result.stderr
