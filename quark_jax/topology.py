"""TPU slices to compile for on any machine: the devices of a named topology (``v5e:16x16``) and the HBM of
each chip kind.

libtpu (the TPU compiler and runtime, what ``jax[tpu]`` installs) describes a slice without any TPU being
present: ``jax.experimental.topologies.get_topology_desc`` returns its devices, and a program lowered on a
mesh of them compiles with XLA's TPU compiler. This is how ``quark plan --topology`` and ``quark train
--compile_only`` check a pod configuration before the pod is rented. libtpu is only needed for that, so it is
imported here, lazily, and a CPU user never needs it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re
from typing import Any

from quark_jax import native_stderr

LIBTPU_REQUIREMENT = "libtpu==0.0.42.1"  # what jax[tpu]==0.10.2 pins
GIB = 2**30

# HBM per chip, from the Cloud TPU system-architecture pages (v4: 32 GiB HBM2; v5e: 16 GiB HBM2;
# v5p: 95 GiB HBM2e; v6e Trillium: 32 GiB HBM), with the device kind libtpu reports for each.
HBM_BYTES = {"v4": 32 * GIB, "v5e": 16 * GIB, "v5p": 95 * GIB, "v6e": 32 * GIB}
DEVICE_KINDS = {"v4": "TPU v4", "v5e": "TPU v5 lite", "v5p": "TPU v5", "v6e": "TPU v6 lite"}

_NAME = re.compile(r"^(v4|v5e|v5p|v6e):(\d+(?:x\d+){1,2})$")
EXAMPLES = "v5e:4x4, v5e:16x16, v4:2x2x4, v5p:4x4x8, v6e:8x8"


class TopologyError(ValueError):
    """A topology name libtpu cannot describe, or libtpu missing; the message names the fix."""


@dataclasses.dataclass(frozen=True)
class Topology:
    """A TPU slice: its name (``v5e:4x4``), chip kind (``v5e``) and devices (``jax.Device``\\ s to build a
    mesh from; they cannot run anything, only be compiled for)."""

    name: str
    chip: str
    chips: int
    devices: tuple[Any, ...]

    @property
    def num_devices(self) -> int:
        return len(self.devices)

    @property
    def hbm_bytes(self) -> int:
        """HBM of one device: a chip's, split between its devices where libtpu shows each TensorCore as one
        (``v4:2x2x1`` is 4 chips and 8 devices)."""
        return HBM_BYTES[self.chip] * self.chips // self.num_devices


def parse_name(name: str) -> tuple[str, tuple[int, ...]]:
    """``"v5e:4x4"`` -> ``("v5e", (4, 4))``; a :class:`TopologyError` naming the expected form otherwise."""
    match = _NAME.match(name.strip())
    if not match:
        raise TopologyError(f"--topology {name!r}: expected CHIP:SHAPE with CHIP one of {sorted(HBM_BYTES)}, "
                            f"e.g. {EXAMPLES}")
    dims = tuple(int(d) for d in match.group(2).split("x"))
    if min(dims) < 1:
        raise TopologyError(f"--topology {name!r}: every dimension must be >= 1")
    return match.group(1), dims


def topology(name: str) -> Topology:
    """The devices of TPU slice ``name`` (``v5e:16x16``) from libtpu, on any machine."""
    chip, dims = parse_name(name)
    if importlib.util.find_spec("libtpu") is None:
        raise TopologyError(f"--topology {name}: compiling for a TPU needs libtpu; pip install {LIBTPU_REQUIREMENT}")
    from jax.experimental import topologies

    # libtpu takes /tmp/libtpu_lockfile for the life of the first process that loads it (any JAX process on
    # a machine with libtpu installed), so a second process could not describe a topology while, say, a
    # training run is alive. Describing and compiling use no TPU, so sharing is safe here.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    with native_stderr.filtered():  # libtpu's warnings about a real TPU VM's environment
        try:
            desc = topologies.get_topology_desc(platform="tpu", topology_name=name.strip())
            error = None
        except Exception as e:  # noqa: BLE001 -- libtpu raises bare RuntimeErrors/XlaRuntimeErrors
            error = e
    if error is not None:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TopologyError(f"--topology {name}: libtpu cannot describe this slice ({first}); "
                            f"try one of {EXAMPLES}") from None
    devices = tuple(desc.devices)
    if devices and devices[0].device_kind != DEVICE_KINDS[chip]:
        raise TopologyError(f"--topology {name}: libtpu describes {devices[0].device_kind!r} chips, "
                            f"not {DEVICE_KINDS[chip]!r}")
    return Topology(name=name.strip(), chip=chip, chips=math.prod(dims), devices=devices)
