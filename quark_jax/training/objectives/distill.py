"""Knowledge distillation (Hinton et al. 2015): a student learns the frozen teacher's softened distribution.

loss = alpha · tau² · KL(teacher_tau ‖ student_tau) + (1 − alpha) · cross-entropy(student, data)

averaged over the loss-weighted tokens of packed seqio batches. The teacher is any run directory (its own
``ModelConfig``, e.g. a bigger model), sharded on the student's mesh with the same logical rules and passed
to the step as a frozen input. Both models stop at their final hidden states; the vocabulary projections
(``[B, T, V]`` each) are formed ``vocab_chunk`` positions at a time inside a rematerialised scan, so neither
full logits tensor is materialised — in the forward or the backward pass.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, Int

from quark_jax.training.objectives.base import Objective, RunContext, lm_batches, lm_validation, add_moe_loss


def distill_sums(
    student_logits_fn, teacher_logits_fn,
    student_hidden: Float[Array, "B T D"], teacher_hidden: Float[Array, "B T Dt"],
    targets: Int[Array, "B T"], weights: Float[Array, "B T"], temperature: float, chunk: int,
) -> dict[str, Float[Array, ""]]:
    """Weighted sums of KL(teacher_tau ‖ student_tau), cross-entropy and correct predictions over tokens.

    ``*_logits_fn`` map ``[B, C, D] -> [B, C, V]``; positions are processed ``chunk`` at a time (0 = all).
    """
    B, T = targets.shape
    chunk = T if chunk <= 0 or chunk >= T else chunk
    if T % chunk:
        raise ValueError(f"Distill.vocab_chunk={chunk} must divide the sequence length {T}")
    n = T // chunk
    to_chunks = lambda x: jnp.swapaxes(x.reshape(B, n, chunk, *x.shape[2:]), 0, 1)
    weights = weights.astype(jnp.float32)

    @jax.checkpoint
    def body(carry, xs):
        hs, ht, tgt, w = xs
        s_logits = student_logits_fn(hs)
        t_logits = jax.lax.stop_gradient(teacher_logits_fn(ht))
        t_logp = jax.nn.log_softmax(t_logits / temperature, axis=-1)
        s_logp_tau = jax.nn.log_softmax(s_logits / temperature, axis=-1)
        kl = jnp.sum(jnp.exp(t_logp) * (t_logp - s_logp_tau), axis=-1)
        s_logp = jax.nn.log_softmax(s_logits, axis=-1) if temperature != 1.0 else s_logp_tau
        nll = -jnp.take_along_axis(s_logp, tgt[..., None], axis=-1)[..., 0]
        correct = (jnp.argmax(s_logits, axis=-1) == tgt).astype(jnp.float32)
        sums = {"kl_sum": jnp.sum(kl * w), "nll_sum": jnp.sum(nll * w), "correct_sum": jnp.sum(correct * w)}
        return jax.tree.map(jnp.add, carry, sums), None

    zero = jnp.zeros((), jnp.float32)
    sums, _ = jax.lax.scan(body, {"kl_sum": zero, "nll_sum": zero, "correct_sum": zero},
                           (to_chunks(student_hidden), to_chunks(teacher_hidden), to_chunks(targets), to_chunks(weights)))
    return {**sums, "weight_sum": jnp.sum(weights)}


@dataclasses.dataclass
class Distill(Objective):
    """Distil ``teacher_dir``'s model into the run's model (``TrainConfig.model``) on the run's data."""

    teacher_dir: str | None = None
    alpha: float = 0.5  # weight of the KL term; 0 = plain cross-entropy training (the no-teacher baseline)
    temperature: float = 2.0
    vocab_chunk: int = 64  # sequence positions per vocabulary projection; 0 = the whole sequence at once

    kind: ClassVar[str] = "distill"

    def __post_init__(self):
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"Distill.alpha={self.alpha} must be in [0, 1]")
        if self.temperature <= 0:
            raise ValueError(f"Distill.temperature={self.temperature} must be > 0")

    def setup(self, run: RunContext) -> None:
        super().setup(run)
        config, self.teacher_graphdef, params, shardings = run.load_run(self.teacher_dir, "teacher")
        if config.vocab_size != run.model_config.vocab_size:
            raise ValueError(f"teacher vocab_size {config.vocab_size} != student vocab_size "
                             f"{run.model_config.vocab_size}: distillation needs one vocabulary")
        self.teacher_config = config
        self._frozen = ({"teacher": params}, {"teacher": shardings})

    def frozen(self) -> tuple[Any, Any]:
        return self._frozen

    def objective_info(self) -> dict:
        return {"kind": self.kind, "teacher_dir": self.teacher_dir, "alpha": self.alpha, "temperature": self.temperature}

    def batches(self, split, start_batch, shuffle, repeat=True):
        return lm_batches(self.run, split, start_batch, shuffle, repeat)

    def loss(self, params, frozen, batch):
        student = nnx.merge(self.run.graphdef, params)
        teacher = nnx.merge(self.teacher_graphdef, frozen["teacher"])
        inputs = (batch["decoder_input_tokens"], batch["decoder_positions"], batch["decoder_segment_ids"])
        _, _, aux, student_hidden = student(*inputs, return_aux=True, return_hidden=True)
        _, _, teacher_hidden = teacher(*inputs, return_hidden=True)
        sums = distill_sums(student.logits, teacher.logits, student_hidden, jax.lax.stop_gradient(teacher_hidden),
                            batch["decoder_target_tokens"], batch["decoder_loss_weights"], self.temperature,
                            self.vocab_chunk)
        denom = jnp.maximum(sums["weight_sum"], 1.0)
        kl, ce = sums["kl_sum"] / denom, sums["nll_sum"] / denom
        total = self.alpha * self.temperature**2 * kl + (1.0 - self.alpha) * ce
        metrics = {"loss": ce, "distill_kl": kl, "objective": total, "accuracy": sums["correct_sum"] / denom,
                   "loss_tokens": sums["weight_sum"]}
        return add_moe_loss(self.run, total, metrics, aux)  # an MoE student keeps its balancing losses

    def evaluate(self, params, frozen):
        return lm_validation(self.run, params)
