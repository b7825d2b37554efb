"""Direct Preference Optimization (Rafailov et al. 2023): the policy learns the preferences directly, held
close to a frozen reference model.

    r(y) = β · (log π(y | x) − log π_ref(y | x))          (implicit reward; log-probs summed over the response)
    loss = −log σ(r(chosen) − r(rejected))

The policy is the run's model, warm-started from ``INIT_FROM``; the reference is ``reference_dir`` (default:
``INIT_FROM``), a frozen input of the step. Logged: ``loss``, ``rewards/chosen``, ``rewards/rejected``,
``rewards/margin``, ``rewards/accuracy`` (margin > 0) and the policy's log-probs. The evaluation scores every
held-out pair: ``val_loss``, ``val_rewards/margin``, ``val_rewards/accuracy``, and how often the policy and
the reference each give the chosen response the higher log-probability (``val_policy_accuracy``,
``val_reference_accuracy``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from quark_jax.training.objectives.pairs import PairwiseObjective, flatten_pairs, forward, sequence_logprobs


def dpo_terms(policy: Float[Array, "B 2"], reference: Float[Array, "B 2"], beta: float) -> dict[str, Float[Array, "B"]]:
    """Per-pair DPO loss and implicit rewards from sequence log-probs ``[B, 2]`` (chosen, rejected)."""
    rewards = beta * (policy - reference)
    margin = rewards[:, 0] - rewards[:, 1]
    return {"loss": -jax.nn.log_sigmoid(margin), "rewards/chosen": rewards[:, 0], "rewards/rejected": rewards[:, 1],
            "rewards/margin": margin, "rewards/accuracy": (margin > 0).astype(jnp.float32)}


@dataclasses.dataclass
class DPO(PairwiseObjective):
    """DPO of the run's model on ``data_dir/{train,validation}.jsonl`` against a frozen reference run."""

    beta: float = 0.1
    reference_dir: str | None = None  # None = TrainConfig.init_from

    kind: ClassVar[str] = "dpo"

    def __post_init__(self):
        if self.beta <= 0:
            raise ValueError(f"DPO.beta={self.beta} must be > 0")

    def setup(self, run) -> None:
        super().setup(run)
        self.reference = self.reference_dir or run.config.init_from
        if not self.reference:
            raise ValueError("DPO needs a reference model: set INIT_FROM (the policy's start, also the default "
                             "reference) or DPO.reference_dir")
        config, self.reference_graphdef, params, shardings = run.load_run(self.reference, "reference model")
        if config.vocab_size != run.model_config.vocab_size:
            raise ValueError(f"reference vocab_size {config.vocab_size} != policy vocab_size "
                             f"{run.model_config.vocab_size}: DPO compares log-probabilities of the same tokens")
        self._frozen = ({"reference": params}, {"reference": shardings})

    def frozen(self) -> tuple[Any, Any]:
        return self._frozen

    def objective_info(self) -> dict:
        return {**super().objective_info(), "beta": self.beta, "reference_dir": self.reference}

    def logprobs(self, params: Any, frozen: Any, batch: dict) -> tuple[Float[Array, "B 2"], Float[Array, "B 2"], Any]:
        """Response log-probs ``[B, 2]`` of the policy and (no gradient) of the reference, and the policy's MoE aux."""
        flat = flatten_pairs(batch)
        logits, _, aux = forward(nnx.merge(self.run.graphdef, params), flat)
        policy = sequence_logprobs(logits, flat["targets"], flat["loss_weights"])
        ref_logits, _, _ = forward(nnx.merge(self.reference_graphdef, frozen["reference"]), flat)
        reference = jax.lax.stop_gradient(sequence_logprobs(ref_logits, flat["targets"], flat["loss_weights"]))
        return policy.reshape(-1, 2), reference.reshape(-1, 2), aux

    def loss(self, params, frozen, batch):
        policy, reference, aux = self.logprobs(params, frozen, batch)
        per_pair = {**dpo_terms(policy, reference, self.beta), "logps/chosen": policy[:, 0],
                    "logps/rejected": policy[:, 1]}
        return self.pair_objective(per_pair, batch["valid"], aux)

    def evaluate(self, params, frozen):
        def sums(params, frozen, batch):
            policy, reference, _ = self.logprobs(params, frozen, batch)
            valid = batch["valid"]
            terms = dpo_terms(policy, reference, self.beta)
            out = {f"val_{k}": jnp.sum(terms[k] * valid) for k in ("loss", "rewards/margin", "rewards/accuracy")}
            out["val_policy_accuracy"] = jnp.sum((policy[:, 0] > policy[:, 1]) * valid)
            out["val_reference_accuracy"] = jnp.sum((reference[:, 0] > reference[:, 1]) * valid)
            return out

        return self.evaluate_pairs("dpo", sums, params, frozen)
