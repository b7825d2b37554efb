"""Stopping on SIGTERM, on one host or on all the hosts of a multi-host job at the same step.

A scheduler that preempts a job (a Spot TPU VM reclaimed, a GKE pod evicted) sends SIGTERM, often to one host
first. The trainer must then checkpoint and stop; on a multi-host job *every* host must stop at the *same* step,
because a checkpoint save is collective: a host that stops alone leaves the others waiting for it in the next
step's collectives or in the save's barriers, until the scheduler kills them all and the checkpoint is lost.

* :class:`PreemptionGuard` turns SIGTERM into a local flag (this process was asked to stop).
* :class:`StopAgreement` turns the local flags of all processes into one decision that every process reads at
  the same point of the training loop: a maximum of the flags over all devices, computed by a tiny jitted
  all-reduce. Every host dispatches the same sequence of programs (train step, flag reduction, train step, ...),
  so every host reads the same value at the same loop iteration and they all stop at the same step.

Why not JAX's own preemption sync point (``multihost_utils.reached_preemption_sync_point``)? Its notifier
installs a C++ SIGTERM handler inside ``jax.distributed.initialize``, which replaces Python's handler (checked
with jax 0.10.2: with the service on, a SIGTERM after initialisation never reaches a Python handler, so a
SIGTERM during start-up or the final save would go unseen) and which in turn is lost as soon as a Python handler
is installed again; and its sync point is agreed in the background from the step ids the hosts have reported,
whereas the reduction here is part of the program every host runs, so the decision cannot race the loop.
``quark_jax.distributed`` therefore turns that service off. The cost is one scalar all-reduce per step, read one
step late so that it never stalls the pipeline (the device has finished it by the time the previous step's
metrics are fetched).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


class PreemptionGuard:
    """Turns SIGTERM into a flag that the training loop reads after each step (main thread only).

    Installed for the whole of a run -- set-up, the loop, the final save and the wait for its commit -- so a
    SIGTERM at any moment, a second one included, only sets the flag: the previous handler (often ``SIG_DFL``,
    which would kill the process mid-save) is neither called nor reinstated until :meth:`restore`."""

    def __init__(self):
        self.requested = False
        self._installed = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
            self._installed = True

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def __call__(self) -> bool:
        return self.requested

    def restore(self) -> None:
        if self._installed:
            # signal.signal returns None for a handler not installed from Python: reinstate the default then.
            signal.signal(signal.SIGTERM, self._previous if self._previous is not None else signal.SIG_DFL)
            self._installed = False


class StopAgreement:
    """Whether to stop, agreed by every process of the job (a single process decides alone, at once).

    Every process must make the same sequence of calls at the same points of the loop: :meth:`now` (blocking)
    where all processes are in step anyway (before the first step, after the last), :meth:`at_step` once per
    training step."""

    def __init__(self, local: Callable[[], bool]):
        self._local = local
        self._pending: jax.Array | None = None
        self._reduce = None
        if jax.process_count() > 1:
            mesh = Mesh(np.asarray(jax.devices()), ("processes",))
            self._sharding = NamedSharding(mesh, PartitionSpec("processes"))
            self._reduce = jax.jit(jnp.max, out_shardings=NamedSharding(mesh, PartitionSpec()))

    def _dispatch(self) -> jax.Array:
        """Starts the all-reduce of this process's flag (one entry per local device); returns its result."""
        flags = np.full((jax.local_device_count(),), int(self._local()), np.int32)
        return self._reduce(jax.make_array_from_process_local_data(self._sharding, flags))

    def now(self) -> bool:
        """Whether any process has been asked to stop, at this point (blocks until every process gets here)."""
        if self._reduce is None:
            return self._local()
        self._pending = None  # a lagged reduction in flight is superseded by this one
        return bool(jax.device_get(self._dispatch()))

    def at_step(self) -> bool:
        """Whether to stop after the step just dispatched. Multi-host: the reduction started at the previous
        call (every process reads the same value, so all stop at the same step, one step after the earliest
        SIGTERM was seen); a single process reads its flag at once."""
        if self._reduce is None:
            return self._local()
        previous, self._pending = self._pending, self._dispatch()
        return previous is not None and bool(jax.device_get(previous))
