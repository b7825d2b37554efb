"""The language-modelling loss: token-weighted cross-entropy with z-loss, accuracy, MoE auxiliary terms, and
the evaluation loop over held-out batches (used by training's validation and by ``quark eval``).

Losses return *sums* over tokens together with the sum of weights, so that gradient accumulation and
data-parallel reductions average over tokens exactly, whatever the padding in each micro-batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, Int

from quark_jax.models.moe import AUX_SCALARS

Batch = dict[str, jax.Array]


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


def lm_loss_sums(params: Any, graphdef: nnx.GraphDef, batch: Batch, z_loss: float) -> dict[str, jax.Array]:
    """Runs the model on a packed seqio decoder batch and returns the summed losses."""
    model = nnx.merge(graphdef, params)
    logits, _, aux = model(
        batch["decoder_input_tokens"], batch["decoder_positions"], batch["decoder_segment_ids"], return_aux=True
    )
    sums = cross_entropy_sums(logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"], z_loss)
    return {**sums, **moe_aux_sums(aux, model.config, sums["weight_sum"])}


def moe_aux_sums(aux: dict[str, jax.Array], config: Any, weight_sum: jax.Array) -> dict[str, jax.Array]:
    """MoE auxiliary values as token-weighted sums (like the losses), so that micro-batches and the final
    division by the batch's total weight average them exactly as the cross-entropy.

    ``moe_loss_sum`` is the weighted objective term; the ``moe/*`` entries are logged as metrics (the
    per-expert load as ``moe/expert_load_<e>``).
    """
    if not aux:
        return {}
    sums = {
        "moe_loss_sum": weight_sum * (config.load_balance_loss_weight * aux["load_balance_loss"]
                                      + config.router_z_loss_weight * aux["router_z_loss"]),
    }
    for name in AUX_SCALARS:
        sums[f"moe/{name}"] = weight_sum * aux[name]
    for e in range(aux["expert_load"].shape[0]):
        sums[f"moe/expert_load_{e}"] = weight_sum * aux["expert_load"][e]
    return sums


def make_eval_step(graphdef: nnx.GraphDef) -> Callable[[Any, Batch], dict[str, jax.Array]]:
    """Builds ``eval_step(params, batch) -> sums`` (nll, correct, weight); the host accumulates them."""

    def eval_step(params: Any, batch: Batch) -> dict[str, jax.Array]:
        sums = lm_loss_sums(params, graphdef, batch, 0.0)
        return {k: sums[k] for k in ("nll_sum", "correct_sum", "weight_sum")}

    return eval_step


def evaluate_lm(eval_step: Callable, params: Any, batches: Iterable[dict], max_batches: int = 0,
                progress: Any = None) -> dict[str, float]:
    """Runs a jitted :func:`make_eval_step` over ``batches`` (at most ``max_batches``; 0 = all) and returns the
    token-weighted ``loss``, ``perplexity``, ``accuracy``, ``tokens`` and ``batches``. ``progress`` is
    anything with ``update(1)`` (a tqdm bar)."""
    totals = {"nll_sum": 0.0, "correct_sum": 0.0, "weight_sum": 0.0}
    count = 0
    for batch in batches:
        sums = jax.device_get(eval_step(params, batch))
        for k in totals:
            totals[k] += float(sums[k])
        count += 1
        if progress is not None:
            progress.update(1)
        if max_batches and count >= max_batches:
            break
    weight = max(totals["weight_sum"], 1.0)
    loss = totals["nll_sum"] / weight
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "accuracy": totals["correct_sum"] / weight,
            "tokens": totals["weight_sum"], "batches": count}
