"""Retrieval metrics through trec_eval agree with the textbook definitions computed by hand."""

import math

import pytest

from quark_jax.retrieval.metrics import evaluate, recall_at_k, run_from_ranking


def test_trec_eval_figures_equal_the_definitions():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1, "c": 1}, "q3": {"z": 1}}
    run = {"q1": run_from_ranking(["a", "x", "y"]),   # first: RR 1
           "q2": run_from_ranking(["x", "c", "y", "b"]),  # relevant at 2 and 4
           "q3": run_from_ranking(["x", "y"])}       # never found
    got = evaluate(qrels, run)
    dcg2 = 1 / math.log2(3) + 1 / math.log2(5)
    idcg2 = 1 + 1 / math.log2(3)
    assert got["queries"] == 3
    assert got["recall@1"] == pytest.approx((1 + 0 + 0) / 3)
    assert got["recall@10"] == pytest.approx((1 + 1 + 0) / 3)
    assert got["mrr"] == pytest.approx((1 + 1 / 2 + 0) / 3)
    assert got["ndcg@10"] == pytest.approx((1 + dcg2 / idcg2 + 0) / 3)


def test_a_query_missing_from_the_run_counts_as_zero_and_order_is_kept():
    got = evaluate({"q1": {"a": 1}, "q2": {"b": 1}}, {"q1": run_from_ranking(["b", "a"])})
    assert got["mrr"] == pytest.approx(0.5 / 2)
    assert recall_at_k([["a", "b", "x"]], [["a", "b", "c"]], k=3) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="no queries"):
        evaluate({}, {})
