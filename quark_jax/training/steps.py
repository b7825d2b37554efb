"""Pure train steps: language modelling (with gradient accumulation) and any objective's loss.

Both are plain functions of their inputs; :mod:`quark_jax.training.sharded` jits them with explicit shardings.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from quark_jax.training.losses import lm_loss_sums
from quark_jax.training.state import TrainState

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


def lm_objective(sums: dict[str, jax.Array], denom: jax.Array) -> jax.Array:
    """The language-modelling objective from :func:`lm_loss_sums`: (cross-entropy + z-loss + MoE aux) / tokens."""
    return (sums["nll_sum"] + sums["z_loss_sum"] + sums.get("moe_loss_sum", 0.0)) / denom


def lm_metrics(sums: dict[str, jax.Array], denom: jax.Array) -> Metrics:
    """Per-token loss, z-loss and accuracy (and, for MoE, the aux term and router statistics) from the sums."""
    metrics = {
        "loss": sums["nll_sum"] / denom,
        "z_loss": sums["z_loss_sum"] / denom,
        "accuracy": sums["correct_sum"] / denom,
        "loss_tokens": sums["weight_sum"],
    }
    if "moe_loss_sum" in sums:  # MoE: the weighted aux objective term and the router statistics
        metrics["moe_aux_loss"] = sums["moe_loss_sum"] / denom
        metrics.update({k: v / denom for k, v in sums.items() if k.startswith("moe/")})
    return metrics


def apply_update(
    tx: optax.GradientTransformation, params: Any, opt_state: Any, grads: Any, loss: jax.Array, skip_nonfinite: bool,
) -> tuple[Any, Any, jax.Array, jax.Array]:
    """One optimizer update: ``(params, opt_state, grad_norm, finite)``. ``finite`` says whether the loss and
    the gradient norm are finite; with ``skip_nonfinite`` a non-finite update leaves params and state as they were."""
    grad_norm = optax.tree.norm(grads)
    updates, new_opt_state = tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    if skip_nonfinite:
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
        new_params, new_opt_state = keep(new_params, params), keep(new_opt_state, opt_state)
    return new_params, new_opt_state, grad_norm, finite


def _split_microbatches(batch: Batch, num: int) -> Batch:
    """[B, ...] → [num, B/num, ...], taking every num-th row so each device keeps its own rows."""

    def split(x):
        if x.shape[0] % num:
            raise ValueError(f"batch size {x.shape[0]} is not divisible by grad_accum_steps={num}")
        return jnp.swapaxes(x.reshape(x.shape[0] // num, num, *x.shape[1:]), 0, 1)

    return jax.tree.map(split, batch)


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    *,
    z_loss: float = 0.0,
    grad_accum_steps: int = 1,
    skip_nonfinite: bool = False,
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """Builds ``train_step(state, batch) -> (state, metrics)``.

    The loss is averaged over *tokens* (loss weights), across all micro-batches of gradient accumulation.
    With ``skip_nonfinite`` a step whose loss or gradient is NaN/Inf leaves parameters and optimizer state
    untouched (the step counter and data still advance); otherwise the update is applied and the trainer
    stops the run when it sees the non-finite loss.
    """

    def objective(params, batch, denom):
        sums = lm_loss_sums(params, graphdef, batch, z_loss)
        return lm_objective(sums, denom), sums

    grad_fn = jax.grad(objective, has_aux=True)

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        # Token-weighted mean over the whole batch: dividing inside the objective by the batch's total
        # weight (known before the forward pass) gives mean gradients directly, micro-batches included.
        denom = jnp.maximum(jnp.sum(batch["decoder_loss_weights"].astype(jnp.float32)), 1.0)
        if grad_accum_steps == 1:
            grads, sums = grad_fn(state.params, batch, denom)
        else:

            def accumulate(carry, micro_batch):
                grads, sums = grad_fn(state.params, micro_batch, denom)
                return jax.tree.map(jnp.add, carry, (grads, sums)), None

            zeros = jax.tree.map(jnp.zeros_like, state.params)
            micro_batches = _split_microbatches(batch, grad_accum_steps)
            sum_shapes = jax.eval_shape(
                lambda b: grad_fn(state.params, b, denom)[1], jax.tree.map(lambda x: x[0], micro_batches)
            )
            zero_sums = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), sum_shapes)
            (grads, sums), _ = jax.lax.scan(accumulate, (zeros, zero_sums), micro_batches)

        loss = sums["nll_sum"] / denom
        params, opt_state, grad_norm, finite = apply_update(
            tx, state.params, state.opt_state, grads, loss, skip_nonfinite)

        metrics = {**lm_metrics(sums, denom), "grad_norm": grad_norm, "learning_rate": schedule(state.step),
                   "finite": finite}
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def make_objective_train_step(
    objective: Any,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    *,
    skip_nonfinite: bool = False,
) -> Callable[[TrainState, Any, Batch], tuple[TrainState, Metrics]]:
    """Builds ``train_step(state, frozen, batch) -> (state, metrics)`` for a post-training objective.

    ``objective.loss(params, frozen, batch) -> (loss, metrics)`` is differentiated w.r.t. the trainable
    ``params`` only; ``frozen`` (teacher, reference model ...) is an input of the step, never updated.
    Non-finite steps are handled as in :func:`make_train_step`.
    """
    grad_fn = jax.grad(objective.loss, has_aux=True)

    def train_step(state: TrainState, frozen: Any, batch: Batch) -> tuple[TrainState, Metrics]:
        grads, metrics = grad_fn(state.params, frozen, batch)
        params, opt_state, grad_norm, finite = apply_update(
            tx, state.params, state.opt_state, grads, metrics["loss"], skip_nonfinite)
        metrics = {**metrics, "grad_norm": grad_norm, "learning_rate": schedule(state.step), "finite": finite}
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step
