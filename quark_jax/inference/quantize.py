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

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx, struct
from jaxtyping import Array, Float

QUANTIZATION_FILE = "quantization.json"
PARAMS_DIR = "quantized_params"
MODES = ("int8", "int4")

# Contraction axes (negative: they survive slicing off the leading ``layers`` axis) of each matmul weight,
# by parameter name. The embedding is both gathered by row and contracted over D in the tied output
# projection, so its "channel" is the vocabulary row. MoE expert weights (models/moe.py) use the same
# names with a leading expert axis and need no new entries (the router stays float32: routing decisions
# are discrete and cheap to keep exact).
CONTRACTION_AXES: dict[str, tuple[int, ...]] = {
    "wq": (-3,), "wk": (-3,), "wv": (-3,),  # [L D N H] : D
    "wo": (-3, -2),  # [L N H D] : N H
    "w_gate": (-2,), "w_up": (-2,),  # [L D F] : D
    "w_down": (-2,),  # [L F D] : F
    "embedding": (-1,),  # [V D] : D
    "lm_head": (-2,),  # [D V] : D
}


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


# ---- quantized checkpoints ---------------------------------------------------------------------------
def save_quantized(model_dir: str, out_dir: str, mode: str, group_size: int = 32, step: int | None = None) -> str:
    """Quantizes the checkpoint of a ``quark train`` run and writes a directory that ``qj.load`` reads.

    ``out_dir`` gets ``model_config.json``, the tokenizer (when the run has one), ``quantization.json``
    and the quantized parameters as an orbax checkpoint in ``quantized_params/``.
    """
    from quark_jax.api import load

    model = load(model_dir, step=step)
    return write_quantized(out_dir, model.config, quantize_params(model.params, mode, group_size), mode,
                           group_size, step=model.step, tokenizer_dir=model_dir)


def write_quantized(out_dir: str, config, qparams: Mapping, mode: str, group_size: int, step: int = 0,
                    tokenizer_dir: str | None = None) -> str:
    """Writes already-quantized ``qparams`` of a model with ``config`` to ``out_dir`` (see :func:`save_quantized`)."""
    import shutil

    import orbax.checkpoint as ocp

    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "model_config.json"), "w") as f:
        f.write(config.to_json())
    if tokenizer_dir and os.path.exists(os.path.join(tokenizer_dir, "tokenizer.model")):
        shutil.copy(os.path.join(tokenizer_dir, "tokenizer.model"), os.path.join(out_dir, "tokenizer.model"))
    with open(os.path.join(out_dir, QUANTIZATION_FILE), "w") as f:
        json.dump({"mode": mode, "group_size": group_size, "step": step}, f)
    path = os.path.join(out_dir, PARAMS_DIR)
    if os.path.exists(path):
        shutil.rmtree(path)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path, qparams)
    return out_dir


def is_quantized_dir(model_dir: str) -> bool:
    return os.path.exists(os.path.join(model_dir, QUANTIZATION_FILE))


def read_quantized(model_dir: str, config) -> tuple[dict, dict]:
    """(quantized params, quantization.json contents) of a directory written by :func:`save_quantized`."""
    import orbax.checkpoint as ocp

    from quark_jax.models.transformer import abstract_model

    with open(os.path.join(model_dir, QUANTIZATION_FILE)) as f:
        info = json.load(f)
    abstract = nnx.to_pure_dict(nnx.state(abstract_model(config), nnx.Param))
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), abstract)
    target = jax.eval_shape(lambda p: quantize_params(p, info["mode"], info["group_size"]), abstract)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), target)
    with ocp.StandardCheckpointer() as checkpointer:
        params = checkpointer.restore(os.path.abspath(os.path.join(model_dir, PARAMS_DIR)), target)
    return params, info


__all__ = ["QArray", "quantize_array", "quantize_params", "dequantize_params", "param_bytes", "save_quantized",
           "write_quantized", "read_quantized", "is_quantized_dir"]
