#!/usr/bin/env python3
"""Local multi-process launcher: N processes on this machine form one multi-host JAX job.

    python launch/local.py --num_processes=2 --devices_per_process=4 -- \\
        quark train --gin_file=configs/runs/pretrain_tiny.gin --gin.MODEL_DIR="'/tmp/mh'" --gin.TRAIN_STEPS=20 \\
        --gin.MESH_SHAPE="'data=2,fsdp=4'"

Each process gets ``QUARK_COORDINATOR_ADDRESS`` (127.0.0.1 and a free port), ``QUARK_NUM_PROCESSES`` and
``QUARK_PROCESS_ID`` (read by ``quark_jax.distributed``) and, with ``--devices_per_process``, that many forced
CPU devices. Output lines are prefixed with ``[i]``. If one process fails the others are stopped, and the exit
status is the first non-zero one. ``--dry_run`` prints each process's environment and command, runs nothing.
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import subprocess
import sys
import threading


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def commands(args: argparse.Namespace) -> list[tuple[dict[str, str], list[str]]]:
    """(extra environment, argv) of every process."""
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise SystemExit("launch/local.py: give the command after `--`, e.g. -- quark train --gin_file=...")
    if command[0] == "quark":  # the console script may not be on PATH: run the module with this Python
        command = [sys.executable, "-m", "quark_jax.cli", *command[1:]]
    port = args.port or free_port()
    result = []
    for i in range(args.num_processes):
        env = {"QUARK_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "QUARK_NUM_PROCESSES": str(args.num_processes),
               "QUARK_PROCESS_ID": str(i)}
        if args.devices_per_process:
            env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices_per_process}"
            env["JAX_PLATFORMS"] = "cpu"
        result.append((env, command))
    return result


def _pump(i: int, stream, sink) -> None:
    for line in stream:
        sink.write(f"[{i}] {line}")
        sink.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_processes", type=int, default=2)
    parser.add_argument("--devices_per_process", type=int, default=0, help="forced CPU devices per process (0 = leave)")
    parser.add_argument("--port", type=int, default=0, help="coordinator port (0 = a free one)")
    parser.add_argument("--dry_run", action="store_true", help="print what would run, run nothing")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- the command every process runs")
    args = parser.parse_args(argv)
    if args.num_processes < 1:
        raise SystemExit("launch/local.py: --num_processes must be >= 1")
    plan = commands(args)
    if args.dry_run:
        for env, command in plan:
            print(" ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + " " + shlex.join(command))
        return 0
    procs, pumps = [], []
    for i, (env, command) in enumerate(plan):
        p = subprocess.Popen(command, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
        procs.append(p)
        pumps.append(threading.Thread(target=_pump, args=(i, p.stdout, sys.stdout), daemon=True))
        pumps[-1].start()
    status = 0
    pending = set(range(len(procs)))
    while pending:
        for i in list(pending):
            try:
                code = procs[i].wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                continue
            pending.discard(i)
            if code and not status:
                status = code
                for j in pending:  # one failed: the collective job cannot finish
                    procs[j].terminate()
    for t in pumps:
        t.join(timeout=5)
    return status


if __name__ == "__main__":
    sys.exit(main())
