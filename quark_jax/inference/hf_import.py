"""Hugging Face weights straight into sharded device arrays on a mesh, one HF tensor at a time.

A 70B checkpoint does not fit in one host's memory as float32, and need not: each parameter is created on the
mesh with its sharding from the logical-axis rules (:func:`quark_jax.sharding.state_shardings`), and filled one
HF tensor at a time. For a tensor, ``jax.make_array_from_callback`` asks for each addressable device's block;
the callback reads just that block of the HF tensor from the memory-mapped file
(:meth:`quark_jax.inference.hf.Source.block`: the rows and columns of the HF layout that map to the block), so
a host only ever reads what its own devices hold, and holds at most one tensor's worth at once (blocks that
several devices share are read once). Parameters are allocated on the device and receive their tensors through a
jitted, donated ``dynamic_update_slice`` on the device, never through a host-side stack.
"""

from __future__ import annotations

import functools
import itertools
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from quark_jax import sharding as sh
from quark_jax.inference.hf import Source, check_tensors, sources
from quark_jax.models.config import ModelConfig
from quark_jax.models.transformer import abstract_model


def _key(index: tuple[slice, ...]) -> tuple:
    return tuple((s.start, s.stop, s.step) for s in index)


def _tensor_on_mesh(source: Source, reader: Any, name: str, sharding: NamedSharding) -> jax.Array:
    """HF tensor ``name`` in our layout, as a device array with ``sharding``: each device's block is read
    from the file on its own, and blocks shared by several devices are read once."""
    blocks: dict[tuple, np.ndarray] = {}

    def block(index: tuple[slice, ...]) -> np.ndarray:
        key = _key(index)
        if key not in blocks:
            blocks[key] = source.block(reader.read, name, index)
        return blocks[key]

    array = jax.make_array_from_callback(source.block_shape, sharding, block)
    blocks.clear()
    return array


@functools.lru_cache(maxsize=None)
def _zeros_fn(shape: tuple[int, ...], sharding: NamedSharding):
    return jax.jit(lambda: jax.numpy.zeros(shape, jax.numpy.float32), out_shardings=sharding)


def _zeros(shape: tuple[int, ...], sharding: NamedSharding) -> jax.Array:
    return _zeros_fn(shape, sharding)()


@functools.lru_cache(maxsize=None)
def _inserter(sharding: NamedSharding, stacked: int):
    """A jitted ``(full, block, *indices) -> full`` that writes one tensor into a stacked parameter in place."""

    def insert(full, block, *indices):
        start = tuple(indices) + (0,) * block.ndim
        return jax.lax.dynamic_update_slice(full, block.reshape((1,) * stacked + block.shape), start)

    return jax.jit(insert, out_shardings=sharding, donate_argnums=0)


def import_params(reader: Any, config: ModelConfig, mesh: jax.sharding.Mesh, rules: sh.Rules = sh.DEFAULT_RULES
                  ) -> dict:
    """The params of ``config`` (a pure dict for ``nnx.merge``, float32) read from ``reader`` (a
    :class:`~quark_jax.inference.safetensors_io.CheckpointReader`) onto ``mesh``, sharded by ``rules``.

    Every tensor is checked (present, shape, nothing unused) before anything is read."""
    check_tensors(reader, config)
    _, state = nnx.split(abstract_model(config))
    shardings = nnx.to_pure_dict(sh.state_shardings(state, mesh, rules))
    params: dict[str, Any] = {}
    for source in sources(config):
        sharding = shardings
        for key in source.path:
            sharding = sharding[key]
        # Every parameter is allocated by XLA and written into on the device: a host buffer never becomes
        # (on the CPU backend, aliased as) a parameter, so each one is released as soon as it is copied.
        stacked = len(source.stack)
        block_sharding = NamedSharding(mesh, PartitionSpec(*tuple(sharding.spec)[stacked:]))
        insert = _inserter(sharding, stacked)
        value = _zeros(source.shape, sharding)
        positions = itertools.product(*(range(n) for n in source.stack))
        for name, position in zip(source.tensor_names(), positions):
            block = _tensor_on_mesh(source, reader, name, block_sharding)
            value = insert(value, block, *(np.int32(p) for p in position))
            del block
        node = params
        for key in source.path[:-1]:
            node = node.setdefault(key, {})
        node[source.path[-1]] = value
    return params
