"""Retrieval metrics as the field computes them: trec_eval's implementation through ``pytrec_eval`` (what BEIR
reports), not our own formulas.

``qrels`` maps a query id to its relevant passage ids (graded relevance allowed: ``{"q1": {"json.dumps": 1}}``);
a run maps a query id to ``{passage id: score}`` (higher is better). trec_eval ranks a run's passages by score,
ties broken by passage id (descending), so callers that care about ties pass distinct scores — a ranked list
goes through :func:`run_from_ranking`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from quark_jax.retrieval.types import Hit

# Names in our reports → trec_eval measures.
MEASURES = {"recall@1": "recall_1", "recall@10": "recall_10", "mrr": "recip_rank", "ndcg@10": "ndcg_cut_10"}


def run_from_ranking(ranking: Sequence[str | Hit]) -> dict[str, float]:
    """A ranked list (best first) as trec_eval scores that keep exactly that order."""
    ids = [h.id if isinstance(h, Hit) else h for h in ranking]
    return {pid: float(len(ids) - i) for i, pid in enumerate(dict.fromkeys(ids))}


def per_query(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]]
              ) -> dict[str, dict[str, float]]:
    """recall@1, recall@10, MRR and nDCG@10 of every query of ``qrels`` (a query the run misses scores 0)."""
    import pytrec_eval

    if not qrels:
        raise ValueError("no queries to evaluate (qrels is empty)")
    qrels = {q: {p: int(r) for p, r in rel.items()} for q, rel in qrels.items()}
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {"recall.1,10", "recip_rank", "ndcg_cut.10"})
    figures = evaluator.evaluate({q: dict(run.get(q) or {"": 0.0}) for q in qrels})
    return {q: {name: float(figures[q][m]) for name, m in MEASURES.items()} for q in qrels}


def evaluate(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]]
             ) -> dict[str, float]:
    """Mean recall@1, recall@10, MRR and nDCG@10 over the queries of ``qrels`` (a query the run misses
    counts as 0), plus ``queries``: how many were judged."""
    figures = per_query(qrels, run)
    means = {name: float(np.mean([figures[q][name] for q in figures])) for name in MEASURES}
    return {**means, "queries": len(figures)}


def recall_at_k(approximate: Sequence[Sequence[str]], exact: Sequence[Sequence[str]], k: int = 10) -> float:
    """How much of the exact top-k an approximate search finds, averaged over queries (ANN recall)."""
    found = [len(set(a[:k]) & set(e[:k])) / max(1, len(e[:k])) for a, e in zip(approximate, exact, strict=True)]
    return float(np.mean(found)) if found else 0.0
