"""KG-augmented retrieval: a question that names a function, whose answer lies in what that function calls, is
answered only when the hits are expanded through the graph; expansions follow the base hits, deduplicated and
bounded."""

from __future__ import annotations

import inspect
import json
import json.decoder
import json.encoder
import re

import pytest

from quark_jax.knowledge import stdlib_graph
from quark_jax.knowledge.augment import GraphExpandedRetriever
from quark_jax.knowledge.store import KnowledgeGraph, Provenance
from quark_jax.retrieval.types import Hit, Passage

PASSAGES = [
    Passage("doc:shop.checkout", "Checkout: compute the order total of the cart and charge the customer card.",
            {"entity": "shop.checkout"}),
    Passage("shop.checkout", "def checkout(cart, card):\n    total = subtotal(cart) * (1 + vat_rate(cart.country))\n"
                             "    card.charge(total)"),
    Passage("shop.subtotal", "def subtotal(cart):\n    return sum(item.price * item.quantity for item in cart.items)"),
    Passage("shop.vat_rate", "def vat_rate(country):\n    return RATES.get(country, 0.20)"),
    Passage("shop.RATES", "RATES = {'GB': 0.20, 'DE': 0.19, 'FR': 0.20}"),
    Passage("shop.ship", "def ship(order):\n    book a courier to deliver the order to the customer"),
]
BY_ID = {p.id: p for p in PASSAGES}


class OverlapRetriever:
    """Ranks passages by how many distinct query words they contain (a reference retriever for the test)."""

    def search(self, query: str, k: int = 10) -> list[Hit]:
        words = set(re.findall(r"\w+", query.lower()))
        scored = [(len(words & set(re.findall(r"\w+", p.text.lower()))), p) for p in PASSAGES]
        scored = [(s, p) for s, p in scored if s > 0]
        scored.sort(key=lambda sp: (-sp[0], sp[1].id))
        return [Hit(p.id, p.text, float(s), dict(p.metadata)) for s, p in scored[:k]]


@pytest.fixture()
def graph():
    graph = KnowledgeGraph()
    where = Provenance("shop.py", line=1)
    with graph.transaction():
        for s, r, o in [("shop.checkout", "calls", "shop.subtotal"), ("shop.checkout", "calls", "shop.vat_rate"),
                        ("shop.vat_rate", "uses", "shop.RATES"), ("shop.vat_rate", "calls", "shop.lookup"),
                        ("shop.lookup", "calls", "shop.RATES"), ("shop.checkout", "documented-by", "doc:shop.checkout"),
                        ("shop", "contains", "shop.checkout"), ("shop", "contains", "shop.ship")]:
            graph.add_relation(s, r, o, where)
    return graph


QUESTION = "What does checkout charge the customer for the order?"


def _answered(hits) -> bool:
    return any("0.20" in hit.text for hit in hits)


def test_an_answer_in_a_callee_is_found_only_with_expansion(graph):
    base = OverlapRetriever()
    plain = base.search(QUESTION, k=2)
    assert [h.id for h in plain] == ["doc:shop.checkout", "shop.ship"] and not _answered(plain)
    expanded = GraphExpandedRetriever(base, graph, BY_ID.get).search(QUESTION, k=2)
    assert _answered(expanded)
    assert expanded[:2] == plain  # the base ranking is kept as it was
    extra = expanded[2:]
    # from the docstring hit's entity (metadata["entity"]) through `calls`, in name order; shop.ship has no
    # outgoing calls/contains/inherits
    assert [(h.id, h.metadata["expanded_from"], h.metadata["relation"], h.metadata["hops"]) for h in extra] == [
        ("shop.subtotal", "shop.checkout", "calls", 1), ("shop.vat_rate", "shop.checkout", "calls", 1)]
    scores = [h.score for h in expanded]
    assert scores == sorted(scores, reverse=True) and max(h.score for h in extra) < min(h.score for h in plain)


def test_expansion_is_deduplicated_bounded_and_follows_hops(graph):
    base = OverlapRetriever()
    # shop.checkout's code passage is a base hit and a neighbour of nothing expanded twice
    hits = GraphExpandedRetriever(base, graph, BY_ID.get).search("checkout cart subtotal", k=3)
    ids = [h.id for h in hits]
    assert len(ids) == len(set(ids)) and ids[:3] == [h.id for h in base.search("checkout cart subtotal", k=3)]
    one = GraphExpandedRetriever(base, graph, BY_ID.get, max_extra=1).search(QUESTION, k=2)
    assert [h.id for h in one[2:]] == ["shop.subtotal"]
    # two hops through `calls`: checkout -> vat_rate -> lookup -> (no passage) ; RATES is 3 calls away
    two = GraphExpandedRetriever(base, graph, BY_ID.get, hops=3, relations=("calls",), max_extra=10)
    extra = two.search(QUESTION, k=2)[2:]
    assert [(h.id, h.metadata["hops"]) for h in extra] == [("shop.subtotal", 1), ("shop.vat_rate", 1),
                                                           ("shop.RATES", 3)]
    # a hit with no outgoing calls, contains or inherits is left as it is
    assert GraphExpandedRetriever(base, graph, BY_ID.get).search("courier", k=5) == base.search("courier", k=5)
    with pytest.raises(ValueError, match="hops=0"):
        GraphExpandedRetriever(base, graph, BY_ID.get, hops=0)


def test_expansion_through_the_real_standard_library_graph():
    """Docstring passages named as the retrieval indexes name them (``doc:<qualname>``, metadata entity): a
    hit on json.dumps brings the docstring of what it really calls."""
    owners = {"json.dumps": json.dumps, "json.loads": json.loads,
              "json.encoder.JSONEncoder.encode": json.encoder.JSONEncoder.encode,
              "json.decoder.JSONDecoder.decode": json.decoder.JSONDecoder.decode}
    passages = [Passage(f"doc:{name}", f"{name}\n{inspect.getdoc(obj)}", {"entity": name})
                for name, obj in owners.items()]
    by_entity = {p.metadata["entity"]: p for p in passages}

    class Lexical:
        def search(self, query, k=10):
            words = set(query.lower().split())
            ranked = sorted(passages, key=lambda p: (-len(words & set(p.text.lower().split())), p.id))
            return [Hit(p.id, p.text, float(len(words & set(p.text.lower().split()))), dict(p.metadata))
                    for p in ranked[:k]]

    with KnowledgeGraph(stdlib_graph.stdlib_graph_path(), readonly=True) as graph:
        retriever = GraphExpandedRetriever(Lexical(), graph, by_entity.get, relations=("calls",))
        hits = retriever.search("Serialize obj to a JSON formatted str", k=1)
    assert [h.id for h in hits] == ["doc:json.dumps", "doc:json.encoder.JSONEncoder.encode"]
    assert hits[1].metadata == {"entity": "json.encoder.JSONEncoder.encode", "expanded_from": "json.dumps",
                                "relation": "calls", "hops": 1}
    assert "Return a JSON string representation of a Python data structure" in hits[1].text
