"""AdamW with linear warm-up and cosine decay, global-norm clipping and a weight-decay mask."""

from __future__ import annotations

import jax
import optax
from flax import nnx

from quark_jax import sharding as sh
from quark_jax.training.config import OptimizerConfig


def make_schedule(config: OptimizerConfig, total_steps: int) -> optax.Schedule:
    """Linear warm-up to the peak, then cosine decay to ``end_learning_rate_ratio`` of it."""
    decay_steps = max(config.decay_steps or total_steps, config.warmup_steps + 1)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.learning_rate,
        warmup_steps=config.warmup_steps,
        decay_steps=decay_steps,
        end_value=config.learning_rate * config.end_learning_rate_ratio,
    )


def weight_decay_mask(abstract_state: nnx.State) -> dict:
    """True for weights that decay: every matrix, not the RMSNorm scales (tagged with the ``norm`` axis)."""
    is_var = lambda x: isinstance(x, nnx.Variable)
    mask = jax.tree.map(
        lambda v: v.replace(sh.NORM not in (v.get_metadata().get("out_sharding") or ())), abstract_state, is_leaf=is_var
    )
    return nnx.to_pure_dict(mask)


def keep_zero_weights() -> optax.GradientTransformation:
    """Multiplies each update by ``params != 0``: a weight that is exactly zero never moves (the sparsity
    pattern of a pruned model survives fine-tuning, weight decay included, since it acts through the update)."""

    def mask(updates, params):
        if params is None:
            raise ValueError("keep_zero_weights needs the parameters in the optimizer update")
        return jax.tree.map(lambda u, p: u * (p != 0).astype(u.dtype), updates, params)

    return optax.stateless(mask)


def make_optimizer(config: OptimizerConfig, total_steps: int, decay_mask: dict) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optax chain and its learning-rate schedule (the schedule is also logged)."""
    schedule = make_schedule(config, total_steps)
    parts = []
    if config.clip_norm:
        parts.append(optax.clip_by_global_norm(config.clip_norm))
    parts.append(
        optax.adamw(schedule, b1=config.b1, b2=config.b2, eps=config.eps, weight_decay=config.weight_decay, mask=decay_mask)
    )
    if config.keep_zero_weights:
        parts.append(keep_zero_weights())
    return optax.chain(*parts), schedule
