"""Language modelling: next-token cross-entropy on the run's packed seqio data -- pre-training, fine-tuning
and SFT. The objective a run gets when ``TrainConfig.objective`` is None, so the trainer has one path."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax.numpy as jnp

from quark_jax.training.objectives.base import Objective, RunContext, lm_batches, lm_validation
from quark_jax.training.losses import lm_loss_sums
from quark_jax.training.steps import lm_metrics, lm_objective, make_train_step


def lm_loss(run: RunContext, params, batch):
    """``(objective, metrics)`` of the language-modelling loss of plain model parameters on one batch."""
    sums = lm_loss_sums(params, run.graphdef, batch, run.config.z_loss)
    denom = jnp.maximum(sums["weight_sum"], 1.0)
    return lm_objective(sums, denom), lm_metrics(sums, denom)


@dataclasses.dataclass
class LanguageModel(Objective):
    """Token-weighted cross-entropy (+ ``TrainConfig.z_loss``, + MoE auxiliary losses) of the model's own
    parameters; gradient accumulation over ``OptimizerConfig.grad_accum_steps`` micro-batches."""

    kind: ClassVar[str] = "lm"

    def make_train_step(self, tx, schedule, skip_nonfinite: bool):
        cfg = self.run.config
        step = make_train_step(self.run.graphdef, tx, schedule, z_loss=cfg.z_loss,
                               grad_accum_steps=cfg.optimizer.grad_accum_steps, skip_nonfinite=skip_nonfinite)
        return lambda state, frozen, batch: step(state, batch)

    def batches(self, split, start_batch, shuffle, repeat=True):
        return lm_batches(self.run, split, start_batch, shuffle, repeat)

    def loss(self, params, frozen, batch):
        return lm_loss(self.run, params, batch)

    def evaluate(self, params, frozen):
        return lm_validation(self.run, params)
