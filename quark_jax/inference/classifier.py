"""The :class:`Classifier`: a sequence-classification run (``SequenceClassifier`` objective) as a text
classifier.

    classifier = qj.load_classifier("/tmp/intent")           # labels, pooling, max_len from objective.json
    classifier.predict_proba(["What is 3 + 4?"])              # [{"arithmetic": 0.97, "code": 0.01, ...}]
    classifier.predict(["Tell me a joke about cats."])        # ["chitchat"]

A text is read exactly as it was trained (:mod:`quark_jax.inference.embedding`: start token, text cut to fit,
EOS; mean or last pooling of the final-normed hidden states), then ``softmax(h · W + b)`` with the run's
``heads.classifier``. Texts are sorted by length and run in fixed batches of ``batch_size`` rows padded to a
power-of-two length (at least 16, at most ``max_len``), so a few shapes compile once; a text's probabilities
do not depend on what else is in its batch, and results come back in the order of the texts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float, Int

from quark_jax.inference import embedding

KIND = "sequence_classifier"  # objective.json "kind" of a SequenceClassifier run
HEAD = "classifier"  # params["heads"][HEAD] = {"w": [D, C], "b": [C]}


def head_logits(head: Mapping[str, Any], pooled: Float[Array, "B D"]) -> Float[Array, "B C"]:
    """``pooled · W + b`` in float32."""
    return jnp.einsum("bd,dc->bc", pooled.astype(jnp.float32), head["w"].astype(jnp.float32)) + \
        head["b"].astype(jnp.float32)


def class_probabilities(graphdef: nnx.GraphDef, params: Any, head: Mapping[str, Any], tokens: Int[Array, "B T"],
                        lengths: Int[Array, "B"], pooling: str = "mean") -> Float[Array, "B C"]:
    """Softmax class probabilities of right-padded token rows. Pure; jit it with ``graphdef`` and ``pooling``
    static."""
    hidden, _ = embedding.hidden_states(graphdef, params, tokens, lengths)
    return jax.nn.softmax(head_logits(head, embedding.pool(hidden, lengths, pooling)), axis=-1)


_PROBABILITIES = jax.jit(class_probabilities, static_argnums=(0, 5))


class Classifier:
    """Maps texts to class probabilities with a loaded model and its classification head."""

    def __init__(self, graphdef: nnx.GraphDef, params: Any, head: Mapping[str, Any], tokenizer: Any,
                 labels: Sequence[str], pooling: str = "mean", max_len: int = 128, batch_size: int = 32,
                 name: str | None = None):
        embedding.check_pooling(pooling)
        labels = tuple(labels)
        if tuple(np.shape(head["w"]))[-1:] != (len(labels),):
            raise ValueError(f"the head has {np.shape(head['w'])[-1]} classes but {len(labels)} labels were given")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        self.graphdef, self.params, self.head, self.tokenizer = graphdef, params, dict(head), tokenizer
        self.labels, self.pooling, self.max_len, self.batch_size = labels, pooling, int(max_len), int(batch_size)
        self.name = name

    @classmethod
    def from_loaded(cls, model: Any, batch_size: int = 32, name: str | None = None) -> Classifier:
        """A classifier over a model loaded from a ``SequenceClassifier`` run (``qj.load(run_dir)``: its
        ``heads`` and ``objective`` carry the head, the labels, the pooling and the trained length)."""
        info = getattr(model, "objective", None) or {}
        heads = getattr(model, "heads", None) or {}
        if info.get("kind") != KIND or HEAD not in heads:
            raise ValueError(f"the model is not a sequence-classifier run (objective kind {info.get('kind')!r}, "
                             f"heads {sorted(heads)}); train one with configs/runs/intent.gin")
        return cls(model.graphdef, model.params, heads[HEAD], model.tokenizer, info["labels"],
                   info.get("pooling", "mean"), int(info.get("max_len", 128)), batch_size, name)

    def probabilities(self, texts: Sequence[str]) -> Float[np.ndarray, "N C"]:
        """float32 probabilities ``[len(texts), len(labels)]`` (columns in :attr:`labels` order)."""
        if isinstance(texts, str):
            raise TypeError("the classifier takes a sequence of texts, not one string: predict([text])")
        rows = [embedding.sequence_ids(self.tokenizer, t, self.max_len) for t in texts]
        out = np.zeros((len(rows), len(self.labels)), np.float32)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        pad_id = int(getattr(self.tokenizer, "pad_id", 0))
        for start in range(0, len(order), self.batch_size):
            chosen = order[start:start + self.batch_size]
            length = embedding.length_bucket(max(len(rows[i]) for i in chosen), self.max_len)
            tokens, lengths = embedding.pad_rows([rows[i] for i in chosen], self.batch_size, length, pad_id)
            probs = _PROBABILITIES(self.graphdef, self.params, self.head, tokens, lengths, self.pooling)
            out[chosen] = np.asarray(jax.device_get(probs))[: len(chosen)]
        return out

    def predict_proba(self, texts: Sequence[str]) -> list[dict[str, float]]:
        """``{label: probability}`` per text, in the order of ``texts``."""
        return [dict(zip(self.labels, map(float, row))) for row in self.probabilities(texts)]

    def predict(self, texts: Sequence[str]) -> list[str]:
        """The most probable label of each text."""
        return [self.labels[int(i)] for i in self.probabilities(texts).argmax(axis=1)]
