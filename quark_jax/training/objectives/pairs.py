"""What the pairwise objectives (:class:`RewardModel`, :class:`DPO`) share: preference batches, sequence
log-probabilities, last-token hidden states and the held-out evaluation loop.

Batches come from ``quark_jax.data.preferences`` (``[B, 2, T]`` per array, side 0 = chosen); the loss
functions flatten them to ``[2B, T]`` so that one forward pass scores both sides of every pair.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from quark_jax import sharding as sh
from quark_jax.data import preferences
from quark_jax.training.objectives.base import Objective, masked_mean, add_moe_loss, token_logprobs


def flatten_pairs(batch: dict[str, Any]) -> dict[str, Any]:
    """``[B, 2, ...]`` arrays → ``[2B, ...]`` (rows ``2i`` chosen, ``2i + 1`` rejected); ``valid`` is dropped."""
    return {k: v.reshape(-1, *v.shape[2:]) for k, v in batch.items() if k != "valid"}


def forward(model: Any, flat: dict[str, Any], hidden: bool = False) -> tuple[Any, Any, Any]:
    """``(logits [N, T, V], hidden [N, T, D] or None, MoE aux dict or None)`` of a model on flattened pair rows."""
    outputs = model(flat["input_tokens"], flat["positions"], flat["segment_ids"], return_aux=True, return_hidden=hidden)
    logits, aux = outputs[0], outputs[2]
    return logits, (outputs[3] if hidden else None), aux


def sequence_logprobs(logits: Float[Array, "N T V"], targets: Int[Array, "N T"],
                      weights: Float[Array, "N T"]) -> Float[Array, "N"]:
    """Sum of ``log p(target)`` over the weighted (response) tokens of each row, in float32."""
    return jnp.sum(token_logprobs(logits, targets) * weights.astype(jnp.float32), axis=-1)


def last_hidden(hidden: Float[Array, "N T D"], last_index: Int[Array, "N"]) -> Float[Array, "N D"]:
    """The hidden state at each row's ``last_index`` (the position that has read the whole sequence)."""
    return jnp.take_along_axis(hidden, last_index[:, None, None], axis=1)[:, 0].astype(jnp.float32)


@dataclasses.dataclass
class PairwiseObjective(Objective):
    """Base of the objectives trained on preference pairs read from ``data_dir/{split}.jsonl``.

    The sequence length is ``TASK_FEATURE_LENGTHS['targets']`` of the run, the batch size ``BATCH_SIZE``
    (in pairs: ``2 · BATCH_SIZE`` sequences per step), the order a function of ``(SEED, batch position)``.
    """

    data_dir: str = "data/preferences"
    drop_too_long: bool = False  # skip (and count) pairs longer than the sequence length instead of failing

    def pairs(self, split: str) -> dict[str, np.ndarray]:
        """The tokenized pairs of a split (cached)."""
        cfg = self.run.config
        return preferences.tokenized_pairs(
            preferences.split_path(self.data_dir, split), int(cfg.data.task_feature_lengths["targets"]),
            self.drop_too_long, getattr(self.run.vocabulary, "sentencepiece_model_file", None))

    def setup(self, run) -> None:
        super().setup(run)
        self.pairs("train")  # fail before compiling on a missing file, a malformed record or a too-long pair

    def batches(self, split, start_batch, shuffle, repeat=True):
        cfg = self.run.config
        return preferences.pair_batches(self.pairs(split), cfg.data.batch_size, cfg.seed, start_batch, shuffle,
                                        repeat, jax.process_index(), jax.process_count())

    def tokens_in(self, batch) -> int:
        return int(np.prod(batch["input_tokens"].shape))

    def objective_info(self) -> dict:
        return {"kind": self.kind, "data_dir": self.data_dir}

    def pair_objective(self, per_pair: dict[str, jax.Array], valid: jax.Array, aux: dict) -> tuple[jax.Array, dict]:
        """``(objective, metrics)`` from per-pair values ``[B]`` (``per_pair["loss"]`` is the loss): means over
        the valid pairs, plus an MoE policy's auxiliary loss."""
        metrics = {k: masked_mean(v, valid) for k, v in per_pair.items()}
        return add_moe_loss(self.run, metrics["loss"], metrics, aux)

    def evaluate_pairs(self, name: str, sums_fn: Callable[[Any, Any, dict], dict[str, jax.Array]],
                       params: Any, frozen: Any) -> dict[str, float]:
        """Runs ``sums_fn(params, frozen, batch) -> {key: sum over valid pairs}`` (jitted once per ``name``)
        over every pair of the eval split and returns ``{key: sum / pairs}``; the count of pairs is the global
        sum of the batches' ``valid``."""
        cfg, mesh = self.run.config, self.run.mesh
        cache = self.__dict__.setdefault("_eval_fns", {})
        if name not in cache:
            cache[name] = jax.jit(sums_fn, out_shardings=sh.replicated(mesh))
        totals: dict[str, float] = {}
        fn = cache[name]
        for batch in self.batches(cfg.data.eval_split, 0, shuffle=False, repeat=False):
            device = {k: jax.make_array_from_process_local_data(sh.batch_sharding(mesh, ndim=v.ndim), v)
                      for k, v in batch.items()}
            sums = jax.device_get(fn(params, frozen, device))
            sums["pairs"] = jnp.sum(device["valid"])
            for k, v in sums.items():
                totals[k] = totals.get(k, 0.0) + float(v)
        count = max(totals.pop("pairs", 0.0), 1.0)
        return {k: v / count for k, v in totals.items()}
