"""BM25, exact and HNSW dense search, and reciprocal rank fusion, each against an independent reference."""

import math
from collections import Counter

import numpy as np
import pytest

from quark_jax.retrieval import dense, hybrid, lexical
from quark_jax.retrieval.types import Hit

CORPUS = [
    "The JSONDecoder.raw_decode method parses a JSON document from a string",
    "json.dumps serialises a Python object to a JSON formatted string",
    "os.path.join joins path components with the separator",
    "A decoder turns bytes back into text; an encoder does the reverse",
    "raw strings keep backslashes in regular expressions",
    "collections.Counter counts hashable objects in a dict subclass",
    "the parser reads tokens and builds a syntax tree",
    "",
]


def test_tokenize_splits_identifiers_and_keeps_them_whole():
    assert lexical.tokenize("JSONDecoder.raw_decode") == ["jsondecoder", "json", "decoder", "raw_decode", "raw", "decode"]
    assert lexical.tokenize("The parseHTTPResponse of utf8 IS here") == [
        "parsehttpresponse", "parse", "http", "response", "utf8", "utf", "8", "here"]
    assert lexical.tokenize("  ...  ") == []


def _okapi_lucene(corpus_tokens, query_tokens, k1=1.5, b=0.75):
    """BM25 written out from the formula, Lucene's variant (bm25s' default): Okapi's term weight without the
    constant ``(k1 + 1)`` numerator factor, which changes no ranking."""
    n = len(corpus_tokens)
    avgdl = sum(len(d) for d in corpus_tokens) / n
    df = Counter(t for d in corpus_tokens for t in set(d))
    scores = []
    for doc in corpus_tokens:
        tf = Counter(doc)
        score = 0.0
        for t in query_tokens:
            if tf[t] == 0:
                continue
            idf = math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5))
            score += idf * tf[t] / (tf[t] + k1 * (1 - b + b * len(doc) / avgdl))
        scores.append(score)
    return np.asarray(scores)


@pytest.mark.parametrize("query", ["json decoder", "raw_decode string", "Counter objects dict", "path separator"])
def test_bm25_equals_hand_computed_okapi(query):
    model = lexical.BM25.fit(CORPUS)
    expected = _okapi_lucene([lexical.tokenize(t) for t in CORPUS], sorted(set(lexical.tokenize(query))))
    np.testing.assert_allclose(model.scores(query), expected, rtol=1e-5, atol=1e-6)
    positions, scores = model.search(query, k=3)
    expected_order = [i for i in np.lexsort((np.arange(len(CORPUS)), -expected)) if expected[i] > 0][:3]
    assert positions.tolist() == expected_order


def test_bm25_identifier_query_finds_the_identifier_first():
    model = lexical.BM25.fit(CORPUS)
    positions, _ = model.search("JSONDecoder", k=2)
    assert positions[0] == 0
    assert model.search("the of and", k=3)[0].size == 0  # only stopwords: nothing matches


def test_bm25_save_load_roundtrip(tmp_path):
    model = lexical.BM25.fit(CORPUS)
    model.save(str(tmp_path / "bm25"))
    loaded = lexical.BM25.load(str(tmp_path / "bm25"))
    np.testing.assert_array_equal(loaded.scores("json string decoder"), model.scores("json string decoder"))


def _unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_exact_search_equals_brute_force_with_tombstones():
    rng = np.random.default_rng(0)
    vectors, queries = _unit(rng, 500, 16), _unit(rng, 37, 16)
    live = rng.random(500) > 0.3
    rows, scores = dense.exact_search(vectors, queries, k=7, live=live, batch=10)
    for q in range(37):
        sims = [(float(np.dot(vectors[i], queries[q])), i) for i in range(500) if live[i]]
        best = sorted(sims, key=lambda s: (-s[0], s[1]))[:7]
        assert rows[q].tolist() == [i for _, i in best]
        np.testing.assert_allclose(scores[q], [s for s, _ in best], rtol=1e-5)
    few, few_scores = dense.exact_search(vectors[:3], queries[:1], k=5)
    assert few[0, 3:].tolist() == [-1, -1] and np.isneginf(few_scores[0, 3:]).all()


def test_hnsw_recall_against_exact_and_tombstones():
    rng = np.random.default_rng(1)
    vectors, queries = _unit(rng, 5000, 32), _unit(rng, 200, 32)
    index = dense.build_hnsw(vectors)
    exact_rows, _ = dense.exact_search(vectors, queries, k=10)
    approx_rows, _ = dense.hnsw_search(index, queries, k=10, ef_search=dense.HNSWParams().ef_search)
    recall = dense.recall_at_k(approx_rows, exact_rows)
    assert recall >= 0.95, recall
    live = np.ones(5000, bool)
    live[exact_rows[:, :5].ravel()] = False  # the five true best of every query are deleted
    rows, _ = dense.hnsw_search(index, queries, k=10, ef_search=256, live=live)
    assert live[rows].all() and (rows >= 0).all()
    exact_live, _ = dense.exact_search(vectors, queries, k=10, live=live)
    assert dense.recall_at_k(rows, exact_live) >= 0.9


def test_recall_at_k_counts_overlap():
    assert dense.recall_at_k(np.array([[1, 2, 3], [4, 5, -1]]), np.array([[3, 2, 9], [4, -1, -1]])) == pytest.approx(3 / 4)


def test_rrf_on_hand_made_lists():
    fused = hybrid.reciprocal_rank_fusion([["a", "b", "c"], ["b", "d", "a"]], c=60)
    expected = {"a": 1 / 61 + 1 / 63, "b": 1 / 62 + 1 / 61, "c": 1 / 63, "d": 1 / 62}
    assert [doc for doc, _ in fused] == ["b", "a", "d", "c"]
    assert dict(fused) == pytest.approx(expected)
    # ties: equal scores are ordered by best rank reached, then by id
    tie = hybrid.reciprocal_rank_fusion([["x", "y"], ["y", "x"], ["z"], ["w"]], c=0)
    assert [doc for doc, _ in tie] == ["x", "y", "w", "z"]
    assert hybrid.reciprocal_rank_fusion([["a", "a", "b"]], k=1, c=1) == [("a", 0.5)]
    # weights: the first list counts three times as much, which turns the order of a and b around
    weighted = hybrid.reciprocal_rank_fusion([["a", "b", "c"], ["b", "d", "a"]], c=60, weights=[3, 1])
    assert dict(weighted) == pytest.approx({"a": 3 / 61 + 1 / 63, "b": 3 / 62 + 1 / 61, "c": 3 / 63, "d": 1 / 62})
    assert [doc for doc, _ in weighted] == ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match="one non-negative weight per ranked list"):
        hybrid.reciprocal_rank_fusion([["a"], ["b"]], weights=[1])


def test_fused_retriever_keeps_text_and_fuses():
    class Fixed:
        def __init__(self, ids):
            self.ids = ids

        def search(self, query, k=10):
            return [Hit(i, f"text {i}", 1.0, {"from": self.ids[0]}) for i in self.ids[:k]]

    hits = hybrid.FusedRetriever([Fixed(["p", "q"]), Fixed(["q", "r"])]).search("anything", k=2)
    assert [h.id for h in hits] == ["q", "p"]
    assert hits[0].text == "text q" and hits[0].metadata == {"from": "p"}
