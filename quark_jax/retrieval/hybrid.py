"""Reciprocal rank fusion (Cormack, Clarke & Büttcher, SIGIR 2009): ``score(d) = Σ_lists w / (c + rank(d))``
with ranks from 1, ``c = 60`` and every weight ``w = 1`` by default (the paper's form). Only ranks matter, so lists
whose scores live on different scales (BM25 and cosine) fuse without calibration. Unequal weights trust one list
more: choose them on training queries, never on the queries you report (``bench/retrieval.py`` does that)."""

from __future__ import annotations

from collections.abc import Sequence

from quark_jax.retrieval.types import Hit, Retriever

RRF_C = 60


def reciprocal_rank_fusion(ranked_lists: Sequence[Sequence[str]], k: int | None = None,
                           c: int = RRF_C, weights: Sequence[float] | None = None) -> list[tuple[str, float]]:
    """Fuses ranked lists of ids (best first; an id repeated within one list counts at its first rank) into
    ``(id, score)`` pairs, best first, at most ``k``. Ties are broken by the best rank the id reached in any
    list, then by the id itself, so the order never depends on dictionary or thread order."""
    if c < 0:
        raise ValueError(f"RRF constant c={c} must be >= 0 (the paper uses 60)")
    weights = [1.0] * len(ranked_lists) if weights is None else [float(w) for w in weights]
    if len(weights) != len(ranked_lists) or any(w < 0 for w in weights):
        raise ValueError(f"weights {weights}: one non-negative weight per ranked list ({len(ranked_lists)})")
    scores: dict[str, float] = {}
    best_rank: dict[str, int] = {}
    for ranked, weight in zip(ranked_lists, weights):
        seen: set[str] = set()
        for rank, doc_id in enumerate(ranked, start=1):
            if doc_id in seen:
                continue
            seen.add(doc_id)
            scores[doc_id] = scores.get(doc_id, 0.0) + weight / (c + rank)
            best_rank[doc_id] = min(best_rank.get(doc_id, rank), rank)
    fused = sorted(scores.items(), key=lambda item: (-item[1], best_rank[item[0]], item[0]))
    return fused if k is None else fused[:k]


class FusedRetriever:
    """Any retrievers fused by RRF: each is asked for ``depth`` hits (default ``max(k, 50)``), and a hit's
    text and metadata come from the first retriever that returned it."""

    def __init__(self, retrievers: Sequence[Retriever], c: int = RRF_C, depth: int | None = None):
        if not retrievers:
            raise ValueError("FusedRetriever needs at least one retriever")
        self.retrievers, self.c, self.depth = list(retrievers), c, depth

    def search(self, query: str, k: int = 10) -> list[Hit]:
        """The fused top ``k``; scores are RRF scores."""
        depth = self.depth or max(k, 50)
        lists = [r.search(query, depth) for r in self.retrievers]
        return fuse_hits(lists, k, self.c)


def fuse_hits(hit_lists: Sequence[Sequence[Hit]], k: int, c: int = RRF_C,
              weights: Sequence[float] | None = None) -> list[Hit]:
    """:func:`reciprocal_rank_fusion` over lists of hits, keeping each hit's text and metadata."""
    first: dict[str, Hit] = {}
    for hits in hit_lists:
        for hit in hits:
            first.setdefault(hit.id, hit)
    fused = reciprocal_rank_fusion([[h.id for h in hits] for hits in hit_lists], k, c, weights)
    return [Hit(doc_id, first[doc_id].text, score, first[doc_id].metadata) for doc_id, score in fused]
