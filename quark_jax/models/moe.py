"""Mixture-of-Experts feed-forward layer: a top-k softmax router, SwiGLU experts, optional shared experts.

Axis legend (as in layers.py, plus the MoE letters):
  B batch · T length · D embed · F expert hidden · E experts · C expert capacity (slots per expert per row)
  R routing slots per token (the top-k) · M token-to-expert assignments, sorted by expert (M = B·T·R)

Two dispatch modes (``ModelConfig.moe_dispatch``):

* ``capacity`` (GShard / Switch): each batch row sends at most C tokens to each expert; tokens past capacity
  are dropped (their routed contribution is zero, the residual carries them). Dispatch and combine are dense
  one-hot einsums, which XLA shards into an all-to-all when experts live on the ``expert`` mesh axis. The
  fast path on the CPU, and what expert parallelism uses.
* ``dropless`` (MegaBlocks-style): assignments are sorted by expert and run as grouped matmuls with
  ``jax.lax.ragged_dot``; no token is ever dropped. For GPU/TPU; ~4x slower than capacity mode on the CPU.

Auxiliary losses (returned, weighted and added to the objective by the train step):

* load balancing (Switch Transformer, Fedus et al. 2021): ``E · Σ_e f_e · P_e`` with f_e the fraction of
  routing assignments that go to expert e and P_e the mean router probability of e; 1.0 when balanced.
* router z-loss (ST-MoE, Zoph et al. 2022): mean ``logsumexp(router logits)²``, keeps router logits small.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from quark_jax import sharding as sh
from quark_jax.models.config import ModelConfig
from quark_jax.models.layers import MLP, param

# Names of the per-layer auxiliary values returned by :class:`MoE` (``expert_load`` is a [E] vector).
AUX_SCALARS = ("load_balance_loss", "router_z_loss", "dropped_fraction")


def expert_capacity(config: ModelConfig, tokens_per_row: int) -> int:
    """Slots per expert per batch row: ``ceil(capacity_factor · k · T / E)``, at least 1, at most T.

    An expert never receives more than T tokens from a row (a token picks k *distinct* experts), so C = T
    can never drop anything.
    """
    c = math.ceil(config.capacity_factor * config.experts_per_token * tokens_per_row / config.num_experts)
    return max(1, min(c, tokens_per_row))


class MoE(nnx.Module):
    """Top-k routed SwiGLU experts (plus ``num_shared_experts`` always-on experts)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        if config.num_experts < 1:
            raise ValueError(f"MoE needs ModelConfig.num_experts >= 1, got {config.num_experts}")
        self.config = config
        E, D, F, std = config.num_experts, config.d_model, config.expert_hidden, config.init_std
        # The router is tiny and read by every token: keep it replicated over the expert axis.
        self.router = param(rngs, (D, E), (sh.EMBED, None), std)
        self.w_gate = param(rngs, (E, D, F), (sh.EXPERTS, sh.EMBED, sh.MLP), std)
        self.w_up = param(rngs, (E, D, F), (sh.EXPERTS, sh.EMBED, sh.MLP), std)
        self.w_down = param(rngs, (E, F, D), (sh.EXPERTS, sh.MLP, sh.EMBED), std / (2 * config.num_layers) ** 0.5)
        if config.num_shared_experts:
            self.shared = MLP(config, rngs=rngs, hidden_dim=config.num_shared_experts * F)

    # ---- routing -----------------------------------------------------------------------------------
    def route(self, x: Float[Array, "B T D"]) -> tuple[Float[Array, "B T E"], Float[Array, "B T R"], Int[Array, "B T R"]]:
        """Router logits (float32), the k gate values and the k chosen experts of every token.

        With k > 1 the gates are renormalised over the chosen experts (Mixtral); with k = 1 the gate is the
        raw router probability (Switch), so the main loss still trains the router -- unless
        ``renormalize_gates`` is True (imported Mixtral: transformers renormalises for every k).
        """
        cfg = self.config
        logits = jnp.einsum("BTD,DE->BTE", x.astype(jnp.float32), self.router[...])
        probs = jax.nn.softmax(logits, axis=-1)
        gates, experts = jax.lax.top_k(probs, cfg.experts_per_token)
        renormalize = cfg.experts_per_token > 1 if cfg.renormalize_gates is None else cfg.renormalize_gates
        if renormalize:
            gates = gates / jnp.sum(gates, axis=-1, keepdims=True)
        return logits, gates, experts

    # ---- experts -----------------------------------------------------------------------------------
    def _capacity(
        self, x: Float[Array, "B T D"], gates: Float[Array, "B T R"], experts: Int[Array, "B T R"],
        token_mask: Bool[Array, "B T"] | None = None,
    ) -> tuple[Float[Array, "B T D"], Bool[Array, "B T R"]]:
        cfg = self.config
        dtype = cfg.compute_dtype
        B, T, R = experts.shape
        E, C = cfg.num_experts, expert_capacity(cfg, T)
        chosen = jax.nn.one_hot(experts, E, dtype=jnp.int32)  # [B T R E]
        if token_mask is not None:  # padding is not dispatched, so it never takes a real token's slot
            chosen = chosen * token_mask[:, :, None, None].astype(jnp.int32)
        # Slot of each assignment in its expert's buffer. First choices of all tokens queue before second
        # choices (GShard), so capacity pressure drops the least preferred assignments first.
        queue = jnp.swapaxes(chosen, 1, 2).reshape(B, R * T, E)
        slot_r = (jnp.cumsum(queue, axis=1) - 1).reshape(B, R, T, E)
        slot = jnp.sum(jnp.swapaxes(slot_r, 1, 2) * chosen, axis=-1)  # [B T R]
        kept = (slot < C) & (jnp.sum(chosen, axis=-1) > 0)
        slot_1h = jax.nn.one_hot(jnp.where(kept, slot, C), C, dtype=dtype)  # all-zero rows when dropped
        chosen = chosen.astype(dtype)
        dispatch = jnp.einsum("BTRE,BTRC->BTEC", chosen, slot_1h)
        combine = jnp.einsum("BTRE,BTRC,BTR->BTEC", chosen, slot_1h, gates.astype(dtype))

        act = (sh.ACT_EXPERT, sh.EXPERT_BATCH, None, sh.ACT_EMBED)
        expert_in = sh.constrain(jnp.einsum("BTEC,BTD->EBCD", dispatch, x), act)
        gate = jnp.einsum("EBCD,EDF->EBCF", expert_in, self.w_gate[...].astype(dtype))
        up = jnp.einsum("EBCD,EDF->EBCF", expert_in, self.w_up[...].astype(dtype))
        hidden = sh.constrain(jax.nn.silu(gate) * up, (sh.ACT_EXPERT, sh.EXPERT_BATCH, None, sh.ACT_MLP))
        expert_out = sh.constrain(jnp.einsum("EBCF,EFD->EBCD", hidden, self.w_down[...].astype(dtype)), act)
        y = jnp.einsum("EBCD,BTEC->BTD", expert_out, combine)
        return y, kept

    def _dropless(
        self, x: Float[Array, "B T D"], gates: Float[Array, "B T R"], experts: Int[Array, "B T R"]
    ) -> Float[Array, "B T D"]:
        cfg = self.config
        dtype = cfg.compute_dtype
        B, T, R = experts.shape
        D = x.shape[-1]
        flat_experts = experts.reshape(B * T * R)
        order = jnp.argsort(flat_experts, stable=True)  # [M] assignments grouped by expert
        token = order // R  # [M] the (flattened B·T) token of each sorted assignment
        group_sizes = jnp.bincount(flat_experts, length=cfg.num_experts).astype(jnp.int32)  # [E]
        xs = x.reshape(B * T, D)[token]  # [M D]
        gate = jax.lax.ragged_dot(xs, self.w_gate[...].astype(dtype), group_sizes)  # MD,EDF->MF
        up = jax.lax.ragged_dot(xs, self.w_up[...].astype(dtype), group_sizes)
        out = jax.lax.ragged_dot(jax.nn.silu(gate) * up, self.w_down[...].astype(dtype), group_sizes)  # MF,EFD->MD
        out = out * gates.reshape(B * T * R)[order][:, None].astype(dtype)
        y = jnp.zeros((B * T, D), dtype).at[token].add(out)
        return y.reshape(B, T, D)

    def __call__(
        self, x: Float[Array, "B T D"], token_mask: Bool[Array, "B T"] | None = None
    ) -> tuple[Float[Array, "B T D"], dict[str, Float[Array, "..."]]]:
        """The routed (plus shared) expert output and this layer's auxiliary values.

        ``token_mask`` (False on padding) excludes padding from the balancing statistics and metrics, and in
        capacity mode from dispatch (padding's expert output is zero; its loss weight is zero anyway).
        """
        cfg = self.config
        logits, gates, experts = self.route(x)
        if cfg.moe_dispatch == "capacity":
            y, kept = self._capacity(x, gates, experts, token_mask)
        else:
            y, kept = self._dropless(x, gates, experts), jnp.ones(experts.shape, bool)
        if cfg.num_shared_experts:
            y = y + self.shared(x)
        y = sh.constrain(y, (sh.BATCH, sh.LENGTH, sh.ACT_EMBED))
        return y, self.aux(logits, experts, kept, token_mask)

    def aux(
        self, logits: Float[Array, "B T E"], experts: Int[Array, "B T R"], kept: Bool[Array, "B T R"],
        token_mask: Bool[Array, "B T"] | None,
    ) -> dict[str, Float[Array, "..."]]:
        """Load-balancing loss, router z-loss, dropped fraction (scalars) and per-expert load ([E])."""
        E, R = self.config.num_experts, experts.shape[-1]
        mask = jnp.ones(experts.shape[:2], jnp.float32) if token_mask is None else token_mask.astype(jnp.float32)
        tokens = jnp.maximum(jnp.sum(mask), 1.0)
        assigned = jnp.sum(jax.nn.one_hot(experts, E, dtype=jnp.float32), axis=2)  # [B T E]
        load = jnp.einsum("BTE,BT->E", assigned, mask) / (tokens * R)  # f_e, sums to 1
        mean_prob = jnp.einsum("BTE,BT->E", jax.nn.softmax(logits, axis=-1), mask) / tokens  # P_e
        z = jax.nn.logsumexp(logits, axis=-1)
        return {
            "load_balance_loss": E * jnp.sum(load * mean_prob),
            "router_z_loss": jnp.sum(jnp.square(z) * mask) / tokens,
            "dropped_fraction": jnp.einsum("BTR,BT->", (~kept).astype(jnp.float32), mask) / (tokens * R),
            "expert_load": load,
        }
