"""Architecture upgrades applied to a warm start: ``init_from`` a run of one architecture into another.

A transform maps the source run's parameters (flat ``{dotted name: array}``) onto the new model's parameters
(the same form, holding the new model's fresh initialisation) and returns the new model's full parameter set.
Bind one with ``quark_jax.TrainConfig.init_transform = 'upcycle'`` (or ``'grow_depth'``) next to ``INIT_FROM``.

* ``upcycle`` -- sparse upcycling (Komatsuzaki et al. 2023): a dense run becomes an MoE run. Every MoE
  layer's experts start as copies of that layer's dense MLP, its router keeps its fresh initialisation;
  attention, norms, embeddings and the dense layers are copied as they are. With top-k routing (k > 1, or
  gates renormalised) the chosen gates sum to 1 over identical experts, so at step 0 the MoE layer computes
  exactly the dense MLP and the logits equal the dense model's -- provided no token is dropped (dropless
  dispatch, or ``capacity_factor >= num_experts / experts_per_token``) and there are no shared experts.
* ``grow_depth`` -- a dense run of L layers becomes one of L' > L layers. Old layer i goes to position
  ``i * L' // L``; each new layer keeps its fresh initialisation except its two output projections
  (attention ``wo`` and MLP ``w_down``), which start at zero, so the new block adds nothing to the residual
  stream and the model computes the old function at step 0. Gradients reach ``wo``/``w_down`` at once
  (they multiply non-zero activations), and the rest of the block follows.

Layer stacks: a dense model holds ``blocks.*`` of shape ``[L, ...]``; an MoE model with ``moe_every = N``
holds G = L / N groups, ``blocks.*`` ``[G·(N-1), ...]`` (the group's first N-1 layers, group-major) and
``moe_blocks.*`` ``[G, ...]`` (the last layer of each group). See ``models/transformer.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax.numpy as jnp
from jaxtyping import Array, Float

from quark_jax.models.config import ModelConfig

FlatParams = dict[str, Array]
Transform = Callable[[Mapping[str, Array], ModelConfig, ModelConfig, Mapping[str, Array]], FlatParams]

_ATTENTION_AND_NORMS = ("attn.wq", "attn.wk", "attn.wv", "attn.wo", "attn_norm.scale", "mlp_norm.scale")
_MLP = ("w_gate", "w_up", "w_down")
_OUTPUT_PROJECTIONS = ("attn.wo", "mlp.w_down")


def _layer_stacks(flat: Mapping[str, Array], prefix: str) -> dict[str, Array]:
    """``{name below prefix: stacked [layers, ...] array}`` of the parameters under ``prefix``."""
    return {name[len(prefix):]: value for name, value in flat.items() if name.startswith(prefix)}


def _outside_layers(flat: Mapping[str, Array]) -> dict[str, Array]:
    """Embedding, final norm and untied head: the parameters no layer stack holds."""
    return {n: v for n, v in flat.items() if not n.startswith(("blocks.", "moe_blocks."))}


def _require_dense(source: ModelConfig, what: str) -> None:
    if source.num_experts:
        raise ValueError(f"init_transform={what!r} needs a dense init_from run; it has num_experts="
                         f"{source.num_experts} (warm-start an MoE run without init_transform)")


def _require_same(source: ModelConfig, target: ModelConfig, fields: tuple[str, ...], what: str) -> None:
    differ = [f"{f}: {getattr(source, f)} vs {getattr(target, f)}" for f in fields
              if getattr(source, f) != getattr(target, f)]
    if differ:
        raise ValueError(f"init_transform={what!r}: the init_from run and this model differ in "
                         f"{'; '.join(differ)} (bind ModelConfig to match the source run)")


_SHARED_FIELDS = ("vocab_size", "d_model", "num_heads", "num_kv_heads", "head_dim", "tie_embeddings")


def upcycle(source: Mapping[str, Array], source_config: ModelConfig, target_config: ModelConfig,
            target_init: Mapping[str, Array]) -> FlatParams:
    """The MoE ``target_config``'s parameters from the dense ``source`` run (see the module docstring).

    Experts of MoE layer g are ``E`` copies of dense layer ``g·N + N-1``'s MLP; its router is ``target_init``'s.
    """
    _require_dense(source_config, "upcycle")
    if not target_config.num_experts:
        raise ValueError("init_transform='upcycle' makes an MoE model: bind ModelConfig.num_experts > 0")
    _require_same(source_config, target_config, _SHARED_FIELDS + ("num_layers",), "upcycle")
    if target_config.expert_hidden != source_config.mlp_dim:
        raise ValueError(f"init_transform='upcycle': experts copy the dense MLP, so their hidden size "
                         f"{target_config.expert_hidden} must equal the source's mlp_dim={source_config.mlp_dim} "
                         f"(bind ModelConfig.expert_mlp_dim = {source_config.mlp_dim})")
    if target_config.num_shared_experts:
        raise ValueError("init_transform='upcycle' copies the MLP into the routed experts only; bind "
                         "ModelConfig.num_shared_experts = 0")
    G, N, E = target_config.num_moe_layers, target_config.moe_every, target_config.num_experts
    dense = _layer_stacks(source, "blocks.")
    moe_layers = jnp.arange(G) * N + (N - 1)  # the last layer of each group
    dense_layers = jnp.array([g * N + j for g in range(G) for j in range(N - 1)], jnp.int32)

    out: FlatParams = dict(_outside_layers(source))
    for name, stacked in dense.items():
        if N > 1:
            out[f"blocks.{name}"] = stacked[dense_layers]
        if name in _ATTENTION_AND_NORMS:
            out[f"moe_blocks.{name}"] = stacked[moe_layers]
    for w in _MLP:
        per_layer = dense[f"mlp.{w}"][moe_layers]  # [G, D, F] or [G, F, D]
        out[f"moe_blocks.moe.{w}"] = jnp.broadcast_to(per_layer[:, None], (G, E, *per_layer.shape[1:]))
    out["moe_blocks.moe.router"] = target_init["moe_blocks.moe.router"]
    return out


def grow_depth(source: Mapping[str, Array], source_config: ModelConfig, target_config: ModelConfig,
               target_init: Mapping[str, Array]) -> FlatParams:
    """The deeper dense ``target_config``'s parameters from the dense ``source`` run (see the module docstring)."""
    _require_dense(source_config, "grow_depth")
    if target_config.num_experts:
        raise ValueError("init_transform='grow_depth' grows a dense model: bind ModelConfig.num_experts = 0 "
                         "(upcycle the grown run afterwards)")
    _require_same(source_config, target_config, _SHARED_FIELDS + ("mlp_dim",), "grow_depth")
    L, L_new = source_config.num_layers, target_config.num_layers
    if L_new <= L:
        raise ValueError(f"init_transform='grow_depth': ModelConfig.num_layers={L_new} must exceed the source's "
                         f"{L}")
    old_at = {i * L_new // L: i for i in range(L)}  # target position -> source layer
    out: FlatParams = dict(_outside_layers(source))
    for name, fresh in _layer_stacks(target_init, "blocks.").items():
        old = source[f"blocks.{name}"]
        layers = []
        for j in range(L_new):
            if j in old_at:
                layers.append(old[old_at[j]])
            elif name in _OUTPUT_PROJECTIONS:
                layers.append(jnp.zeros_like(fresh[j]))
            else:
                layers.append(fresh[j])
        out[f"blocks.{name}"] = jnp.stack(layers)
    return out


TRANSFORMS: dict[str, Transform] = {"upcycle": upcycle, "grow_depth": grow_depth}


def get(name: str) -> Transform:
    """The transform called ``name``; an unknown name is an error listing the known ones."""
    if name not in TRANSFORMS:
        raise ValueError(f"TrainConfig.init_transform={name!r} is unknown; use one of {sorted(TRANSFORMS)}")
    return TRANSFORMS[name]


def new_layer_mask(source_config: ModelConfig, target_config: ModelConfig) -> Float[Array, "L"]:
    """1.0 at the layers ``grow_depth`` adds, 0.0 where a source layer lands (for reports and tests)."""
    L, L_new = source_config.num_layers, target_config.num_layers
    old = {i * L_new // L for i in range(L)}
    return jnp.array([0.0 if j in old else 1.0 for j in range(L_new)])
