"""launch/: every script's --dry_run prints exactly what it would run; the GKE manifests parse and carry the
right process counts and multi-host environment; multi-host settings from flags and environment."""

import glob
import json
import os
import shlex
import subprocess
import sys
import time

import pytest
import yaml

from conftest import REPO
from quark_jax import distributed

sys.path.insert(0, os.path.join(REPO, "launch"))
import tpu_vm as tpu_vm_module  # noqa: E402

LAUNCH = os.path.join(REPO, "launch")


def run(script, *args):
    result = subprocess.run([sys.executable, os.path.join(LAUNCH, script), *args], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_local_launcher_dry_run():
    out = run("local.py", "--dry_run", "--num_processes=3", "--devices_per_process=2", "--port=1234", "--",
              "quark", "train", "--gin_file=configs/runs/pretrain_tiny.gin")
    lines = out.strip().splitlines()
    assert len(lines) == 3
    for i, line in enumerate(lines):
        words = shlex.split(line)
        env = dict(w.split("=", 1) for w in words[:5])
        assert env == {"QUARK_COORDINATOR_ADDRESS": "127.0.0.1:1234", "QUARK_NUM_PROCESSES": "3",
                       "QUARK_PROCESS_ID": str(i), "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
                       "JAX_PLATFORMS": "cpu"}
        assert words[6:] == ["-m", "quark_jax.cli", "train", "--gin_file=configs/runs/pretrain_tiny.gin"]


def tpu_vm(*args):
    """launch/tpu_vm.py with a VM name, zone and project, in --dry_run: the commands, one per line, as argv."""
    out = run("tpu_vm.py", args[0], "--name=q", "--zone=us-west4-a", "--project=p", "--dry_run", *args[1:])
    commands, pending = [], ""
    for line in out.splitlines():  # one command a line, but a remote script spans lines inside its quotes
        pending += line + "\n"
        try:
            commands.append(shlex.split(pending))
            pending = ""
        except ValueError:  # inside a quoted script
            continue
    assert not pending
    return commands


def remote_script(command):
    return next(w for w in command if w.startswith("--command=")).removeprefix("--command=")


@pytest.mark.parametrize("accelerator, version", [
    ("v4-32", "tpu-ubuntu2204-base"), ("v5litepod-16", "v2-alpha-tpuv5-lite"), ("v5e-256", "v2-alpha-tpuv5-lite"),
    ("v5p-128", "v2-alpha-tpuv5"), ("v6e-64", "v2-alpha-tpuv6e")])
def test_tpu_vm_create_picks_the_runtime_version_of_the_accelerator(accelerator, version):
    (create,) = tpu_vm("create", f"--accelerator_type={accelerator}")
    assert create == ["gcloud", "compute", "tpus", "tpu-vm", "create", "q", f"--accelerator-type={accelerator}",
                      f"--version={version}", "--zone=us-west4-a", "--project=p"]
    (create,) = tpu_vm("create", f"--accelerator_type={accelerator}", "--version=my-image", "--spot")
    assert "--version=my-image" in create and "--spot" in create


def test_tpu_vm_mistakes_are_one_line_with_status_2():
    for args, culprit in ((["create", "--name=q", "--zone=z", "--accelerator_type=v9x-8"], "--accelerator_type='v9x-8'"),
                          (["run", "--zone=z"], "--name"), (["run", "--name=q", "--zone=z"], "after `--`")):
        result = subprocess.run([sys.executable, os.path.join(LAUNCH, "tpu_vm.py"), *args, "--dry_run"], cwd=REPO,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and culprit in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_tpu_vm_copy_installs_jax_tpu_and_never_the_cpu_build():
    pack, scp, install = tpu_vm("copy")
    assert "git ls-files" in pack[-1]
    assert scp[4] == "scp" and "--worker=all" in scp
    script = remote_script(install)
    assert "--worker=all" in install and f".venv/bin/python -m pip install -q -r {tpu_vm_module.TPU_REQUIREMENTS}" in script
    assert "requirements.txt" not in script.replace(tpu_vm_module.TPU_REQUIREMENTS, "") and "cpu" not in script
    assert "python3.11 -m venv .venv" in script  # JAX 0.10 needs Python >= 3.11; the TPU images have 3.10
    assert subprocess.run(["bash", "-n", "-c", script]).returncode == 0  # the worker's shell can parse it
    with open(os.path.join(REPO, tpu_vm_module.TPU_REQUIREMENTS)) as f:
        shipped = [line for line in f.read().splitlines() if line and not line.startswith("#")]
    assert "jax[tpu]==0.10.2" in shipped and "libtpu==0.0.42.1" in shipped and "jaxlib==0.10.2" in shipped
    assert not [line for line in shipped if "cpu]" in line or line.startswith("-r")]


def test_tpu_requirements_are_requirements_txt_with_jax_tpu():
    """requirements-tpu.txt is what `tpu_vm.py requirements` derives from requirements.txt today (regenerate it with
    `python launch/tpu_vm.py requirements > requirements-tpu.txt` after changing requirements.txt)."""
    with open(os.path.join(REPO, tpu_vm_module.TPU_REQUIREMENTS)) as f:
        assert run("tpu_vm.py", "requirements") == f.read()
    with pytest.raises(tpu_vm_module.UsageError, match="jax\\[cpu\\]"):
        tpu_vm_module.tpu_requirements("flax==0.12.8\n")


def test_tpu_vm_run_status_logs_stop_teardown_commands():
    (start,) = tpu_vm("run", "--", "--gin_file=configs/runs/pretrain.gin", "--gin.MODEL_DIR='gs://b/r'")
    assert start[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "q"] and "--worker=all" in start
    script = remote_script(start)
    assert "setsid nohup" in script and ">> logs/train.log" in script
    wrapper = shlex.split(script.split("setsid nohup bash -c ")[1].splitlines()[0])[0]
    assert "QUARK_DISTRIBUTED=auto .venv/bin/python -m quark_jax.cli train " + shlex.join(
        ["--gin_file=configs/runs/pretrain.gin", "--gin.MODEL_DIR='gs://b/r'"]) in wrapper
    (status,) = tpu_vm("status")
    assert "--worker=all" in status and "train.exit" in remote_script(status)
    (logs,) = tpu_vm("logs", "--worker=3", "--lines=20", "--follow")
    assert "--worker=3" in logs and remote_script(logs) == "tail -n 20 -F ~/quark_jax/logs/train.log"
    (stop,) = tpu_vm("stop")
    assert "--worker=all" in stop and "kill -TERM" in remote_script(stop)
    assert tpu_vm("teardown")[0][4:8] == ["delete", "q", "--quiet", "--zone=us-west4-a"]


FAKE_PYTHON = """#!/bin/bash
# Stands in for `.venv/bin/python -m quark_jax.cli train ...` on a TPU worker: says what it was given, then trains until
# SIGTERM, which it answers as quark train does (exit 143).
echo "QUARK_DISTRIBUTED=$QUARK_DISTRIBUTED argv: $*"
trap 'echo "SIGTERM: checkpoint saved"; exit 143' TERM
while true; do sleep 0.1; done
"""


def test_tpu_vm_run_detaches_and_status_logs_stop_follow_it(tmp_path):
    """The worker-side scripts of `run`, `status`, `logs` and `stop`, executed here by bash in a stand-in home
    directory with a stand-in Python: the run outlives the shell that started it, `status` sees it running,
    `stop` makes it exit 143, which `status` then reports, and `logs` shows its output."""
    home = tmp_path / "home"
    python = home / "quark_jax" / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin"}

    def worker(command):
        result = subprocess.run(["bash", "-c", remote_script(command)], env=env, capture_output=True, text=True,
                                timeout=30)
        return result.returncode, result.stdout + result.stderr

    (start,), (status,), (logs,), (stop,) = tpu_vm("run", "--", "--gin.TRAIN_STEPS=5"), tpu_vm("status"), \
        tpu_vm("logs"), tpu_vm("stop")
    code, out = worker(start)  # returns at once: the run is detached
    assert code == 0 and "started pid" in out, out
    pid = int((home / "quark_jax" / "logs" / "train.pid").read_text())
    try:
        assert "running (pid" in worker(status)[1]
        code, out = worker(start)  # a second `run` while one is going is refused
        assert code == 1 and "still going" in out
        time.sleep(0.5)
        assert "argv: -m quark_jax.cli train --gin.TRAIN_STEPS=5" in worker(logs)[1]
        assert "QUARK_DISTRIBUTED=auto" in worker(logs)[1]
        assert "SIGTERM sent" in worker(stop)[1]
        deadline = time.time() + 20
        while time.time() < deadline and "running" in worker(status)[1]:
            time.sleep(0.1)
        assert "preempted, checkpoint saved (exit 143)" in worker(status)[1]
        assert "SIGTERM: checkpoint saved" in worker(logs)[1]
        assert "nothing running" in worker(stop)[1]
    finally:
        subprocess.run(["kill", "-KILL", "--", f"-{pid}"], capture_output=True)  # only if a step above failed


@pytest.mark.parametrize("topology, tpu_type, hosts", [("2x4", "v5e", 2), ("4x4", "v5e", 4), ("4x4x8", "v5p", 32)])
def test_gke_dry_run_manifest(topology, tpu_type, hosts):
    out = run("gke.py", "--name=job", "--image=img", f"--tpu_type={tpu_type}", f"--topology={topology}", "--dry_run",
              "--", "--gin_file=configs/runs/pretrain.gin", "--gin.TRAIN_STEPS=5")
    assert out.strip().splitlines()[-1] == "# kubectl apply -f job.yaml"
    check_jobset(yaml.safe_load(out), hosts, topology)


def check_jobset(doc, hosts, topology=None):
    assert doc["kind"] == "JobSet" and doc["apiVersion"].startswith("jobset.x-k8s.io/")
    (job,) = doc["spec"]["replicatedJobs"]
    spec = job["template"]["spec"]
    assert spec["parallelism"] == spec["completions"] == hosts and spec["completionMode"] == "Indexed"
    pod = spec["template"]["spec"]
    assert pod.get("nodeSelector", {}).get("cloud.google.com/gke-tpu-topology") == topology
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["QUARK_NUM_PROCESSES"]["value"] == str(hosts)
    name = doc["metadata"]["name"]
    assert env["QUARK_COORDINATOR_ADDRESS"]["value"] == f"{name}-{job['name']}-0-0.{name}:8476"
    assert "job-completion-index" in env["QUARK_PROCESS_ID"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert pod["subdomain"] == name  # the headless service that resolves pod 0
    assert container["resources"]["limits"]["google.com/tpu"] == 4
    assert "quark_jax.cli train" in container["command"][-1]


def shipped_manifests():
    files = sorted(glob.glob(os.path.join(LAUNCH, "gke", "*.yaml")))
    assert len(files) >= 2
    return files


def test_shipped_manifests_are_what_gke_py_renders_today():
    """Each shipped JobSet names, in its first line, the command that rendered it; that command, run now,
    prints the file byte for byte (re-render a file with that command after changing gke.py)."""
    for path in shipped_manifests():
        with open(path) as f:
            text = f.read()
        command = shlex.split(text.splitlines()[0].removeprefix("# Rendered by: "))
        assert command[:2] == ["python", "launch/gke.py"], path
        out = run("gke.py", "--dry_run", *command[2:])
        assert out.rsplit("# kubectl apply", 1)[0] == text, f"{path} differs from: {shlex.join(command)}"
        doc = yaml.safe_load(text)
        topology = doc["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["nodeSelector"][
            "cloud.google.com/gke-tpu-topology"]
        chips = 1
        for x in topology.split("x"):
            chips *= int(x)
        check_jobset(doc, chips // 4, topology)


def jobset_validator():
    import jsonschema

    with open(os.path.join(LAUNCH, "gke", "jobset.v1alpha2.schema.json")) as f:
        schema = json.load(f)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_manifests_validate_against_the_jobset_schema():
    validator = jobset_validator()
    docs = []
    for path in shipped_manifests():
        with open(path) as f:
            docs.append(yaml.safe_load(f))
    for tpu_type, topology in (("v4", "2x2x4"), ("v5e", "2x4"), ("v6e", "8x8")):
        docs.append(yaml.safe_load(run("gke.py", "--name=job", "--image=img", f"--tpu_type={tpu_type}",
                                       f"--topology={topology}", "--dry_run", "--", "--gin.TRAIN_STEPS=5")))
    for doc in docs:
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
        assert not errors, errors
        (container,) = doc["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"]
        assert container["workingDir"] == "/app"


@pytest.mark.parametrize("path, value, complaint", [
    (("containers", 0, "workingdir"), "/app", "Additional properties"),  # a misspelt field
    (("containers", 0, "resources", "limits", "google.com/tpu"), "four", "is not valid"),
    (("containers", 0, "env", 2, "valueFrom", "fieldRef"), {"path": "x"}, "'fieldPath' is a required property"),
    (("restartPolicy",), "Sometimes", "is not one of"),
    (("subdomain",), "Job_Set", "does not match"),
])
def test_the_jobset_schema_rejects_what_kubernetes_would(path, value, complaint):
    doc = yaml.safe_load(run("gke.py", "--name=job", "--image=img", "--dry_run", "--", "--gin.TRAIN_STEPS=5"))
    node = doc["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    errors = [e.message for e in jobset_validator().iter_errors(doc)]
    assert errors and any(complaint in m for m in errors), errors
    job = yaml.safe_load(run("gke.py", "--name=job", "--image=img", "--dry_run", "--", "--gin.TRAIN_STEPS=5"))
    job["spec"]["replicatedJobs"][0]["template"]["spec"]["completionMode"] = "indexed"
    assert any("is not one of" in e.message for e in jobset_validator().iter_errors(job))


def test_gke_mistakes_are_one_line_with_status_2():
    for args, culprit in ((["--topology=4x4x"], "--topology='4x4x'"), (["--topology=3x3"], "whole number"),
                          (["--name=" + "a" * 60], "63 characters"), (["--name=Quark"], "--name='Quark'"),
                          ([], "after `--`")):
        tail = ["--", "--gin.TRAIN_STEPS=5"] if culprit != "after `--`" else []
        result = subprocess.run([sys.executable, os.path.join(LAUNCH, "gke.py"), "--image=img", "--dry_run", *args,
                                 *tail], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and culprit in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_dockerfile_installs_jax_tpu_into_the_jobsets_working_directory():
    sys.path.insert(0, LAUNCH)
    import gke

    with open(os.path.join(REPO, "Dockerfile")) as f:
        lines = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    workdirs = [line.split()[1] for line in lines if line.startswith("WORKDIR")]
    assert workdirs == [gke.WORKING_DIR]
    installs = [line for line in lines if line.startswith("RUN") and "pip install" in line]
    assert installs[0].endswith(f"-r {tpu_vm_module.TPU_REQUIREMENTS}") and "-e ." in installs[-1]
    assert not any("requirements.txt" in line or "jax[cpu]" in line for line in installs)
    for line in lines:
        if line.startswith("COPY"):
            for source in line.split()[1:-1]:
                assert os.path.exists(os.path.join(REPO, source)), source
    with open(os.path.join(REPO, ".dockerignore")) as f:
        ignored = f.read().split()
    assert ".venv" in ignored and ".git" in ignored


def test_distributed_settings_from_flags_and_environment():
    assert distributed.settings_from(environ={}) is None
    env = {"QUARK_COORDINATOR_ADDRESS": "h:1", "QUARK_NUM_PROCESSES": "4", "QUARK_PROCESS_ID": "3"}
    assert distributed.settings_from(environ=env) == {"coordinator_address": "h:1", "num_processes": 4, "process_id": 3}
    # flags win over the environment
    assert distributed.settings_from("x:2", 2, 0, environ=env) == {"coordinator_address": "x:2", "num_processes": 2,
                                                                  "process_id": 0}
    assert distributed.settings_from(environ={"QUARK_DISTRIBUTED": "auto"}) == {}
    assert distributed.settings_from(environ={"TPU_WORKER_HOSTNAMES": "a,b,c,d"}) == {}
    assert distributed.settings_from(environ={"TPU_WORKER_HOSTNAMES": "a"}) is None
    with pytest.raises(ValueError, match="missing --process_id"):
        distributed.settings_from("h:1", 2, environ={})
    with pytest.raises(ValueError, match="process_id=2 must be in"):
        distributed.settings_from("h:1", 2, 2, environ={})
