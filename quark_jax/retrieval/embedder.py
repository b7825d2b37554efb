"""The :class:`Embedder`: any quark run as a text embedder (pooled final hidden states, L2-normalised).

    embedder = Embedder.from_run("/tmp/embed_run")          # pooling, max_len, prefixes from objective.json
    vectors = embedder.embed(["Return the JSON string of obj."], kind="query")   # float32 [1, dim]

Texts are tokenized with the run's tokenizer (layout, truncation and pooling in
:mod:`quark_jax.inference.embedding`: a text longer than ``max_len`` tokens, start token and EOS included,
is cut at the end), sorted by length, and run in fixed batches of ``batch_size`` rows padded to a power-of-two
length (at least 16, at most ``max_len``), so a few shapes are compiled once and reused; the order of the
results is the order of the texts, and a text's vector does not depend on what else is in its batch.

Prefixes: queries are embedded as ``"query: " + text`` and passages as ``"passage: " + text`` by default
(the E5 convention). The two sides of a retrieval pair are different kinds of text (a one-line summary, a
function's source), and one shared encoder tells them apart only by what it reads; the marker costs two or
three tokens and lets a contrastive run learn an asymmetric map. They are part of the :attr:`identity`, and
a contrastive run records the ones it was trained with.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jaxtyping import Float

from quark_jax.inference import embedding
from quark_jax.retrieval.types import TextKind

log = logging.getLogger(__name__)

DEFAULT_MAX_LEN = 256
DEFAULT_PREFIXES = {"query": "query: ", "passage": "passage: "}
# objective.json "kind" of a run trained by quark_jax.training.objectives.contrastive.ContrastiveEmbedding
CONTRASTIVE_KIND = "contrastive_embedding"
# One jitted function for every embedder: compiled once per (model graph, pooling, batch, length bucket).
_EMBED = jax.jit(embedding.embed_tokens, static_argnums=(0, 4))


def _params_fingerprint(params: Any) -> str:
    """sha256 over every parameter's path, dtype, shape and bytes (an unnamed model's identity)."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        array = np.asarray(jax.device_get(leaf))
        digest.update(f"{jax.tree_util.keystr(path)}|{array.dtype}|{array.shape}\n".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def _setting(given: str | None, trained: dict, key: str, default: str) -> str:
    """An explicit setting, else the contrastive run's recorded one, else the default."""
    return given if given is not None else trained.get(key, default)


class Embedder:
    """Maps texts to L2-normalised float32 vectors ``[N, dim]`` with a loaded quark model (``qj.load``).

    ``model_name`` names the model in :attr:`identity` (:meth:`from_run` passes the absolute run directory
    and step); without one the identity carries a fingerprint of the parameters' bytes."""

    def __init__(self, loaded_model: Any, pooling: str = "mean", max_len: int = DEFAULT_MAX_LEN,
                 batch_size: int = 32, query_prefix: str = DEFAULT_PREFIXES["query"],
                 passage_prefix: str = DEFAULT_PREFIXES["passage"], model_name: str | None = None):
        embedding.check_pooling(pooling)
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        lead = len(embedding.lead_ids(loaded_model.tokenizer))
        if max_len < lead + 2:
            raise ValueError(f"max_len={max_len} must be at least {lead + 2} (start token, one text token, EOS)")
        self.model = loaded_model
        self.pooling, self.max_len, self.batch_size = pooling, int(max_len), int(batch_size)
        self.prefixes = {"query": query_prefix, "passage": passage_prefix}
        self.dim = int(loaded_model.config.d_model)
        name = model_name or f"params-sha256:{_params_fingerprint(loaded_model.params)}"
        self.identity = "quark-embedder:" + json.dumps(
            {"model": name, "step": int(loaded_model.step), "pooling": pooling, "max_len": self.max_len,
             "query_prefix": query_prefix, "passage_prefix": passage_prefix}, sort_keys=True)

    @classmethod
    def from_run(cls, run_dir: str, step: int | None = None, pooling: str | None = None,
                 max_len: int | None = None, batch_size: int = 32, query_prefix: str | None = None,
                 passage_prefix: str | None = None) -> Embedder:
        """An embedder over a run directory's newest (or ``step``) checkpoint.

        Settings left None come from the run's ``objective.json`` when it was trained with the contrastive
        objective (its pooling, max_len and prefixes), else the defaults: mean pooling, the default prefixes,
        ``max_len`` 256 or the run's trained context when shorter."""
        from quark_jax import api, runs

        run_dir = runs.resolve(run_dir, "embedding model")
        return cls.from_loaded(api.load(run_dir, step=step), run_dir, pooling, max_len, batch_size, query_prefix,
                               passage_prefix)

    @classmethod
    def from_loaded(cls, model: Any, run_dir: str | None = None, pooling: str | None = None,
                    max_len: int | None = None, batch_size: int = 32, query_prefix: str | None = None,
                    passage_prefix: str | None = None) -> Embedder:
        """Like :meth:`from_run` for a model already loaded (``qj.load(run_dir)``): the settings a contrastive
        run recorded in ``run_dir``'s ``objective.json`` apply, and ``run_dir`` names the model in the
        identity (without it, a fingerprint of the parameters does)."""
        from quark_jax import runs

        info = runs.read_objective_info(run_dir) if run_dir else {}
        trained = info if info.get("kind") == CONTRASTIVE_KIND else {}
        default_len = min(DEFAULT_MAX_LEN, model.trained_context or DEFAULT_MAX_LEN)
        name = None if run_dir is None else run_dir if "://" in run_dir else os.path.abspath(run_dir)
        return cls(
            model,
            pooling=pooling or trained.get("pooling", "mean"),
            max_len=max_len or int(trained.get("max_len", default_len)),
            batch_size=batch_size,
            query_prefix=_setting(query_prefix, trained, "query_prefix", DEFAULT_PREFIXES["query"]),
            passage_prefix=_setting(passage_prefix, trained, "passage_prefix", DEFAULT_PREFIXES["passage"]),
            model_name=name,
        )

    def token_ids(self, texts: Sequence[str], kind: TextKind = "passage") -> list[list[int]]:
        """The model's input ids of each text (start token, prefix, text cut to fit, EOS)."""
        if kind not in self.prefixes:
            raise ValueError(f"kind={kind!r} must be 'query' or 'passage'")
        prefix = self.prefixes[kind]
        return [embedding.sequence_ids(self.model.tokenizer, t, self.max_len, prefix) for t in texts]

    def embed(self, texts: Sequence[str], kind: TextKind = "passage") -> Float[np.ndarray, "N dim"]:
        """L2-normalised float32 vectors ``[len(texts), dim]`` in the order of ``texts``."""
        if isinstance(texts, str):
            raise TypeError("embed takes a sequence of texts, not one string: embed([text])")
        rows = self.token_ids(texts, kind)
        out = np.zeros((len(rows), self.dim), np.float32)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        pad_id = int(getattr(self.model.tokenizer, "pad_id", 0))
        for start in range(0, len(order), self.batch_size):
            chosen = order[start:start + self.batch_size]
            length = embedding.length_bucket(max(len(rows[i]) for i in chosen), self.max_len)
            tokens, lengths = embedding.pad_rows([rows[i] for i in chosen], self.batch_size, length, pad_id)
            vectors = _EMBED(self.model.graphdef, self.model.params, tokens, lengths, self.pooling)
            out[chosen] = np.asarray(jax.device_get(vectors))[: len(chosen)]
        return out
