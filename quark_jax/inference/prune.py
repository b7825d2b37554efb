"""Weight pruning: unstructured magnitude pruning and 2:4 semi-structured pruning, as pure tree transforms.

What is pruned: the matmul weights of the attention and feed-forward blocks, dense and expert alike
(``wq wk wv wo w_gate w_up w_down``; an MoE layer's experts carry the same names with a leading expert axis).
The embedding (also the tied output projection), an untied ``lm_head``, the MoE router and the norm scales are
left as they are: they are small next to the blocks, and every token reads them.

A weight's *matrix* is its trailing axes from the first contraction axis on (``[D N H]`` for ``wq``, ``[F D]``
for ``w_down``); the axes before it (the stacked ``layers`` axis, an MoE ``experts`` axis) index separate
matrices.

* ``magnitude``, scope ``layer``: every matrix (one layer's ``wq``, one expert's ``w_up`` ...) loses exactly
  ``round(sparsity * size)`` of its entries, those of smallest magnitude.
* ``magnitude``, scope ``global``: one ranking over every prunable weight of the model together; exactly
  ``round(sparsity * total)`` entries go, so a matrix of small weights loses more than one of large weights.
* ``2:4``: along the input (contraction) dimension, in every group of 4 consecutive weights feeding one
  output, the 2 of largest magnitude stay (50% sparsity, the pattern sparse tensor cores accelerate). A weight
  with several contraction axes (``wo``: heads x head_dim) is grouped along their flattened order.

Ties in magnitude are broken by position (a stable sort), so the count of zeros is always exact.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Bool, Float

from quark_jax.models.layers import CONTRACTION_AXES

METHODS = ("magnitude", "2:4")
SCOPES = ("layer", "global")
PRUNED_WEIGHTS = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")


def _name(path) -> str:
    last = path[-1]
    return str(getattr(last, "key", getattr(last, "name", last)))


def dotted(path) -> str:
    """``blocks.attn.wq`` for a tree path."""
    return ".".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def is_pruned_weight(path) -> bool:
    """Whether the parameter at ``path`` is one that pruning touches (a block's matmul weight)."""
    return _name(path) in PRUNED_WEIGHTS


def matrix_ndim(name: str) -> int:
    """How many trailing axes of the weight ``name`` form one matrix (its contraction and output axes)."""
    return -min(CONTRACTION_AXES[name])


def _check_sparsity(sparsity: float) -> None:
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity={sparsity}: must be in [0, 1) (the fraction of weights set to zero)")


def smallest_mask(magnitudes: Float[np.ndarray, "M N"], sparsity: float) -> Bool[np.ndarray, "M N"]:
    """Keep-mask of each row of ``magnitudes``: False for the ``round(sparsity * N)`` smallest entries of the
    row (ties broken by position), True for the rest."""
    _check_sparsity(sparsity)
    count = int(round(sparsity * magnitudes.shape[-1]))
    ranks = np.argsort(np.argsort(magnitudes, axis=-1, kind="stable"), axis=-1, kind="stable")
    return ranks >= count


def two_four_mask(w: Float[Array, "..."], contraction_axes: tuple[int, ...]) -> Bool[np.ndarray, "..."]:
    """Keep-mask of the 2:4 pattern: in every group of 4 consecutive weights along the (flattened)
    contraction axes, the 2 of largest magnitude (ties: the earlier one)."""
    ndim = w.ndim
    axes = tuple(sorted(ndim + a for a in contraction_axes))
    if axes != tuple(range(axes[0], axes[-1] + 1)):
        raise ValueError(f"contraction axes {contraction_axes} of a weight of shape {w.shape} are not adjacent")
    rest = tuple(a for a in range(ndim) if a not in axes)
    moved = np.transpose(np.abs(np.asarray(w, np.float32)), rest + axes)  # [..., K1, K2]: the contraction axes last, in order
    size = math.prod(w.shape[a] for a in axes)
    if size % 4:
        raise ValueError(f"2:4 pruning needs the input dimension ({size}) of a weight of shape {w.shape} to be a "
                         "multiple of 4")
    groups = moved.reshape(moved.shape[: len(rest)] + (size // 4, 4))
    # Descending by magnitude, earlier first among equals: rank 0 and 1 of each group stay.
    ranks = np.argsort(np.argsort(-groups, axis=-1, kind="stable"), axis=-1, kind="stable")
    keep = (ranks < 2).reshape(moved.shape)
    order = rest + axes
    return np.transpose(keep, tuple(order.index(a) for a in range(ndim)))


def _layer_mask(w: Float[Array, "..."], name: str, sparsity: float) -> Bool[np.ndarray, "..."]:
    """Magnitude keep-mask of each matrix of ``w`` on its own."""
    k = matrix_ndim(name)
    lead = w.shape[: w.ndim - k]
    flat = np.abs(np.asarray(w, np.float32)).reshape((-1, math.prod(w.shape[w.ndim - k:])))
    return smallest_mask(flat, sparsity).reshape(lead + w.shape[w.ndim - k:])


def prune_masks(params: Any, sparsity: float = 0.5, method: str = "magnitude", scope: str = "layer") -> dict:
    """Keep-masks (numpy booleans, True: the weight stays) of every pruned weight of ``params``, by dotted path
    (``{"blocks.attn.wq": mask, ...}``); see the module docstring for the methods and scopes."""
    if method not in METHODS:
        raise ValueError(f"pruning method {method!r} must be one of {METHODS}")
    if scope not in SCOPES:
        raise ValueError(f"pruning scope {scope!r} must be one of {SCOPES}")
    if isinstance(params, nnx.State):
        params = nnx.to_pure_dict(params)
    leaves = [(path, w) for path, w in jax.tree_util.tree_leaves_with_path(params) if is_pruned_weight(path)]
    if not leaves:
        raise ValueError(f"no weight named {list(PRUNED_WEIGHTS)} found to prune")
    if method == "2:4":
        if sparsity != 0.5:
            raise ValueError(f"2:4 pruning removes exactly half the weights; sparsity={sparsity} must be 0.5")
        if scope != "layer":
            raise ValueError("2:4 pruning works within groups of 4 weights; scope='global' does not apply to it")
        return {dotted(p): two_four_mask(w, CONTRACTION_AXES[_name(p)]) for p, w in leaves}
    _check_sparsity(sparsity)
    if scope == "layer":
        return {dotted(p): _layer_mask(w, _name(p), sparsity) for p, w in leaves}
    flat = np.concatenate([np.abs(np.asarray(w, np.float32)).reshape(-1) for _, w in leaves])
    keep = smallest_mask(flat[None], sparsity)[0]
    masks, start = {}, 0
    for path, w in leaves:
        masks[dotted(path)] = keep[start: start + w.size].reshape(w.shape)
        start += w.size
    return masks


def apply_masks(params: Any, masks: dict) -> Any:
    """``params`` with every weight that ``masks`` names multiplied by its keep-mask (zeros where False)."""
    if isinstance(params, nnx.State):
        params = nnx.to_pure_dict(params)

    def one(path, w):
        mask = masks.get(dotted(path))
        return w if mask is None else jnp.where(jnp.asarray(mask), w, jnp.zeros((), w.dtype))

    return jax.tree_util.tree_map_with_path(one, params)


def prune_params(params: Any, sparsity: float = 0.5, method: str = "magnitude", scope: str = "layer") -> dict:
    """A copy of ``params`` (a pure dict or an ``nnx.State``) with its block weights pruned: a pure dict usable
    wherever the float parameters are (``nnx.merge``, a checkpoint)."""
    return apply_masks(params, prune_masks(params, sparsity, method, scope))


def sparsity_of(params: Any) -> dict[str, float]:
    """The fraction of exact zeros in every pruned weight, by dotted path, and ``"total"`` over all of them."""
    if isinstance(params, nnx.State):
        params = nnx.to_pure_dict(params)
    zeros, sizes, report = 0, 0, {}
    for path, w in jax.tree_util.tree_leaves_with_path(params):
        if is_pruned_weight(path):
            count = int(np.count_nonzero(np.asarray(w) == 0))
            report[dotted(path)] = count / w.size
            zeros, sizes = zeros + count, sizes + w.size
    report["total"] = zeros / sizes if sizes else 0.0
    return report


__all__ = ["METHODS", "SCOPES", "PRUNED_WEIGHTS", "prune_masks", "apply_masks", "prune_params", "sparsity_of",
           "smallest_mask", "two_four_mask", "is_pruned_weight", "matrix_ndim"]
