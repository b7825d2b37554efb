"""BM25 over ``bm25s`` with a tokenisation suited to Python source and English prose.

Tokenisation (:func:`tokenize`), applied alike to passages and queries:

1. words are maximal runs of letters, digits and underscores (``\\w+``); everything else separates;
2. each word is kept whole, lower-cased, with leading/trailing underscores stripped (``raw_decode``);
3. a word made of several parts — split at underscores and at lower→upper / acronym→word / letter↔digit
   case boundaries — also contributes its lower-cased parts (``JSONDecoder`` → ``jsondecoder json decoder``);
4. tokens on :data:`STOPWORDS` (a small English list) are dropped.

So ``JSONDecoder.raw_decode`` gives ``jsondecoder json decoder raw_decode raw decode``: a query for the whole
identifier matches it exactly, a query in words ("json decoder") still finds it.

Scoring is ``bm25s``' default, Lucene's BM25 (``k1=1.5, b=0.75``; ``idf = ln(1 + (N - df + 0.5)/(df + 0.5))``).
Its IDF and average length depend on every document, so adding or deleting passages re-fits the whole model
(about a second per 100k short passages, see ``bench/retrieval_scale.py``). Documents that share no term with a
query are not returned.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence

import numpy as np
from jaxtyping import Float, Int

STOPWORDS: frozenset[str] = frozenset(
    "a an and are as at be but by for from has have if in into is it its of on or so such that the their then "
    "there these they this to was were will with".split())

_WORD = re.compile(r"\w+")
_PART = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+|[^\W\d_A-Za-z]+")

BM25_PARAMS = {"method": "lucene", "k1": 1.5, "b": 0.75}


def tokenize(text: str) -> list[str]:
    """The BM25 tokens of ``text`` (see the module docstring), in order, repeats kept."""
    tokens: list[str] = []
    for word in _WORD.findall(text):
        whole = word.strip("_").lower()
        if not whole:
            continue
        parts = [p.lower() for piece in word.split("_") for p in _PART.findall(piece)]
        if whole not in STOPWORDS:
            tokens.append(whole)
        if len(parts) > 1:
            tokens.extend(p for p in parts if p not in STOPWORDS)
    return tokens


class BM25:
    """A fitted BM25 model over a list of texts; documents are addressed by their position in that list."""

    def __init__(self, model, num_docs: int):
        self._model = model
        self.num_docs = num_docs

    @classmethod
    def fit(cls, texts: Sequence[str]) -> BM25:
        """Tokenises and indexes ``texts`` (an empty list gives a model that finds nothing)."""
        return cls.fit_tokens([tokenize(t) for t in texts])

    @classmethod
    def fit_tokens(cls, documents: Sequence[list[str]]) -> BM25:
        """Indexes already tokenised documents (what :func:`tokenize` returned for each), so that a re-fit
        after an add or delete skips tokenising the passages it has seen."""
        import bm25s

        model = bm25s.BM25(**BM25_PARAMS)
        if documents:
            model.index(list(documents), show_progress=False)
        return cls(model, len(documents))

    def scores(self, query: str) -> Float[np.ndarray, "D"]:
        """BM25 score of every document for ``query`` (0 where no term matches)."""
        tokens = [t for t in tokenize(query) if t in self._model.vocab_dict] if self.num_docs else []
        if not tokens:
            return np.zeros(self.num_docs, np.float32)
        return np.asarray(self._model.get_scores(tokens), np.float32)

    def search(self, query: str, k: int) -> tuple[Int[np.ndarray, "K"], Float[np.ndarray, "K"]]:
        """Positions and scores of the best ``k`` documents with a positive score, best first (ties: lower
        position first)."""
        scores = self.scores(query)
        matched = np.flatnonzero(scores > 0)
        order = np.lexsort((matched, -scores[matched]))[:k]
        return matched[order], scores[matched[order]]

    def save(self, directory: str) -> None:
        """Writes ``bm25s``' own files (JSON vocabulary and parameters, ``.npy`` score matrices saved with
        ``allow_pickle=False``) plus ``quark_bm25.json`` into ``directory``."""
        os.makedirs(directory, exist_ok=True)
        if self.num_docs:
            self._model.save(directory, allow_pickle=False)
        with open(os.path.join(directory, "quark_bm25.json"), "w") as f:
            json.dump({"num_docs": self.num_docs, **BM25_PARAMS}, f)

    @classmethod
    def load(cls, directory: str) -> BM25:
        """Reads what :meth:`save` wrote (arrays loaded with ``allow_pickle=False``)."""
        import bm25s

        with open(os.path.join(directory, "quark_bm25.json")) as f:
            info = json.load(f)
        if not info["num_docs"]:
            return cls(bm25s.BM25(**BM25_PARAMS), 0)
        model = bm25s.BM25.load(directory, allow_pickle=False, load_corpus=False)
        return cls(model, int(info["num_docs"]))
