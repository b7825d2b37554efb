"""launch/: every script's --dry_run prints exactly what it would run; the GKE manifests parse and carry the
right process counts and multi-host environment; multi-host settings from flags and environment."""

import glob
import os
import shlex
import subprocess
import sys

import pytest
import yaml

from conftest import REPO
from quark_jax import distributed

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


def test_tpu_vm_dry_runs():
    common = ["--name=q", "--zone=us-west4-a", "--project=p", "--dry_run"]
    create = run("tpu_vm.py", "create", *common, "--accelerator_type=v5litepod-16")
    assert shlex.split(create) == ["gcloud", "compute", "tpus", "tpu-vm", "create", "q",
                                   "--accelerator-type=v5litepod-16", "--version=v2-alpha-tpuv5-lite",
                                   "--zone=us-west4-a", "--project=p"]
    copy = run("tpu_vm.py", "copy", *common).strip().splitlines()
    assert len(copy) == 3 and "git ls-files" in copy[0]
    assert "scp" in copy[1] and "--worker=all" in copy[1]
    assert "--worker=all" in copy[2] and "pip install" in copy[2] and "jax[tpu]==0.10.2" in copy[2]
    train = run("tpu_vm.py", "run", *common, "--", "--gin_file=configs/runs/pretrain.gin", "--gin.TRAIN_STEPS=5")
    words = shlex.split(train)
    assert words[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "q"] and "--worker=all" in words
    remote = next(w for w in words if w.startswith("--command="))
    assert "QUARK_DISTRIBUTED=auto python3 -m quark_jax.cli train --gin_file=configs/runs/pretrain.gin" in remote
    assert shlex.split(run("tpu_vm.py", "teardown", *common))[4:8] == ["delete", "q", "--quiet", "--zone=us-west4-a"]


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


def test_shipped_manifests_parse():
    files = sorted(glob.glob(os.path.join(LAUNCH, "gke", "*.yaml")))
    assert len(files) >= 2
    for path in files:
        with open(path) as f:
            doc = yaml.safe_load(f)
        topology = doc["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["nodeSelector"][
            "cloud.google.com/gke-tpu-topology"]
        chips = 1
        for x in topology.split("x"):
            chips *= int(x)
        check_jobset(doc, chips // 4, topology)


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
