"""Ahead-of-time compilation of a run's train step for a TPU slice, on any machine.

:func:`compile_for_topology` builds the run's sharded training (:func:`quark_jax.training.sharded.build`, the
step the Trainer runs) on a mesh of a :class:`~quark_jax.topology.Topology`'s devices, lowers the step over
abstract inputs (``ShapeDtypeStruct``\\ s carrying their ``NamedSharding``\\ s: nothing is allocated) and
compiles it with XLA's TPU compiler. The :class:`CompileReport` holds what XLA says one device needs
(``memory_analysis``) and computes (``cost_analysis``), and whether that fits in the chip's HBM.
"""

from __future__ import annotations

import dataclasses
import math
import time

import jax

from quark_jax import sharding as sh
from quark_jax.topology import Topology
from quark_jax.training import sharded
from quark_jax.training.config import TrainConfig
from quark_jax.training.objectives.lm import LanguageModel


class DoesNotFit(Exception):
    """XLA's TPU compiler refused the step because one device would need more HBM than it has; the message
    is the compiler's, with the bytes it needed."""


@dataclasses.dataclass
class CompileReport:
    """XLA's figures for one device of the compiled train step (bytes per device)."""

    topology: str
    num_devices: int
    mesh: dict[str, int]
    batch_size: int
    seq_len: int
    argument_bytes: int  # parameters, optimizer state and the batch
    output_bytes: int  # the new state and the metrics
    alias_bytes: int  # outputs written over donated arguments (counted once)
    temp_bytes: int  # everything else live during the step: activations, gradients, gathered weights
    hbm_bytes: int  # HBM of one device
    flops: float  # XLA's cost_analysis: the body of a loop (the scanned layer stack) is counted once
    compile_s: float

    @property
    def total_bytes(self) -> int:
        """Bytes one device holds at the step's peak: arguments, outputs not aliased to them, temporaries."""
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.hbm_bytes

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "total_bytes": self.total_bytes, "fits": self.fits}

    def describe(self, planned_bytes: int | None = None) -> str:
        """A table of XLA's bytes per device (beside the planner's total when given), the verdict and FLOPs."""
        gib = lambda n: f"{n / 2**30:9.3f} GiB"
        lines = [
            f"compiled for {self.topology} ({self.num_devices} devices) in {self.compile_s:.1f} s: mesh "
            f"{self.mesh}, batch {self.batch_size} x {self.seq_len} tokens",
            "XLA memory_analysis, per device:",
            f"  arguments (state, batch)   {gib(self.argument_bytes)}",
            f"  outputs (not aliased)      {gib(self.output_bytes - self.alias_bytes)}",
            f"  temporaries                {gib(self.temp_bytes)}",
            f"  peak                       {gib(self.total_bytes)}"
            + (f"   (planner: {planned_bytes / 2**30:.3f} GiB)" if planned_bytes is not None else ""),
            f"  HBM per device             {gib(self.hbm_bytes)}",
            f"  {'fits' if self.fits else 'DOES NOT FIT'}: peak is {self.total_bytes / self.hbm_bytes:.0%} of HBM",
            f"XLA cost_analysis: {self.flops:.4g} FLOPs per device per step (the scanned layer stack counted once)",
        ]
        return "\n".join(lines)


def topology_mesh(mesh_shape: str, topology: Topology) -> jax.sharding.Mesh:
    """The run's mesh over every device of ``topology``, laid out on the physical slice by ``jax.make_mesh``
    exactly as :func:`quark_jax.sharding.make_mesh` does with all of a pod's devices."""
    sizes = sh.parse_mesh_shape(mesh_shape, topology.num_devices)
    return jax.make_mesh(tuple(sizes[a] for a in sh.MESH_AXES), sh.MESH_AXES, devices=topology.devices,
                         axis_types=(jax.sharding.AxisType.Auto,) * len(sh.MESH_AXES))


def compile_for_topology(config: TrainConfig, topology: Topology, rules: sh.Rules = sh.DEFAULT_RULES
                         ) -> CompileReport:
    """Compiles ``config``'s train step (its model, mesh, optimizer, batch and sequence length) for
    ``topology`` without running it. Language modelling only: other objectives load frozen models from disk.
    A bad ``MESH_SHAPE`` for the slice raises ``ValueError`` naming it; a step whose temporaries alone exceed
    a device's HBM raises :class:`DoesNotFit` (the TPU compiler stops there)."""
    if config.objective is not None and not isinstance(config.objective, LanguageModel):
        raise ValueError(f"compiling ahead of time covers language modelling (configs/runs/pretrain.gin); this "
                         f"run's objective is {type(config.objective).__name__}")
    batch_size = config.data.batch_size
    seq_len = config.data.task_feature_lengths["targets"]
    mesh = topology_mesh(config.mesh_shape, topology)
    start = time.perf_counter()
    run = sharded.build(config, mesh, rules=rules)
    try:
        compiled = run.compile(batch_size, seq_len)
    except jax.errors.JaxRuntimeError as e:
        message = str(e).strip()
        if not message.startswith("RESOURCE_EXHAUSTED"):
            raise
        detail = message.removeprefix("RESOURCE_EXHAUSTED:").strip().splitlines()[0]
        raise DoesNotFit(f"does not fit on {topology.name} (mesh {dict(mesh.shape)}, batch {batch_size} x "
                         f"{seq_len}): XLA: {detail}") from None
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # one dict per program in older JAX
    return CompileReport(
        topology=topology.name, num_devices=topology.num_devices, mesh=dict(mesh.shape), batch_size=batch_size,
        seq_len=seq_len, argument_bytes=memory.argument_size_in_bytes, output_bytes=memory.output_size_in_bytes,
        alias_bytes=memory.alias_size_in_bytes, temp_bytes=memory.temp_size_in_bytes,
        hbm_bytes=topology.hbm_bytes, flops=float(cost.get("flops", math.nan)), compile_s=compile_s,
    )
