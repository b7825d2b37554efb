"""Token-weighted cross-entropy with z-loss, and accuracy.

Losses return *sums* over tokens together with the sum of weights, so that gradient accumulation and
data-parallel reductions average over tokens exactly, whatever the padding in each micro-batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int


def cross_entropy_sums(
    logits: Float[Array, "B T V"],
    targets: Int[Array, "B T"],
    weights: Float[Array, "B T"],
    z_loss: float = 0.0,
) -> dict[str, Float[Array, ""]]:
    """Weighted sums of cross-entropy, z-loss and correct predictions, plus the weight total.

    z-loss (PaLM, Chowdhery et al. 2022) adds ``z_loss · logsumexp(logits)²`` per token, keeping the softmax
    normaliser near 1 so bfloat16 logits stay well conditioned.
    """
    logits = logits.astype(jnp.float32)
    weights = weights.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    nll = log_z - target_logit
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return {
        "nll_sum": jnp.sum(nll * weights),
        "z_loss_sum": z_loss * jnp.sum(jnp.square(log_z) * weights),
        "correct_sum": jnp.sum(correct * weights),
        "weight_sum": jnp.sum(weights),
    }
