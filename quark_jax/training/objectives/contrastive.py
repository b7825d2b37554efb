"""Contrastive embedding: the model learns to map a query and its passage to nearby unit vectors.

    e(x)   = normalize(pool(h(x)))      h: final-normed hidden states of lead + prefix + text + EOS
                                        (the layout and pooling of quark_jax.inference.embedding)
    S_ij   = e(query_i) · e(passage_j) / temperature
    loss   = mean_i CE(S_i·, i)   [+ mean_j CE(S_·j, j), averaged, when symmetric]

InfoNCE with in-batch negatives: every other passage of the batch is a negative for a query (and every other
query for a passage, when symmetric). The pairs are the standard library's (query, passage) texts
(:func:`quark_jax.data.retrieval_pairs.training_pairs`: docstring summary ↔ function source, API question ↔
docstring), held out by module. Rows are ``TASK_FEATURE_LENGTHS['targets']`` tokens (longer texts are cut),
``BATCH_SIZE`` pairs per step (``2 · BATCH_SIZE`` sequences in one forward pass); the order is a function of
``(SEED, batch position)``, so a resumed run sees the same batches.

Logged: ``loss``, ``accuracy`` (in-batch top-1 of the queries). The evaluation embeds the first
``eval_pairs`` held-out pairs (a fixed sample of the validation modules) and reports ``val_loss`` and
``val_accuracy`` (the same in-batch figures over consecutive batches of ``BATCH_SIZE``), ``val_recall_at_1``
and ``val_mrr`` (each query against all ``eval_pairs`` held-out passages).

``objective.json`` records ``pooling``, ``max_len`` and the prefixes, which
``quark_jax.retrieval.embedder.Embedder.from_run`` uses.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from quark_jax import sharding as sh
from quark_jax.data import preferences, retrieval_pairs
from quark_jax.inference import embedding
from quark_jax.training.objectives.base import Objective, masked_mean, add_moe_loss, split_heads

KIND = "contrastive_embedding"
SIDES = ("query", "passage")
_MASKED = -1e9  # logit of an invalid row or column (finite: no NaN even in an all-invalid batch)


def info_nce(queries: Float[Array, "B D"], passages: Float[Array, "B D"], valid: Float[Array, "B"],
             temperature: float, symmetric: bool = True) -> dict[str, Float[Array, "B"]]:
    """Per-pair InfoNCE loss with in-batch negatives (row ``i``'s positive is column ``i``; rows and columns
    with ``valid = 0`` are neither scored nor negatives) and in-batch top-1 correctness of the queries."""
    logits = jnp.einsum("qd,pd->qp", queries.astype(jnp.float32), passages.astype(jnp.float32)) / temperature
    keep = valid > 0
    diagonal = jnp.diagonal(logits)
    by_query = jnp.where(keep[None, :], logits, _MASKED)
    loss = jax.nn.logsumexp(by_query, axis=1) - diagonal
    if symmetric:
        by_passage = jnp.where(keep[:, None], logits, _MASKED)
        loss = 0.5 * (loss + jax.nn.logsumexp(by_passage, axis=0) - diagonal)
    correct = (jnp.argmax(by_query, axis=1) == jnp.arange(logits.shape[0])).astype(jnp.float32)
    return {"loss": jnp.where(keep, loss, 0.0), "accuracy": correct}


def _softmax_ce_numpy(logits: np.ndarray) -> np.ndarray:
    top = logits.max(axis=1, keepdims=True)
    return (np.log(np.exp(logits - top).sum(axis=1)) + top[:, 0]) - np.diagonal(logits)


@functools.lru_cache(maxsize=8)
def tokenized_pairs(split: str, tasks: tuple[str, ...], max_len: int, prefixes: tuple[str, str],
                    vocabulary_file: str | None) -> dict[str, np.ndarray]:
    """The pairs of a split as arrays: ``{query,passage}_tokens [N, max_len]`` (right-padded, layout of
    :func:`quark_jax.inference.embedding.sequence_ids`) and ``{query,passage}_lengths [N]`` (cached)."""
    from quark_jax.data.tokenizer import get_vocabulary

    vocabulary = get_vocabulary(vocabulary_file)
    pairs = retrieval_pairs.training_pairs(split, tasks)
    if not pairs:
        raise ValueError(f"no retrieval pairs in split {split!r} for tasks {tasks}")
    out = {}
    for side, prefix, texts in zip(SIDES, prefixes, zip(*pairs)):
        rows = [embedding.sequence_ids(vocabulary, t, max_len, prefix) for t in texts]
        out[f"{side}_tokens"], out[f"{side}_lengths"] = embedding.pad_rows(rows, len(rows), max_len,
                                                                           int(vocabulary.pad_id))
    return out


@dataclasses.dataclass
class ContrastiveEmbedding(Objective):
    """Trains the model's own parameters as an embedder with InfoNCE over in-batch negatives."""

    temperature: float = 0.05
    pooling: str = "mean"  # "mean" over the real tokens, or "last" (the EOS state)
    symmetric: bool = True  # also classify each passage's query among the batch's queries
    tasks: Sequence[str] = retrieval_pairs.TASKS
    query_prefix: str = "query: "
    passage_prefix: str = "passage: "
    eval_pairs: int = 512  # held-out pairs embedded by the evaluation (at most the split's)

    kind: ClassVar[str] = KIND

    def __post_init__(self):
        embedding.check_pooling(self.pooling)
        if not self.temperature > 0:
            raise ValueError(f"ContrastiveEmbedding.temperature={self.temperature} must be > 0")
        self.tasks = tuple(self.tasks)
        for task in self.tasks:
            if task not in retrieval_pairs.TASKS:
                raise ValueError(f"ContrastiveEmbedding.tasks has {task!r}; expected some of {retrieval_pairs.TASKS}")
        if self.eval_pairs < 2:
            raise ValueError(f"ContrastiveEmbedding.eval_pairs={self.eval_pairs} must be >= 2")

    @property
    def max_len(self) -> int:
        return int(self.run.config.data.task_feature_lengths["targets"])

    def pairs(self, split: str) -> dict[str, np.ndarray]:
        return tokenized_pairs(split, self.tasks, self.max_len, (self.query_prefix, self.passage_prefix),
                               getattr(self.run.vocabulary, "sentencepiece_model_file", None))

    def setup(self, run) -> None:
        super().setup(run)
        if self.max_len < 3:
            raise ValueError(f"TASK_FEATURE_LENGTHS['targets']={self.max_len} leaves no room for text")
        self.pairs("train")  # fail (and tokenize) before anything compiles

    def objective_info(self) -> dict:
        return {"kind": self.kind, "pooling": self.pooling, "max_len": self.max_len,
                "query_prefix": self.query_prefix, "passage_prefix": self.passage_prefix,
                "temperature": self.temperature, "symmetric": self.symmetric, "tasks": list(self.tasks)}

    def batches(self, split, start_batch, shuffle, repeat=True):
        cfg = self.run.config
        return preferences.pair_batches(self.pairs(split), cfg.data.batch_size, cfg.seed, start_batch, shuffle,
                                        repeat, jax.process_index(), jax.process_count())

    def tokens_in(self, batch) -> int:
        return int(np.prod(batch["query_tokens"].shape) + np.prod(batch["passage_tokens"].shape))

    def embeddings(self, params: Any, batch: dict) -> tuple[Float[Array, "B D"], Float[Array, "B D"], dict]:
        """(query vectors, passage vectors, MoE aux) of a batch, both sides in one forward pass."""
        tokens = jnp.concatenate([batch["query_tokens"], batch["passage_tokens"]])
        lengths = jnp.concatenate([batch["query_lengths"], batch["passage_lengths"]])
        hidden, aux = embedding.hidden_states(self.run.graphdef, split_heads(params)[0], tokens, lengths)
        vectors = embedding.l2_normalize(embedding.pool(hidden, lengths, self.pooling))
        n = batch["query_tokens"].shape[0]
        return vectors[:n], vectors[n:], aux

    def loss(self, params, frozen, batch):
        queries, passages, aux = self.embeddings(params, batch)
        per_pair = info_nce(queries, passages, batch["valid"], self.temperature, self.symmetric)
        metrics = {k: masked_mean(v, batch["valid"]) for k, v in per_pair.items()}
        return add_moe_loss(self.run, metrics["loss"], metrics, aux)

    # ---- evaluation ------------------------------------------------------------------------------
    def _eval_rows(self) -> dict[str, np.ndarray]:
        """The first ``eval_pairs`` held-out pairs of a fixed permutation (every task represented)."""
        pairs = self.pairs(self.run.config.data.eval_split)
        index = eval_indices(len(pairs["query_lengths"]), self.eval_pairs)
        return {k: v[index] for k, v in pairs.items()}

    def _embed_side(self, params: Any, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Vectors of one side's rows, in batches of ``BATCH_SIZE`` (the last padded), on the run's mesh."""
        cfg, mesh = self.run.config, self.run.mesh
        if not hasattr(self, "_eval_embed"):
            graphdef, pooling = self.run.graphdef, self.pooling
            self._eval_embed = jax.jit(
                lambda p, t, n: embedding.embed_tokens(graphdef, split_heads(p)[0], t, n, pooling),
                out_shardings=sh.replicated(mesh))
        size, hosts, host = cfg.data.batch_size, jax.process_count(), jax.process_index()
        local = size // hosts
        out = []
        for start in range(0, len(lengths), size):
            count = len(lengths[start:start + size])
            t, n = np.zeros((size, tokens.shape[1]), np.int32), np.ones(size, np.int32)  # padding rows: 1 token
            t[:count], n[:count] = tokens[start:start + size], lengths[start:start + size]
            rows = slice(host * local, (host + 1) * local)
            device = [jax.make_array_from_process_local_data(sh.batch_sharding(mesh, ndim=a.ndim), a[rows])
                      for a in (t, n)]
            out.append(np.asarray(jax.device_get(self._eval_embed(params, *device))))
        return np.concatenate(out)[: len(lengths)]

    def evaluate(self, params, frozen) -> dict[str, float]:
        rows = self._eval_rows()
        queries = self._embed_side(params, rows["query_tokens"], rows["query_lengths"])
        passages = self._embed_side(params, rows["passage_tokens"], rows["passage_lengths"])
        return retrieval_figures(queries, passages, self.run.config.data.batch_size, self.temperature,
                                 self.symmetric)


def eval_indices(n: int, count: int) -> np.ndarray:
    """Which of ``n`` held-out pairs the evaluation embeds: ``count`` of a fixed permutation, in order."""
    return np.sort(np.random.default_rng(0).permutation(n)[: min(count, n)])


def retrieval_figures(queries: np.ndarray, passages: np.ndarray, batch_size: int, temperature: float,
                      symmetric: bool) -> dict[str, float]:
    """Held-out figures of aligned query / passage vectors (numpy): in-batch ``val_loss`` and
    ``val_accuracy`` over consecutive chunks of ``batch_size`` pairs (a last chunk of one pair is skipped),
    and ``val_recall_at_1`` and ``val_mrr`` of every query against all passages."""
    losses, correct = [], []
    for start in range(0, len(queries), batch_size):
        q, p = queries[start:start + batch_size], passages[start:start + batch_size]
        if len(q) < 2:
            continue
        logits = q @ p.T / temperature
        loss = _softmax_ce_numpy(logits)
        if symmetric:
            loss = 0.5 * (loss + _softmax_ce_numpy(logits.T))
        losses.append(loss)
        correct.append(logits.argmax(axis=1) == np.arange(len(q)))
    scores = queries @ passages.T
    rank = (scores > np.diagonal(scores)[:, None]).sum(axis=1)  # passages scored above the right one
    return {"val_loss": float(np.concatenate(losses).mean()), "val_accuracy": float(np.concatenate(correct).mean()),
            "val_recall_at_1": float(np.mean(rank == 0)), "val_mrr": float(np.mean(1.0 / (rank + 1)))}
