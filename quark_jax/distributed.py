"""Multi-host start-up: ``jax.distributed.initialize`` from flags or the environment.

Every process of a multi-host job runs the same ``quark train`` command. Before JAX touches a device, each
calls :func:`initialize`, which joins the job when

* flags say so: ``--coordinator_address=HOST:PORT --num_processes=N --process_id=I``, or
* the environment does: ``QUARK_COORDINATOR_ADDRESS``, ``QUARK_NUM_PROCESSES``, ``QUARK_PROCESS_ID`` (what
  ``launch/local.py`` and the GKE manifests set), or
* ``QUARK_DISTRIBUTED=auto``, or a multi-worker Cloud TPU VM (``TPU_WORKER_HOSTNAMES`` lists several hosts):
  ``jax.distributed.initialize()`` with no arguments, which reads the TPU metadata (and JobSet's environment
  on GKE) by itself.

On the CPU the cross-process collectives go through gloo. After initialisation ``jax.devices()`` is the
global device list, ``jax.process_index()`` picks this host's data shard, and every host takes part in
checkpoint writes and restores (orbax coordinates them); only process 0 writes metrics and run files. A
SIGTERM that reaches any host stops all of them at the same step, with one checkpoint
(:mod:`quark_jax.training.preemption`).
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

ENV_ADDRESS = "QUARK_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "QUARK_NUM_PROCESSES"
ENV_PROCESS_ID = "QUARK_PROCESS_ID"
ENV_MODE = "QUARK_DISTRIBUTED"


def settings_from(coordinator_address: str | None = None, num_processes: int | None = None,
                  process_id: int | None = None, environ: dict | None = None) -> dict | None:
    """The arguments for ``jax.distributed.initialize`` (``{}`` = auto-detect), or None for a single process.

    Flags win over the environment. Raises ``ValueError`` naming what is missing or inconsistent.
    """
    env = os.environ if environ is None else environ
    address = coordinator_address or env.get(ENV_ADDRESS)
    num = num_processes if num_processes is not None else env.get(ENV_NUM_PROCESSES)
    pid = process_id if process_id is not None else env.get(ENV_PROCESS_ID)
    if address or num is not None or pid is not None:
        missing = [name for name, value in (("--coordinator_address / " + ENV_ADDRESS, address),
                                            ("--num_processes / " + ENV_NUM_PROCESSES, num),
                                            ("--process_id / " + ENV_PROCESS_ID, pid)) if value in (None, "")]
        if missing:
            raise ValueError(f"multi-host start-up needs all three settings; missing {', '.join(missing)}")
        num, pid = int(num), int(pid)
        if not 0 <= pid < num:
            raise ValueError(f"process_id={pid} must be in [0, num_processes={num})")
        return {"coordinator_address": address, "num_processes": num, "process_id": pid}
    hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
    if env.get(ENV_MODE) == "auto" or len(hosts) > 1:
        return {}
    return None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
    """Joins the multi-host job described by flags or environment; returns whether it did.

    Must run before anything asks JAX for devices. A single process (no settings) is left alone.
    """
    settings = settings_from(coordinator_address, num_processes, process_id)
    if settings is None:
        return False
    import jax

    if settings and jax.config.jax_platforms in (None, "", "cpu") and not _has_accelerator_env():
        # CPU processes exchange collectives over gloo (the default CPU collectives are single-process).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # JAX's preemption service installs a C++ SIGTERM handler that takes the signal away from Python's; the
    # trainer's own handler and the hosts' agreement on the step to stop at (quark_jax.training.preemption)
    # take its place.
    jax.config.update("jax_enable_preemption_service", False)
    jax.distributed.initialize(**settings)
    log.info("joined multi-host job: process %d of %d, %d local / %d global devices", jax.process_index(),
             jax.process_count(), jax.local_device_count(), jax.device_count())
    return True


def _has_accelerator_env() -> bool:
    return bool(os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("CUDA_VISIBLE_DEVICES"))
