"""Low-rank adapters (LoRA, Hu et al. 2021) on the attention and MLP projections.

A targeted weight ``W`` (stacked on the leading ``layers`` axis like every block parameter) gets two small
matrices: ``A`` over its *input* (contraction) axes and the rank, ``B`` over the rank and its *output* axes,
so that the adapted weight is

    W' = W + (alpha / rank) · A·B        e.g. wq [L D N H]:  A [L D r],  B [L r N H],  ΔW = einsum("LDr,LrNH->LDNH")

Which axes are inputs is known by parameter name (the same table as weight-only quantization,
:data:`quark_jax.models.layers.CONTRACTION_AXES`): axes before the contraction axes (``layers``, and
``experts`` for MoE weights) are carried by both factors, axes after them are outputs. ``A`` starts
N(0, 1/fan_in) and ``B`` at zero, so an adapted model starts exactly at its base.

Two ways to use adapters, which give the same logits (``tests/training/test_lora.py``):

* :func:`merge` folds ``scale·A·B`` into the base weights: a plain parameter tree, no run-time cost
  (``qj.load`` of a LoRA run directory does this; :func:`quark_jax.runs.save_merged_lora` writes it as a
  normal run directory);
* :func:`apply` leaves the base untouched and puts a :class:`LoRAArray` (base weight + its factors) where
  each targeted weight was. The dense layers project through ``layers.project``, which calls
  :meth:`LoRAArray.project`: ``x·W + scale·(x·A)·B``, never forming ``A·B``; any other reader of the weight
  (MoE experts, an untied head) gets ``weight[...] = W + scale·A·B``, one layer slice at a time within the
  layer scan. Training uses this path (gradients reach ``A`` and ``B`` only; no merged copy of the model is
  materialised), and so can generation with swappable adapters (``qj.load(dir, merge_adapters=False)``).

Adapter trees mirror the parameter tree: ``{"blocks": {"attn": {"wq": {"a": A, "b": B}, ...}}}``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, Float

from quark_jax.models.layers import CONTRACTION_AXES

# Dotted parameter paths matched with re.fullmatch: every attention and MLP projection, dense or MoE.
DEFAULT_TARGETS: tuple[str, ...] = (r".*attn\.w[qkvo]", r".*(mlp|moe)\.w_(gate|up|down)")
# Names that have contraction axes but are not projections LoRA adapts (the embedding is a gather).
_NOT_ADAPTABLE = ("embedding",)
_LETTERS = "abcdefghijklmnopq"  # batch, input and output axes of generated einsum strings ("r" = rank)


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    """Rank, scaling (``alpha / rank``) and target parameters (regexes fully matching dotted paths)."""

    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = DEFAULT_TARGETS

    def __post_init__(self):
        if int(self.rank) != self.rank or self.rank < 1:
            raise ValueError(f"LoRA rank={self.rank!r} must be a positive integer")
        if isinstance(self.targets, str):
            object.__setattr__(self, "targets", (self.targets,))
        object.__setattr__(self, "targets", tuple(self.targets))
        if not self.targets:
            raise ValueError("LoRA targets is empty: name at least one parameter regex")
        for pattern in self.targets:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"LoRA target {pattern!r} is not a valid regex: {e}") from None

    @property
    def scale(self) -> float:
        """The factor ``alpha / rank`` applied to ``A·B``."""
        return float(self.alpha) / int(self.rank)

    def to_dict(self) -> dict:
        return {"rank": int(self.rank), "alpha": float(self.alpha), "targets": list(self.targets)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LoRAConfig:
        return cls(rank=int(d["rank"]), alpha=float(d["alpha"]), targets=tuple(d["targets"]))


# ---- layout of one weight -----------------------------------------------------------------------------
def _dotted(path) -> str:
    return ".".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def _layout(name: str, ndim: int) -> tuple[int, int, int]:
    """``(batch, input, output)`` axis counts of a projection weight named ``name`` (dotted path)."""
    contraction = CONTRACTION_AXES[name.rsplit(".", 1)[-1]]
    positions = sorted(ndim + c for c in contraction)
    if positions != list(range(positions[0], positions[-1] + 1)) or positions[0] < 0:
        raise ValueError(f"LoRA: {name} (ndim {ndim}) has non-contiguous input axes {contraction}")
    return positions[0], len(positions), ndim - positions[-1] - 1


def _delta_equation(nb: int, ni: int, no: int) -> str:
    """The einsum of ``A [batch in r] · B [batch r out] -> [batch in out]`` for the given axis counts."""
    bat, inp, out = _LETTERS[:nb], _LETTERS[nb:nb + ni], _LETTERS[nb + ni:nb + ni + no]
    return f"{bat}{inp}r,{bat}r{out}->{bat}{inp}{out}"


def low_rank_delta(
    a: Float[Array, "*batch_in r"], b: Float[Array, "*batch_r_out"], num_batch: int, scale: float,
) -> Float[Array, "*batch_in_out"]:
    """``scale · A·B`` with the shape of the adapted weight; ``num_batch`` leading axes are shared."""
    nb = num_batch
    ni = a.ndim - nb - 1
    no = b.ndim - nb - 1
    return scale * jnp.einsum(_delta_equation(nb, ni, no), a, b, precision=jax.lax.Precision.HIGHEST)


@struct.dataclass
class LoRAArray:
    """A base weight with its adapter, applied unmerged. The dense layers call :meth:`project` (x·W plus the
    low-rank path x·A·B); any other reader gets ``weight[...] = w + scale·A·B`` (MoE experts, an untied head).

    All three arrays share the leading batch axes (``layers``...), so the layer scan slices them together
    and the low-rank product is formed per layer inside the compiled forward.
    """

    w: Array
    a: Array
    b: Array
    scale: float = struct.field(pytree_node=False)

    def __getitem__(self, index):
        if index is not Ellipsis:
            raise TypeError(f"a LoRAArray is read whole (weight[...]), not with index {index!r}")
        # a: batch+in+1, b: batch+1+out, w: batch+in+out axes; the layer scan slices ``layers`` off all three.
        num_batch = self.a.ndim + self.b.ndim - 2 - self.w.ndim
        delta = low_rank_delta(self.a, self.b, num_batch, self.scale)
        return self.w + delta.astype(self.w.dtype)

    def project(self, equation: str, x: Array, dtype) -> Array:
        """``einsum(equation, x, w) + scale·(x·A)·B``: the adapter applied on the activations, never forming
        ``A·B`` (how the dense layers use an adapted weight; see ``quark_jax.models.layers.project``).

        ``equation`` is the layer's ``"<x axes>,<w axes>-><out axes>"``. The weight's axes split into shared
        ones (also in ``x`` and the output: experts), contracted ones (``x`` only) and output ones; A is
        ``[shared, contracted, r]`` and B ``[shared, r, output]``, the layout :func:`init_adapters` builds.
        """
        inputs, out = equation.split("->")
        x_axes, w_axes = inputs.split(",")
        if self.w.ndim != len(w_axes):  # still stacked on `layers` (read outside the layer scan): merge
            return jnp.einsum(equation, x, self[...].astype(dtype))
        rank = next(c for c in "RQZYXW" if c not in equation)
        shared = [c for c in w_axes if c in x_axes and c in out]
        contracted = [c for c in w_axes if c in x_axes and c not in out]
        produced = [c for c in w_axes if c not in x_axes]
        a_axes = "".join(shared + contracted) + rank
        b_axes = "".join(shared) + rank + "".join(produced)
        h_axes = "".join(c for c in x_axes if c not in contracted) + rank
        y = jnp.einsum(equation, x, self.w.astype(dtype))
        h = jnp.einsum(f"{x_axes},{a_axes}->{h_axes}", x, self.a.astype(dtype))
        return y + self.scale * jnp.einsum(f"{h_axes},{b_axes}->{out}", h, self.b.astype(dtype))

    @property
    def shape(self) -> tuple[int, ...]:
        return self.w.shape

    @property
    def dtype(self):
        return self.w.dtype


# ---- adapters -----------------------------------------------------------------------------------------
def target_paths(params: Any, config: LoRAConfig) -> list[str]:
    """Dotted paths of the parameters ``config.targets`` selects, checked to be adaptable projections.

    Raises ``ValueError`` naming every target regex that matches no parameter, and any matched parameter
    that is not a projection (a norm scale, the embedding).
    """
    flat = jax.tree_util.tree_flatten_with_path(params, is_leaf=lambda x: isinstance(x, LoRAArray))[0]
    names = [_dotted(path) for path, _ in flat]
    unmatched = [t for t in config.targets if not any(re.fullmatch(t, n) for n in names)]
    if unmatched:
        quoted = ", ".join(f"'{t}'" for t in unmatched)
        raise ValueError(f"LoRA target regex(es) {quoted} match no parameter (regexes fully match dotted paths); "
                         f"the model's parameters are: {', '.join(names)}")
    selected = [n for n in names if any(re.fullmatch(t, n) for t in config.targets)]
    adaptable = set(CONTRACTION_AXES) - set(_NOT_ADAPTABLE)
    bad = [n for n in selected if n.rsplit(".", 1)[-1] not in adaptable]
    if bad:
        raise ValueError(f"LoRA targets {list(config.targets)} select {bad}, which are not projection weights "
                         f"(adaptable names: {sorted(adaptable)})")
    return selected


def _set(tree: dict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for p in parents:
        tree = tree.setdefault(p, {})
    tree[last] = value


def _get(tree: Mapping, dotted: str) -> Any:
    for p in dotted.split("."):
        tree = tree[p]
    return tree


def adapter_items(adapters: Mapping) -> list[tuple[str, dict]]:
    """``(dotted weight path, {"a", "b"})`` of an adapter tree."""
    items = []

    def walk(tree, prefix):
        if set(tree) == {"a", "b"}:
            items.append((prefix, tree))
            return
        for k, v in tree.items():
            walk(v, f"{prefix}.{k}" if prefix else str(k))

    walk(adapters, "")
    return items


def init_adapters(params: Any, config: LoRAConfig, key: jax.Array) -> dict:
    """Fresh adapters for the targeted weights of ``params`` (arrays or shape structs; jit/eval_shape safe).

    ``A ~ N(0, 1/fan_in)`` over the weight's input axes, ``B = 0``: the adapted model starts at its base.
    """
    adapters: dict = {}
    for i, name in enumerate(target_paths(params, config)):
        w = _get(params, name)
        nb, ni, _ = _layout(name, len(w.shape))
        fan_in = math.prod(w.shape[nb:nb + ni])
        a_shape = tuple(w.shape[:nb + ni]) + (config.rank,)
        b_shape = tuple(w.shape[:nb]) + (config.rank,) + tuple(w.shape[nb + ni:])
        a = jax.random.normal(jax.random.fold_in(key, i), a_shape, jnp.float32) / math.sqrt(fan_in)
        _set(adapters, name, {"a": a, "b": jnp.zeros(b_shape, jnp.float32)})
    return adapters


def adapter_shardings(adapters: Any, model_shardings: Any) -> dict:
    """Shardings of an adapter tree: ``A`` like its weight's batch and input axes (rank replicated),
    ``B`` like its weight's batch and output axes (rank replicated)."""
    out: dict = {}
    for name, ab in adapter_items(adapters):
        ws = _get(model_shardings, name)
        ni = len(CONTRACTION_AXES[name.rsplit(".", 1)[-1]])
        nb = ab["a"].ndim - ni - 1
        ndim = ab["a"].ndim + ab["b"].ndim - 2 - nb
        spec = tuple(ws.spec) + (None,) * (ndim - len(ws.spec))
        a_spec = jax.sharding.PartitionSpec(*spec[:nb + ni], None)
        b_spec = jax.sharding.PartitionSpec(*spec[:nb], None, *spec[nb + ni:])
        _set(out, name, {"a": jax.sharding.NamedSharding(ws.mesh, a_spec),
                         "b": jax.sharding.NamedSharding(ws.mesh, b_spec)})
    return out


