"""The one frozen dataclass that describes a model's architecture and numerics."""

from __future__ import annotations

import dataclasses
import json
from typing import Literal

import jax.numpy as jnp

RematPolicy = Literal["none", "full", "save_dots"]
MoEDispatch = Literal["capacity", "dropless"]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A Llama-style decoder: sizes, RoPE, numerics and rematerialization.

    Parameters are always float32; ``dtype`` is the compute dtype of matmuls and activations.
    """

    vocab_size: int = 4096
    d_model: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 4  # 1 = multi-query attention, num_heads = multi-head attention
    head_dim: int = 64
    mlp_dim: int = 704
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-6
    tie_embeddings: bool = True
    init_std: float = 0.02
    dtype: str = "float32"  # compute dtype: "float32" or "bfloat16"
    remat: RematPolicy = "none"  # "none" | "full" | "save_dots"
    # Layers per iteration of the layer scan. 1 keeps compile time flat in depth (the default for real
    # models); num_layers unrolls completely, which lets XLA fuse across layers (on the 2-core CPU at
    # 4 layers: ~6% faster steps) at the cost of compile time growing with depth.
    scan_unroll: int = 1
    # ---- Mixture-of-Experts (quark_jax/models/moe.py); num_experts = 0 is a dense model ----
    num_experts: int = 0
    experts_per_token: int = 2  # top-k routing
    # Whether the k chosen gates are renormalised to sum to 1: None = only for k > 1 (Switch keeps the raw
    # probability at k = 1, so the main loss trains the router); True = always (Mixtral and transformers do,
    # also at k = 1, where every gate becomes 1).
    renormalize_gates: bool | None = None
    moe_every: int = 1  # every moe_every-th layer (the last of each group of moe_every) is an MoE layer
    expert_mlp_dim: int = 0  # hidden size of one expert; 0 = mlp_dim
    num_shared_experts: int = 0  # always-on experts of the same size, added to the routed output
    moe_dispatch: MoEDispatch = "capacity"  # "capacity" (drops overflow; fast on CPU) | "dropless" (ragged_dot)
    capacity_factor: float = 1.25  # expert capacity = ceil(capacity_factor * k * tokens per row / E)
    load_balance_loss_weight: float = 0.01  # Switch Transformer auxiliary loss (Fedus et al. 2021)
    router_z_loss_weight: float = 1e-3  # ST-MoE router z-loss (Zoph et al. 2022)

    def __post_init__(self):
        problems = []
        if self.num_experts < 0:
            problems.append(f"ModelConfig.num_experts={self.num_experts} must be >= 0 (0 = dense)")
        if self.num_experts > 0:
            if not 1 <= self.experts_per_token <= self.num_experts:
                problems.append(
                    f"ModelConfig.experts_per_token={self.experts_per_token} must be in [1, num_experts={self.num_experts}]"
                )
            if self.moe_every < 1 or self.num_layers % self.moe_every:
                problems.append(
                    f"ModelConfig.moe_every={self.moe_every} must be >= 1 and divide num_layers={self.num_layers}"
                )
            if self.moe_dispatch not in ("capacity", "dropless"):
                problems.append(f"ModelConfig.moe_dispatch={self.moe_dispatch!r} must be 'capacity' or 'dropless'")
            if self.capacity_factor <= 0:
                problems.append(f"ModelConfig.capacity_factor={self.capacity_factor} must be > 0")
            if self.expert_mlp_dim < 0 or self.num_shared_experts < 0:
                problems.append("ModelConfig.expert_mlp_dim and num_shared_experts must be >= 0")
        for name in ("vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads", "head_dim", "mlp_dim"):
            if getattr(self, name) < 1:
                problems.append(f"ModelConfig.{name}={getattr(self, name)} must be >= 1")
        if self.num_kv_heads >= 1 and self.num_heads % self.num_kv_heads:
            problems.append(
                f"ModelConfig.num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if not 1 <= self.scan_unroll <= max(self.num_layers, 1):
            problems.append(f"ModelConfig.scan_unroll={self.scan_unroll} must be in [1, num_layers={self.num_layers}]")
        if self.head_dim % 2:
            problems.append(f"ModelConfig.head_dim={self.head_dim} must be even (RoPE rotates pairs)")
        if self.dtype not in ("float32", "bfloat16"):
            problems.append(f"ModelConfig.dtype={self.dtype!r} must be 'float32' or 'bfloat16'")
        if self.remat not in ("none", "full", "save_dots"):
            problems.append(f"ModelConfig.remat={self.remat!r} must be 'none', 'full' or 'save_dots'")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def heads_per_kv_head(self) -> int:
        return self.num_heads // self.num_kv_heads

    # ---- MoE layout ----
    @property
    def num_moe_layers(self) -> int:
        """MoE layers: the last layer of each group of ``moe_every`` (0 for a dense model)."""
        return self.num_layers // self.moe_every if self.num_experts > 0 else 0

    @property
    def num_dense_layers(self) -> int:
        return self.num_layers - self.num_moe_layers

    @property
    def expert_hidden(self) -> int:
        return self.expert_mlp_dim or self.mlp_dim

    def _attention_params(self) -> int:
        return self.d_model * self.head_dim * (2 * self.num_heads + 2 * self.num_kv_heads)

    def _moe_ffn_params(self, experts: int) -> int:
        """Router + ``experts`` routed experts + the shared experts of one MoE layer."""
        one = 3 * self.d_model * self.expert_hidden
        return self.d_model * self.num_experts + (experts + self.num_shared_experts) * one

    def matmul_params(self) -> int:
        """Parameters that take part in a matmul per token: the 6·N in the FLOP count.

        The input embedding is a gather, not a matmul; the output projection always is (tied or not). In an
        MoE layer only the router, the ``experts_per_token`` chosen experts and the shared experts count.
        """
        attention = self._attention_params()
        mlp = 3 * self.d_model * self.mlp_dim
        moe = self._moe_ffn_params(self.experts_per_token) if self.num_experts else 0
        return (self.num_layers * attention + self.num_dense_layers * mlp + self.num_moe_layers * moe
                + self.d_model * self.vocab_size)

    def num_params(self) -> int:
        """Total parameter count, as built (embedding, layers, norms, untied head if any, every expert)."""
        attention = self._attention_params()
        dense_layer = attention + 3 * self.d_model * self.mlp_dim + 2 * self.d_model
        moe_layer = attention + (self._moe_ffn_params(self.num_experts) if self.num_experts else 0) + 2 * self.d_model
        head = 0 if self.tie_embeddings else self.d_model * self.vocab_size
        return (self.vocab_size * self.d_model + self.num_dense_layers * dense_layer
                + self.num_moe_layers * moe_layer + self.d_model + head)

    def active_params(self) -> int:
        """Parameters used per token: all of them, less the experts a token is not routed to."""
        unused = (self.num_experts - self.experts_per_token) * 3 * self.d_model * self.expert_hidden
        return self.num_params() - self.num_moe_layers * unused if self.num_experts else self.num_params()

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: 6·N_matmul plus causal attention.

        Attention scores and the weighted sum of values cost 2·2·T·H·N FLOPs forward per token for full
        attention (QK^T and AV), half of that under a causal mask on average, times 3 for
        forward + backward: 6·L·T·N·H per token.
        """
        attention = 6 * self.num_layers * seq_len * self.num_heads * self.head_dim
        return 6 * self.matmul_params() + attention

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        fields = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(fields) - known
        if unknown:
            raise ValueError(f"unknown ModelConfig fields {sorted(unknown)}")
        return cls(**fields)
