"""The one frozen dataclass that describes a model's architecture and numerics."""

from __future__ import annotations

import dataclasses
import json
from typing import Literal

import jax.numpy as jnp

RematPolicy = Literal["none", "full", "save_dots"]


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

    def __post_init__(self):
        problems = []
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

    def matmul_params(self) -> int:
        """Parameters that take part in a matmul per token: the 6·N in the FLOP count.

        The input embedding is a gather, not a matmul; the output projection always is (tied or not).
        """
        attention = self.d_model * self.head_dim * (2 * self.num_heads + 2 * self.num_kv_heads)
        mlp = 3 * self.d_model * self.mlp_dim
        return self.num_layers * (attention + mlp) + self.d_model * self.vocab_size

    def num_params(self) -> int:
        """Total parameter count, as built (embedding, layers, norms, untied head if any)."""
        attention = self.d_model * self.head_dim * (2 * self.num_heads + 2 * self.num_kv_heads)
        per_layer = attention + 3 * self.d_model * self.mlp_dim + 2 * self.d_model
        head = 0 if self.tie_embeddings else self.d_model * self.vocab_size
        return self.vocab_size * self.d_model + self.num_layers * per_layer + self.d_model + head

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
