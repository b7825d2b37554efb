"""Sequence classification: a linear head over pooled final-normed hidden states, trained with cross-entropy.

    h(x)      = pool(final-normed hidden states of lead + text + EOS)   (layout and pooling of
                                                                          quark_jax.inference.embedding)
    logits(x) = h(x) · W + b            W: [D, C], b: [C]   (``heads.classifier``)
    loss      = mean over rows of CE(logits(x), label)

The data is ``data_dir/{train,validation}.jsonl`` of ``{"text", "label"}`` records (default the project's
intent set, ``python -m quark_jax.data.intents``); the class names are ``labels`` in that order (default: the
sorted labels of the training file). Texts longer than ``TASK_FEATURE_LENGTHS['targets']`` tokens are cut.
``BATCH_SIZE`` rows per step, in an order that is a function of ``(SEED, batch position)``, so a resumed run
sees the same batches.

The trainable tree is the model's parameters plus ``heads.classifier = {"w": [D, C], "b": [C]}`` (zeros:
the first loss is log C; replicated, no weight decay), warm-started from ``INIT_FROM``. Logged: ``loss``,
``accuracy``. The evaluation classifies every held-out row: ``val_loss``, ``val_accuracy`` and
``val_accuracy/<label>`` per class. ``objective.json`` records ``labels``, ``pooling`` and ``max_len``, which
:class:`quark_jax.inference.classifier.Classifier` reads.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from quark_jax import sharding as sh
from quark_jax.data import intents, preferences
from quark_jax.inference import classifier, embedding
from quark_jax.training.objectives.base import Objective, masked_mean, add_moe_loss, split_heads

KIND = classifier.KIND
HEAD = classifier.HEAD


def read_examples(path: str) -> list[dict[str, Any]]:
    """``{text, label}`` records of a JSONL file; a missing file or field raises naming the file and line."""
    from quark_jax.data import chat_tasks  # lazy: imports TensorFlow

    def check(record):
        if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in intents.FIELDS):
            return f"a classification record needs string fields {list(intents.FIELDS)}"
        return None

    records = chat_tasks.read_jsonl(path, check, missing_hint=(
        "the project's intent set is built by `python -m quark_jax.data.intents`; records are {text, label}"))
    if not records:
        raise ValueError(f"{path} holds no examples")
    return records


@functools.lru_cache(maxsize=8)
def tokenized_examples(path: str, labels: tuple[str, ...], max_len: int, vocabulary_file: str | None
                       ) -> dict[str, np.ndarray]:
    """The examples of a file as arrays: ``tokens [N, max_len]`` (right-padded, the embedding layout),
    ``lengths [N]`` and ``labels [N]`` (index into ``labels``); a label outside ``labels`` raises."""
    from quark_jax.data.tokenizer import get_vocabulary

    vocabulary = get_vocabulary(vocabulary_file)
    records = read_examples(path)
    index = {name: i for i, name in enumerate(labels)}
    unknown = sorted({r["label"] for r in records} - set(index))
    if unknown:
        raise ValueError(f"{path}: label(s) {unknown} are not among the classes {list(labels)}; "
                         "add them to SequenceClassifier.labels or fix the data")
    rows = [embedding.sequence_ids(vocabulary, r["text"], max_len) for r in records]
    tokens, lengths = embedding.pad_rows(rows, len(rows), max_len, int(vocabulary.pad_id))
    out = {"tokens": tokens, "lengths": lengths, "labels": np.array([index[r["label"]] for r in records], np.int32)}
    for array in out.values():
        array.setflags(write=False)  # cached: shared by every caller
    return out


def cross_entropy(logits: Float[Array, "B C"], labels: Int[Array, "B"]) -> dict[str, Float[Array, "B"]]:
    """Per-row cross-entropy and arg-max correctness, in float32."""
    logits = logits.astype(jnp.float32)
    picked = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
    return {"loss": jax.nn.logsumexp(logits, axis=1) - picked,
            "accuracy": (jnp.argmax(logits, axis=1) == labels).astype(jnp.float32)}


@dataclasses.dataclass
class SequenceClassifier(Objective):
    """Trains ``model + heads.classifier`` on ``data_dir/{train,validation}.jsonl`` ``{text, label}`` rows."""

    data_dir: str = "data/intents"
    labels: Sequence[str] = ()  # the classes in head order; () = the sorted labels of the training file
    pooling: str = "mean"  # "mean" over the real tokens, or "last" (the EOS state)

    kind: ClassVar[str] = KIND

    def __post_init__(self):
        embedding.check_pooling(self.pooling)
        self.labels = tuple(self.labels)
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"SequenceClassifier.labels={list(self.labels)} repeats a class")

    @property
    def max_len(self) -> int:
        return int(self.run.config.data.task_feature_lengths["targets"])

    def examples(self, split: str) -> dict[str, np.ndarray]:
        return tokenized_examples(intents.split_path(self.data_dir, split), self.labels, self.max_len,
                                  getattr(self.run.vocabulary, "sentencepiece_model_file", None))

    def setup(self, run) -> None:
        super().setup(run)
        if self.max_len < 3:
            raise ValueError(f"TASK_FEATURE_LENGTHS['targets']={self.max_len} leaves no room for text")
        if not self.labels:
            self.labels = tuple(sorted({r["label"] for r in read_examples(intents.split_path(self.data_dir, "train"))}))
        if len(self.labels) < 2:
            raise ValueError(f"SequenceClassifier needs at least 2 classes, got {list(self.labels)}")
        self.examples("train")  # fail (and tokenize) before anything compiles

    def objective_info(self) -> dict:
        return {"kind": self.kind, "labels": list(self.labels), "pooling": self.pooling, "max_len": self.max_len,
                "data_dir": self.data_dir}

    # ---- parameters: the model plus a [D, C] head ------------------------------------------------
    def init_params(self, model_params, key):
        d, c = self.run.model_config.d_model, len(self.labels)
        return {**model_params, "heads": {HEAD: {"w": jnp.zeros((d, c), jnp.float32),
                                                 "b": jnp.zeros((c,), jnp.float32)}}}

    def param_shardings(self, model_shardings):
        replicated = sh.replicated(self.run.mesh)
        return {**model_shardings, "heads": {HEAD: {"w": replicated, "b": replicated}}}

    def decay_mask(self, model_mask):
        return {**model_mask, "heads": {HEAD: {"w": False, "b": False}}}

    # ---- data and loss ---------------------------------------------------------------------------
    def batches(self, split, start_batch, shuffle, repeat=True):
        cfg = self.run.config
        return preferences.pair_batches(self.examples(split), cfg.data.batch_size, cfg.seed, start_batch, shuffle,
                                        repeat, jax.process_index(), jax.process_count())

    def tokens_in(self, batch) -> int:
        return int(np.prod(batch["tokens"].shape))

    def logits(self, params: Any, batch: dict) -> tuple[Float[Array, "B C"], dict]:
        """Class logits of a batch's rows and the MoE aux values."""
        model_params, heads = split_heads(params)
        hidden, aux = embedding.hidden_states(self.run.graphdef, model_params, batch["tokens"], batch["lengths"])
        pooled = embedding.pool(hidden, batch["lengths"], self.pooling)
        return classifier.head_logits(heads[HEAD], pooled), aux

    def loss(self, params, frozen, batch):
        logits, aux = self.logits(params, batch)
        per_row = cross_entropy(logits, batch["labels"])
        metrics = {k: masked_mean(v, batch["valid"]) for k, v in per_row.items()}
        return add_moe_loss(self.run, metrics["loss"], metrics, aux)

    def evaluate(self, params, frozen) -> dict[str, float]:
        cfg, mesh = self.run.config, self.run.mesh
        if not hasattr(self, "_eval_sums"):
            def sums(params, batch):
                logits, _ = self.logits(params, batch)
                per_row = cross_entropy(logits, batch["labels"])
                rows = jax.nn.one_hot(batch["labels"], len(self.labels)) * batch["valid"][:, None]
                return {"loss": jnp.sum(per_row["loss"] * batch["valid"]),
                        "correct": jnp.einsum("bc,b->c", rows, per_row["accuracy"]), "count": rows.sum(0)}

            self._eval_sums = jax.jit(sums, out_shardings=sh.replicated(mesh))
        totals = None
        for batch in self.batches(cfg.data.eval_split, 0, shuffle=False, repeat=False):
            device = {k: jax.make_array_from_process_local_data(sh.batch_sharding(mesh, ndim=v.ndim), v)
                      for k, v in batch.items()}
            out = {k: np.asarray(v, np.float64) for k, v in jax.device_get(self._eval_sums(params, device)).items()}
            totals = out if totals is None else {k: totals[k] + out[k] for k in out}
        return class_figures(totals["loss"], totals["correct"], totals["count"], self.labels)


def class_figures(loss_sum: float, correct: np.ndarray, count: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    """``val_loss``, ``val_accuracy`` and ``val_accuracy/<name>`` (per class, over its rows) from the summed
    loss and the per-class counts of correct and of all rows."""
    total = max(float(count.sum()), 1.0)
    figures = {"val_loss": float(loss_sum) / total, "val_accuracy": float(correct.sum()) / total}
    for i, name in enumerate(names):
        if count[i] > 0:
            figures[f"val_accuracy/{name}"] = float(correct[i] / count[i])
    return figures