def _check_pair(name: str, w: Any, ab: Mapping, rank: int | None = None) -> int:
    nb, ni, no = _layout(name, len(w.shape))
    a_shape = tuple(w.shape[:nb + ni])
    b_shape = tuple(w.shape[:nb]), tuple(w.shape[nb + ni:])
    r = ab["a"].shape[-1]
    if (tuple(ab["a"].shape[:-1]) != a_shape or tuple(ab["b"].shape[:nb]) != b_shape[0]
            or tuple(ab["b"].shape[nb + 1:]) != b_shape[1] or ab["b"].shape[nb] != r or (rank and r != rank)):
        raise ValueError(f"LoRA adapter of {name}: A {tuple(ab['a'].shape)}, B {tuple(ab['b'].shape)} do not fit "
                         f"the weight {tuple(w.shape)} (rank {rank})")
    return nb


def merge(params: Any, adapters: Mapping, config: LoRAConfig) -> Any:
    """Plain parameters with every adapter folded in: ``W + (alpha/rank)·A·B`` (other parameters shared)."""
    merged = jax.tree.map(lambda x: x, params)  # a new tree of the same leaves
    for name, ab in adapter_items(adapters):
        w = _get(params, name)
        nb = _check_pair(name, w, ab, config.rank)
        _set(merged, name, w + low_rank_delta(ab["a"], ab["b"], nb, config.scale).astype(w.dtype))
    return merged


def apply(params: Any, adapters: Mapping, config: LoRAConfig) -> Any:
    """Unmerged parameters: each adapted weight replaced by a :class:`LoRAArray` (base + factors)."""
    applied = jax.tree.map(lambda x: x, params)
    for name, ab in adapter_items(adapters):
        w = _get(params, name)
        _check_pair(name, w, ab, config.rank)
        _set(applied, name, LoRAArray(w=w, a=ab["a"], b=ab["b"], scale=config.scale))
    return applied


def adapter_bytes(adapters: Any) -> int:
    """Bytes held by an adapter (or any) tree of arrays."""
    return sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(adapters))
