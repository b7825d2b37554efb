#!/usr/bin/env python3
"""GKE: renders a JobSet manifest that runs `quark train` on every host of a TPU slice, and applies it.

    python launch/gke.py --name=quark-1b --image=us-docker.pkg.dev/PROJECT/quark/quark:latest \\
        --tpu_type=v5e --topology=4x4 --dry_run -- --gin_file=configs/runs/pretrain.gin \\
        --gin_file=configs/models/1b.gin --gin.MODEL_DIR="'gs://bucket/runs/1b'" --gin.TRAIN_STEPS=10000 \\
        --gin.MESH_SHAPE="'fsdp=-1'" --gin.BATCH_SIZE=64 --gin.TASK_FEATURE_LENGTHS="{'targets':2048}"

One JobSet, one replicated Job of N pods (N = chips in the topology / chips per host), one pod per TPU host,
indexed completions. Every pod runs the image built from the repository's ``Dockerfile`` (the code in
``/app``, the container's working directory; ``jax[tpu]`` from ``requirements-tpu.txt``) and gets the
multi-host environment read by ``quark_jax.distributed``: ``QUARK_COORDINATOR_ADDRESS`` (pod 0 through the
JobSet's headless service), ``QUARK_NUM_PROCESSES`` and ``QUARK_PROCESS_ID`` (the pod's completion index).
``--dry_run`` prints the manifest and the ``kubectl`` command; otherwise the manifest is written to ``--output``
and applied. The manifest's first line is the command that rendered it; ``launch/gke/`` holds rendered
examples (a test renders them again and compares), and ``launch/gke/jobset.v1alpha2.schema.json`` the JobSet
schema they are validated against.
"""

from __future__ import annotations

import argparse
import math
import re
import shlex
import subprocess
import sys

# GKE node selector values and chips per host for each TPU generation.
TPU_TYPES = {
    "v4": ("tpu-v4-podslice", 4),
    "v5e": ("tpu-v5-lite-podslice", 4),
    "v5p": ("tpu-v5p-slice", 4),
    "v6e": ("tpu-v6e-slice", 4),
}
COORDINATOR_PORT = 8476
WORKING_DIR = "/app"  # the Dockerfile's WORKDIR: the code, configs/ and tokenizers/ are there
JOB = "slice"  # the replicated job's name: pod hostnames are NAME-slice-0-INDEX
EXIT_USAGE = 2


class UsageError(Exception):
    """A mistake in the command line: one line naming the flag and the fix (exit status 2)."""


def num_hosts(topology: str, chips_per_host: int) -> int:
    if not re.fullmatch(r"[1-9]\d*(x[1-9]\d*){1,2}", topology):
        raise UsageError(f"--topology={topology!r} is not a TPU topology such as 2x4, 4x4 or 4x4x8")
    chips = math.prod(int(x) for x in topology.split("x"))
    if chips % chips_per_host:
        raise UsageError(f"--topology={topology} ({chips} chips) is not a whole number of {chips_per_host}-chip hosts")
    return max(1, chips // chips_per_host)


def check_name(name: str, hosts: int) -> None:
    """The JobSet name becomes the pods' host names (NAME-slice-0-I), which DNS limits to 63 characters."""
    longest = f"{name}-{JOB}-0-{hosts - 1}"
    if not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) or len(longest) > 63:
        raise UsageError(f"--name={name!r} must be lower-case letters, digits and '-', starting with a letter, and "
                         f"short enough that the pod host name {longest!r} has at most 63 characters")


def manifest(name: str, image: str, tpu_type: str, topology: str, train_args: list[str]) -> dict:
    """The JobSet as a Python dict (YAML-ready)."""
    accelerator, chips_per_host = TPU_TYPES[tpu_type]
    hosts = num_hosts(topology, chips_per_host)
    check_name(name, hosts)
    job = JOB
    command = "python3 -m quark_jax.cli train " + shlex.join(train_args)
    env = [
        {"name": "QUARK_COORDINATOR_ADDRESS", "value": f"{name}-{job}-0-0.{name}:{COORDINATOR_PORT}"},
        {"name": "QUARK_NUM_PROCESSES", "value": str(hosts)},
        {"name": "QUARK_PROCESS_ID", "valueFrom": {"fieldRef": {
            "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}},
    ]
    return {
        "apiVersion": "jobset.x-k8s.io/v1alpha2",
        "kind": "JobSet",
        "metadata": {"name": name, "annotations": {"alpha.jobset.sigs.k8s.io/exclusive-topology": "cloud.google.com/gke-nodepool"}},
        "spec": {
            "failurePolicy": {"maxRestarts": 3},  # a restarted job resumes from its last checkpoint
            "replicatedJobs": [{
                "name": job,
                "replicas": 1,
                "template": {"spec": {
                    "parallelism": hosts, "completions": hosts, "completionMode": "Indexed", "backoffLimit": 0,
                    "template": {"spec": {
                        "restartPolicy": "Never",
                        "subdomain": name,
                        "nodeSelector": {"cloud.google.com/gke-tpu-accelerator": accelerator,
                                         "cloud.google.com/gke-tpu-topology": topology},
                        "containers": [{
                            "name": "quark",
                            "image": image,
                            "workingDir": WORKING_DIR,
                            "command": ["bash", "-c", command],
                            "env": env,
                            "ports": [{"containerPort": COORDINATOR_PORT}],
                            "resources": {"limits": {"google.com/tpu": chips_per_host}},
                        }],
                    }},
                }},
            }],
        },
    }


def render(name: str, image: str, tpu_type: str, topology: str, train_args: list[str]) -> str:
    """The manifest as YAML, its first line a comment with the command that renders it again."""
    import yaml

    command = ["python", "launch/gke.py", f"--name={name}", f"--image={image}", f"--tpu_type={tpu_type}",
               f"--topology={topology}", "--", *train_args]
    text = yaml.safe_dump(manifest(name, image, tpu_type, topology, train_args), sort_keys=False)
    return f"# Rendered by: {shlex.join(command)}\n{text}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="quark-train", help="JobSet name (also its headless service)")
    parser.add_argument("--image", required=True, help="the image built from the Dockerfile, pushed to a registry")
    parser.add_argument("--tpu_type", choices=sorted(TPU_TYPES), default="v5e")
    parser.add_argument("--topology", default="4x4", help="TPU topology, e.g. 2x4, 4x4, 2x2x2")
    parser.add_argument("--output", default=None, help="where to write the manifest (default: NAME.yaml)")
    parser.add_argument("--dry_run", action="store_true", help="print the manifest and kubectl command only")
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="-- the `quark train` flags")
    args = parser.parse_args(argv)
    train_args = [a for a in args.train_args if a != "--"]
    try:
        if not train_args:
            raise UsageError("give the `quark train` flags after `--`, e.g. -- --gin_file=configs/runs/pretrain.gin")
        text = render(args.name, args.image, args.tpu_type, args.topology, train_args)
    except UsageError as e:
        print(f"launch/gke.py: {e}", file=sys.stderr)
        return EXIT_USAGE
    output = args.output or f"{args.name}.yaml"
    apply = ["kubectl", "apply", "-f", output]
    if args.dry_run:
        sys.stdout.write(text)
        print("# " + shlex.join(apply))
        return 0
    with open(output, "w") as f:
        f.write(text)
    print(shlex.join(apply), flush=True)
    return subprocess.call(apply)


if __name__ == "__main__":
    sys.exit(main())
