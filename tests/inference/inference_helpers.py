"""Tiny random models for the inference tests (no training, no tokenizer)."""

from __future__ import annotations

from flax import nnx

from quark_jax.models.config import ModelConfig
from quark_jax.models.transformer import Transformer

EOS = 1


def tiny_config(vocab_size: int = 97, **overrides) -> ModelConfig:
    # A large init_std makes the random model's next-token distributions peaked, so greedy choices are not
    # decided by float rounding between differently shaped (batched, padded) computations.
    fields = dict(vocab_size=vocab_size, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                  mlp_dim=128, init_std=0.3)
    fields.update(overrides)
    return ModelConfig(**fields)


def tiny_model(config: ModelConfig | None = None, seed: int = 0):
    """(graphdef, params) of a randomly initialised model."""
    model = Transformer(config or tiny_config(), rngs=nnx.Rngs(params=seed))
    graphdef, params = nnx.split(model, nnx.Param)
    return graphdef, nnx.to_pure_dict(params)
