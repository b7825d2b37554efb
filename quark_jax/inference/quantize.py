"""Weight-only post-training quantization: int8 with per-channel scales, int4 with grouped scales.

Why not qwix (Google's quantization library, which MaxText uses)? qwix 0.1.8 quantizes a weight lazily at
the einsum that consumes it. In quark_jax the layers are stacked on a ``layers`` axis and applied inside a
``lax.scan``, so the einsum sees a one-layer slice while the parameter's metadata still names the stacked
axes, and qwix's PTQ provider fails (``update_sharding``: ``shape=(64, 4, 16)
spec=('layers', 'embed', 'heads', 'head_dim')``, checked 2026-11-25). It would also leave the embedding
(a gather) unquantized and its quantized state would not be a plain pytree we can checkpoint with orbax.
The scheme here is small instead: a :class:`QArray` pytree (integer values + float32 scales) stands in for a
weight's value inside the ordinary parameter tree. Its ``[...]`` dequantizes, which is exactly how every
layer reads a weight (``self.wq[...]``), so the model code is untouched, the scan slices the integer
values layer by layer, and the dequantization happens inside the compiled function next to its matmul.

Scales are symmetric (no zero point). For each weight the *contraction* axes are known by name: int8 keeps
one scale per output channel (max |w| over the contraction axes / 127); int4 splits the last contraction
axis into groups of ``group_size`` and keeps one scale per group and channel (max |w| / 7), with two 4-bit
values packed per byte (an int4 weight whose last axis is odd keeps one value per int8).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx, struct
from jaxtyping import Array, Float

from quark_jax.models.layers import CONTRACTION_AXES

MODES = ("int8", "int4")

@struct.dataclass
class QArray:
    """A quantized weight: ``q`` (int8, or uint8 holding two int4 values along its last axis) and float32
    ``scale``.

    ``q[...]``-style access (``qarray[...]``) returns the float32 weight, which is how NNX layers read
    parameter values, so a QArray can replace a weight's value in a parameter tree.
    """

    q: Array
    scale: Float[Array, "..."]
    bits: int = struct.field(pytree_node=False)
    axis: int = struct.field(pytree_node=False)  # the (negative) contraction axis that int4 groups
    group_size: int = struct.field(pytree_node=False)  # 0: one scale per channel (int8)

    def dequantize(self) -> Float[Array, "..."]:
        """The float32 weight."""
        if self.bits == 8:
            return self.q.astype(jnp.float32) * self.scale
        q = self.q
        if q.dtype == jnp.uint8:  # two int4 values per byte along the last axis, low nibble first
            q = jax.lax.bitcast_convert_type(q, jnp.int4)  # [..., n, 2]
            q = q.reshape(q.shape[:-2] + (2 * q.shape[-2],))
        weight = q.astype(jnp.float32) * self.scale  # [..., C/g, g, ...]
        p = weight.ndim + self.axis  # the in-group axis
        shape = weight.shape
        return weight.reshape(shape[: p - 1] + (shape[p - 1] * shape[p],) + shape[p + 1:])  # [..., C, ...]

    def __getitem__(self, index):
        if index is not Ellipsis:
            raise TypeError(f"a QArray is read whole (weight[...]), not with index {index!r}")
        return self.dequantize()

    @property
    def nbytes(self) -> int:
        return int(self.q.size * self.q.dtype.itemsize + self.scale.size * self.scale.dtype.itemsize)


def quantize_array(w: Float[Array, "..."], bits: int, contraction_axes: tuple[int, ...], group_size: int = 32) -> QArray:
    """Quantizes one weight (see the module docstring for the scheme)."""
    w = jnp.asarray(w, jnp.float32)
    if bits == 8:
        scale = jnp.max(jnp.abs(w), axis=contraction_axes, keepdims=True) / 127.0
        scale = jnp.where(scale == 0, 1.0, scale)
        q = jnp.clip(jnp.round(w / scale), -127, 127).astype(jnp.int8)
        return QArray(q=q, scale=scale, bits=8, axis=contraction_axes[-1], group_size=0)
    if bits != 4:
        raise ValueError(f"bits={bits}: only 8 and 4 are supported")
    axis = contraction_axes[-1]
    p = w.ndim + axis
    size = w.shape[p]
    g = min(group_size, size)
    if size % g or g % 2:
        raise ValueError(
            f"int4 group_size={group_size} must be even and divide the contraction axis ({size}) of a weight "
            f"of shape {w.shape}"
        )
    grouped = w.reshape(w.shape[:p] + (size // g, g) + w.shape[p + 1:])  # in-group axis at p + 1
    scale = jnp.max(jnp.abs(grouped), axis=p + 1, keepdims=True) / 7.0
    scale = jnp.where(scale == 0, 1.0, scale)
    q = jnp.clip(jnp.round(grouped / scale), -7, 7).astype(jnp.int32)
    # The in-group axis keeps its negative index after the split, so ``axis`` still finds it.
    if q.shape[-1] % 2:  # an odd last axis cannot be packed in pairs: keep one value per int8
        return QArray(q=q.astype(jnp.int8), scale=scale, bits=4, axis=axis, group_size=g)
    # Pack neighbours along the last axis, low nibble first: the layout of XLA's int4, so dequantizing
    # is a bitcast to int4 (which XLA fuses into the consumer) rather than shifts and masks.
    low, high = q[..., 0::2], q[..., 1::2]
    packed = ((low & 15) | ((high & 15) << 4)).astype(jnp.uint8)
    return QArray(q=packed, scale=scale, bits=4, axis=axis, group_size=g)


def _name(path) -> str:
    last = path[-1]
    return str(getattr(last, "key", getattr(last, "name", last)))


def quantize_params(params: Any, mode: str, group_size: int = 32) -> dict:
    """A copy of a parameter tree (a pure dict or an ``nnx.State``) with every matmul weight quantized.

    ``mode`` is ``"int8"`` (per-channel) or ``"int4"`` (groups of ``group_size`` along the contraction
    axis). Norm scales stay float32. Returns a pure dict usable wherever float params are (``nnx.merge``).
    """
    if mode not in MODES:
        raise ValueError(f"quantize mode {mode!r} must be one of {MODES}")
    if isinstance(params, nnx.State):
        params = nnx.to_pure_dict(params)
    bits = 8 if mode == "int8" else 4

    def one(path, value):
        axes = CONTRACTION_AXES.get(_name(path))
        if axes is None or isinstance(value, QArray):
            return value
        return quantize_array(value, bits, axes, group_size)

    quantized = jax.tree_util.tree_map_with_path(one, params)
    if not any(isinstance(x, QArray) for x in jax.tree.leaves(quantized, is_leaf=lambda x: isinstance(x, QArray))):
        raise ValueError(f"no weight named {sorted(CONTRACTION_AXES)} found to quantize")
    return quantized


def dequantize_params(params: Any) -> Any:
    """Float32 weights back from a quantized tree (for inspection and error measurements)."""
    return jax.tree.map(lambda x: x.dequantize() if isinstance(x, QArray) else x, params,
                        is_leaf=lambda x: isinstance(x, QArray))


def param_bytes(params: Any) -> int:
    """Bytes held by a (possibly quantized) parameter tree."""
    leaves = jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, QArray))
    return sum(x.nbytes for x in leaves)


__all__ = ["QArray", "quantize_array", "quantize_params", "dequantize_params", "param_bytes"]
