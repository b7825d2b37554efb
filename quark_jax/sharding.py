"""Device mesh, logical axis names and the one rules table that maps them to mesh axes.

Every weight and every constrained activation in quark_jax carries *logical* axis names (``embed``,
``heads``, ``batch`` ...). A single table of rules turns them into mesh axes (``data``, ``fsdp``,
``tensor``, ``expert``). Changing a parallelism strategy means changing the mesh shape or the rules, never
the model code.

The mesh always has all four axes (unused ones have size 1), so the rules table is one constant and a
``MESH_SHAPE`` such as ``"data=2,fsdp=2,tensor=2"`` only says how many devices each axis gets.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
import math
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# ---- Mesh axes -------------------------------------------------------------------------------------
DATA = "data"  # pure data parallelism: parameters replicated
FSDP = "fsdp"  # data parallelism with parameters and optimizer state sharded (ZeRO-3 style)
TENSOR = "tensor"  # Megatron-style tensor parallelism over heads and the MLP hidden dimension
EXPERT = "expert"  # expert parallelism for Mixture-of-Experts layers
MESH_AXES = (DATA, FSDP, TENSOR, EXPERT)

# ---- Logical axis names: weights -------------------------------------------------------------------
VOCAB = "vocab"
EMBED = "embed"
HEADS = "heads"
KV_HEADS = "kv_heads"
HEAD_DIM = "head_dim"
MLP = "mlp"
LAYERS = "layers"
EXPERTS = "expert"
NORM = "norm"  # RMSNorm scales: small, replicated

# ---- Logical axis names: activations ---------------------------------------------------------------
BATCH = "batch"
LENGTH = "length"
ACT_EMBED = "act_embed"
ACT_HEADS = "act_heads"
ACT_KV_HEADS = "act_kv_heads"
ACT_MLP = "act_mlp"
ACT_VOCAB = "act_vocab"
# MoE activations: tokens dispatched to experts are laid out [experts, batch, capacity, ...] with experts on
# the `expert` mesh axis and the batch on the remaining data axes (the GShard all-to-all layout).
ACT_EXPERT = "act_expert"
EXPERT_BATCH = "expert_batch"

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

# One table, as data. A logical name may map to several mesh axes (sharded over their product).
DEFAULT_RULES: Rules = (
    (BATCH, (DATA, FSDP, EXPERT)),
    (LENGTH, None),
    (ACT_EMBED, None),
    (ACT_HEADS, TENSOR),
    (ACT_KV_HEADS, TENSOR),
    (ACT_MLP, TENSOR),
    (ACT_VOCAB, TENSOR),
    (VOCAB, TENSOR),
    (EMBED, FSDP),
    (HEADS, TENSOR),
    (KV_HEADS, TENSOR),
    (HEAD_DIM, None),
    (MLP, TENSOR),
    (LAYERS, None),
    (EXPERTS, EXPERT),
    (NORM, None),
    # MoE additions
    (ACT_EXPERT, EXPERT),
    (EXPERT_BATCH, (DATA, FSDP)),
)

log = logging.getLogger(__name__)


# ---- Mesh ------------------------------------------------------------------------------------------
def parse_mesh_shape(spec: str, num_devices: int) -> dict[str, int]:
    """Parses ``"data=2,fsdp=-1,tensor=1"`` into sizes for all four mesh axes.

    At most one axis may be ``-1``: it takes the devices that remain. Axes not named get size 1.
    """
    sizes = {axis: 1 for axis in MESH_AXES}
    wildcard = None
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in sizes:
            raise ValueError(
                f"MESH_SHAPE={spec!r}: bad entry {part!r}; expected NAME=SIZE with NAME in {MESH_AXES}"
            )
        size = int(value)
        if size == -1:
            if wildcard is not None:
                raise ValueError(f"MESH_SHAPE={spec!r}: only one axis may be -1")
            wildcard = name
        elif size < 1:
            raise ValueError(f"MESH_SHAPE={spec!r}: size of {name!r} must be >= 1 or -1")
        sizes[name] = size
    fixed = math.prod(v for k, v in sizes.items() if k != wildcard)
    if wildcard is not None:
        if num_devices % fixed:
            raise ValueError(
                f"MESH_SHAPE={spec!r}: {num_devices} devices are not divisible by the fixed axes ({fixed})"
            )
        sizes[wildcard] = num_devices // fixed
    if math.prod(sizes.values()) != num_devices:
        raise ValueError(
            f"MESH_SHAPE={spec!r} asks for {math.prod(sizes.values())} devices but {num_devices} are "
            "available; use -1 on one axis to take the rest"
        )
    return sizes


def make_mesh(spec: str = "data=-1", devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds a mesh with axes ``(data, fsdp, tensor, expert)`` from a ``MESH_SHAPE`` string.

    Axis types are ``Auto``: quark_jax uses jit with explicit in/out shardings and logical sharding
    constraints (the t5x/MaxText style), not JAX 0.10's sharding-in-types default.
    """
    devices = list(devices if devices is not None else jax.devices())
    sizes = parse_mesh_shape(spec, len(devices))
    shape = tuple(sizes[a] for a in MESH_AXES)
    auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    if len(devices) == len(jax.devices()):
        return jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=devices)
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=auto)


