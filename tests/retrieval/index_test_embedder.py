"""A small deterministic embedder for index tests: a hashed bag of words projected by a fixed random matrix."""

from __future__ import annotations

import zlib

import numpy as np

from quark_jax.retrieval.lexical import tokenize


class HashedBowEmbedder:
    """Texts sharing words get nearby vectors; the same text always gets the same vector."""

    def __init__(self, dim: int = 32, buckets: int = 512, seed: int = 0, identity: str | None = None):
        self.dim = dim
        self.identity = identity or f"test-hashed-bow-{dim}-{buckets}-seed{seed}"
        self._buckets = buckets
        self._projection = np.random.default_rng(seed).standard_normal((buckets, dim)).astype(np.float32)

    def embed(self, texts, kind="passage"):
        counts = np.zeros((len(texts), self._buckets), np.float32)
        for i, text in enumerate(texts):
            for token in tokenize(text) or ["<empty>"]:
                counts[i, zlib.crc32(token.encode()) % self._buckets] += 1.0
        vectors = np.einsum("nb,bd->nd", counts, self._projection)
        return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
