#!/usr/bin/env python3
"""GKE: renders a JobSet manifest that runs `quark train` on every host of a TPU slice, and applies it.

    python launch/gke.py --name=quark-1b --image=us-docker.pkg.dev/PROJECT/quark/quark:latest \\
        --tpu_type=v5e --topology=4x4 --dry_run -- --gin_file=configs/runs/pretrain.gin \\
        --gin_file=configs/models/1b.gin --gin.MODEL_DIR="'gs://bucket/runs/1b'" --gin.TRAIN_STEPS=10000 \\
        --gin.MESH_SHAPE="'fsdp=-1'" --gin.BATCH_SIZE=64 --gin.TASK_FEATURE_LENGTHS="{'targets':2048}"

One JobSet, one replicated Job of N pods (N = chips in the topology / chips per host), one pod per TPU host,
indexed completions. Every pod gets the multi-host environment read by ``quark_jax.distributed``:
``QUARK_COORDINATOR_ADDRESS`` (pod 0 through the JobSet's headless service), ``QUARK_NUM_PROCESSES`` and
``QUARK_PROCESS_ID`` (the pod's completion index). ``--dry_run`` prints the manifest and the ``kubectl``
command; otherwise the manifest is written to ``--output`` and applied. ``launch/gke/`` holds rendered
examples.
"""

from __future__ import annotations

import argparse
import math
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


def num_hosts(topology: str, chips_per_host: int) -> int:
    chips = math.prod(int(x) for x in topology.split("x"))
    if chips % chips_per_host:
        raise SystemExit(f"topology {topology} ({chips} chips) is not a whole number of {chips_per_host}-chip hosts")
    return max(1, chips // chips_per_host)


def manifest(name: str, image: str, tpu_type: str, topology: str, train_args: list[str]) -> dict:
    """The JobSet as a Python dict (YAML-ready)."""
    accelerator, chips_per_host = TPU_TYPES[tpu_type]
    hosts = num_hosts(topology, chips_per_host)
    job = "slice"
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


def main(argv: list[str] | None = None) -> int:
    import yaml

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="quark-train", help="JobSet name (also its headless service)")
    parser.add_argument("--image", required=True, help="container image with quark_jax and jax[tpu] installed")
    parser.add_argument("--tpu_type", choices=sorted(TPU_TYPES), default="v5e")
    parser.add_argument("--topology", default="4x4", help="TPU topology, e.g. 2x4, 4x4, 2x2x2")
    parser.add_argument("--output", default=None, help="where to write the manifest (default: NAME.yaml)")
    parser.add_argument("--dry_run", action="store_true", help="print the manifest and kubectl command only")
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="-- the `quark train` flags")
    args = parser.parse_args(argv)
    train_args = [a for a in args.train_args if a != "--"]
    if not train_args:
        raise SystemExit("launch/gke.py: give the `quark train` flags after `--`")
    text = yaml.safe_dump(manifest(args.name, args.image, args.tpu_type, args.topology, train_args), sort_keys=False)
    output = args.output or f"{args.name}.yaml"
    apply = ["kubectl", "apply", "-f", output]
    if args.dry_run:
        print(text)
        print("# " + shlex.join(apply))
        return 0
    with open(output, "w") as f:
        f.write(text)
    print(shlex.join(apply), flush=True)
    return subprocess.call(apply)


if __name__ == "__main__":
    sys.exit(main())