# ---- Logical names -> PartitionSpec ----------------------------------------------------------------
def logical_to_spec(
    names: Sequence[str | None], rules: Rules, mesh: Mesh, shape: Sequence[int] | None = None
) -> PartitionSpec:
    """Maps logical axis names to a PartitionSpec using ``rules``.

    A mesh axis is used at most once per array, and (when ``shape`` is given) an axis whose size does not
    divide the dimension is dropped, so e.g. one KV head stays replicated on a tensor-parallel mesh
    instead of failing to compile.
    """
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for dim, name in enumerate(names):
        if name is None:
            spec.append(None)
            continue
        if name not in table:
            raise KeyError(f"logical axis {name!r} has no rule; add it to the rules table ({[r[0] for r in rules]})")
        target = table[name]
        axes = (target,) if isinstance(target, str) else tuple(target or ())
        chosen = []
        size = 1
        for axis in axes:
            if axis in used or mesh.shape[axis] == 1:
                continue
            if shape is not None and shape[dim] % (size * mesh.shape[axis]):
                continue
            chosen.append(axis)
            size *= mesh.shape[axis]
        used.update(chosen)
        spec.append(None if not chosen else chosen[0] if len(chosen) == 1 else tuple(chosen))
    return PartitionSpec(*spec)


# ---- The active mesh + rules, for activation constraints inside the model --------------------------
@dataclasses.dataclass(frozen=True)
class _Context:
    mesh: Mesh
    rules: Rules


_ACTIVE: contextvars.ContextVar[_Context | None] = contextvars.ContextVar("quark_sharding", default=None)


@contextlib.contextmanager
def activate(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Iterator[None]:
    """Within this context, :func:`constrain` places activations on ``mesh`` according to ``rules``."""
    token = _ACTIVE.set(_Context(mesh, rules))
    try:
        with jax.set_mesh(mesh):
            yield
    finally:
        _ACTIVE.reset(token)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Constrains an activation's sharding by logical names; a no-op outside :func:`activate`."""
    ctx = _ACTIVE.get()
    if ctx is None:
        return x
    if len(names) != x.ndim:
        raise ValueError(f"constrain: {len(names)} names {tuple(names)} for an array of shape {x.shape}")
    spec = logical_to_spec(names, ctx.rules, ctx.mesh, x.shape)
    return jax.lax.with_sharding_constraint(x, NamedSharding(ctx.mesh, spec))


# ---- Shardings for parameter trees -----------------------------------------------------------------
def _axes_of(variable: nnx.Variable) -> tuple[str | None, ...]:
    names = variable.get_metadata().get("out_sharding")
    if names is None:
        return (None,) * np.ndim(variable.get_value())
    return tuple(names)


def state_shardings(state: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Any:
    """NamedShardings for an ``nnx.State`` (abstract or concrete) from each Variable's logical names."""

    def one(variable):
        if not isinstance(variable, nnx.Variable):
            return NamedSharding(mesh, PartitionSpec())
        spec = logical_to_spec(_axes_of(variable), rules, mesh, np.shape(variable.get_value()))
        return variable.replace(NamedSharding(mesh, spec))

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def replicated(mesh: Mesh) -> NamedSharding:
    """A fully replicated sharding on ``mesh``."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, rules: Rules = DEFAULT_RULES, ndim: int = 2) -> NamedSharding:
    """Sharding of a ``[batch, length, ...]`` input array: batch split over the data-parallel axes."""
    names = (BATCH,) + (None,) * (ndim - 1)
    return NamedSharding(mesh, logical_to_spec(names, rules, mesh))


def used_logical_names(state: Any) -> set[str]:
    """Every logical axis name that the Variables of ``state`` carry (for the rules-coverage test)."""
    names: set[str] = set()
    for variable in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, nnx.Variable)):
        if isinstance(variable, nnx.Variable):
            names.update(n for n in _axes_of(variable) if n is not None)
    return names


def describe_rules(rules: Rules = DEFAULT_RULES) -> str:
    """The rules table as aligned text, printed at start-up."""
    width = max(len(name) for name, _ in rules)
    return "\n".join(f"  {name:<{width}} -> {target}" for name, target in rules)
