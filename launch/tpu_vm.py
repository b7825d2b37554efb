#!/usr/bin/env python3
"""Cloud TPU VM pod slices: create, copy the code to every worker, run `quark train` on all, tear down.

    python launch/tpu_vm.py create   --name=quark-v5e-16 --zone=us-west4-a --accelerator_type=v5litepod-16
    python launch/tpu_vm.py copy     --name=quark-v5e-16 --zone=us-west4-a
    python launch/tpu_vm.py run      --name=quark-v5e-16 --zone=us-west4-a -- \\
        --gin_file=configs/runs/pretrain.gin --gin_file=configs/models/1b.gin \\
        --gin.MODEL_DIR="'gs://bucket/runs/1b'" --gin.TRAIN_STEPS=10000 --gin.MESH_SHAPE="'fsdp=-1'" \\
        --gin.BATCH_SIZE=64 --gin.TASK_FEATURE_LENGTHS="{'targets':2048}"
    python launch/tpu_vm.py teardown --name=quark-v5e-16 --zone=us-west4-a

``copy`` packs the working tree (``git ls-files``: tracked files only) into a tarball, copies it to every
worker (``--worker=all``) and installs the pinned requirements plus ``jax[tpu]`` there. ``run`` starts the
same ``quark train`` command on every worker at once; each process joins the job through
``QUARK_DISTRIBUTED=auto`` (``jax.distributed.initialize()`` reads the TPU metadata). ``--dry_run`` prints
every command instead of running it. Needs the ``gcloud`` CLI, logged in, for anything but ``--dry_run``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REMOTE_DIR = "quark_jax"
TARBALL = "/tmp/quark_jax_code.tar.gz"


def _gcloud(args: argparse.Namespace, *parts: str) -> list[str]:
    command = ["gcloud", "compute", "tpus", "tpu-vm", *parts, f"--zone={args.zone}"]
    if args.project:
        command.append(f"--project={args.project}")
    return command


def plan(args: argparse.Namespace) -> list[list[str]]:
    """The commands a subcommand runs, in order."""
    if args.action == "create":
        command = _gcloud(args, "create", args.name, f"--accelerator-type={args.accelerator_type}",
                          f"--version={args.version}")
        if args.spot:
            command.append("--spot")
        return [command]
    if args.action == "copy":
        install = (f"mkdir -p {REMOTE_DIR} && tar xzf ~/{os.path.basename(TARBALL)} -C {REMOTE_DIR} && cd {REMOTE_DIR} && "
                   "python3 -m pip install -q -r requirements.txt && python3 -m pip install -q -e . "
                   f"&& python3 -m pip install -q 'jax[tpu]=={args.jax_version}'")
        return [
            ["bash", "-c", f"cd {shlex.quote(REPO)} && git ls-files -z | xargs -0 tar czf {TARBALL}"],
            _gcloud(args, "scp", TARBALL, f"{args.name}:~/", "--worker=all"),
            _gcloud(args, "ssh", args.name, "--worker=all", f"--command={install}"),
        ]
    if args.action == "run":
        train_args = args.train_args
        if not train_args:
            raise SystemExit("launch/tpu_vm.py run: give the `quark train` flags after `--`")
        remote = f"cd {REMOTE_DIR} && QUARK_DISTRIBUTED=auto python3 -m quark_jax.cli train {shlex.join(train_args)}"
        return [_gcloud(args, "ssh", args.name, "--worker=all", f"--command={remote}")]
    if args.action == "teardown":
        return [_gcloud(args, "delete", args.name, "--quiet")]
    raise SystemExit(f"unknown action {args.action!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["create", "copy", "run", "teardown"])
    parser.add_argument("--name", required=True, help="TPU VM name")
    parser.add_argument("--zone", required=True)
    parser.add_argument("--project", default=None)
    parser.add_argument("--accelerator_type", default="v5litepod-16", help="e.g. v5litepod-16, v4-32, v5p-64")
    parser.add_argument("--version", default="v2-alpha-tpuv5-lite", help="TPU VM software version")
    parser.add_argument("--jax_version", default="0.10.2", help="jax[tpu] version installed by `copy`")
    parser.add_argument("--spot", action="store_true", help="create a Spot (preemptible) slice")
    parser.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    args.train_args = argv[split + 1:]
    for command in plan(args):
        print(shlex.join(command), flush=True)
        if not args.dry_run:
            code = subprocess.call(command)
            if code:
                return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
