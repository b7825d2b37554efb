"""The SQLite knowledge graph: neighbours, callers, typed paths (checked against a brute-force enumeration),
bounded subgraphs, all-or-nothing batches, persistence across reopening, and names that look like SQL."""

from __future__ import annotations

import random
import sqlite3

import pytest

from quark_jax.knowledge.store import (SCHEMA_VERSION, Edge, KnowledgeGraph, Neighbour, Provenance,
                                       UnknownEntityError)

HERE = Provenance("test.py", line=1)


def small_graph(path=":memory:") -> KnowledgeGraph:
    graph = KnowledgeGraph(path)
    with graph.transaction():
        for name, type_ in [("m", "module"), ("m.A", "class"), ("m.B", "class"), ("m.A.run", "method"),
                            ("m.f", "function"), ("m.g", "function")]:
            graph.add_entity(name, type_, {"line": 1})
        for s, r, o in [("m", "contains", "m.A"), ("m", "contains", "m.B"), ("m", "contains", "m.f"),
                        ("m", "contains", "m.g"), ("m.A", "contains", "m.A.run"), ("m.B", "inherits", "m.A"),
                        ("m.f", "calls", "m.A.run"), ("m.g", "calls", "m.f"), ("m.g", "calls", "m.A.run"),
                        ("m.A.run", "calls", "builtins.len")]:
            graph.add_relation(s, r, o, HERE)
    return graph


def test_neighbours_callers_and_directions():
    graph = small_graph()
    assert graph.neighbours("m.g") == [Neighbour("m.A.run", "calls", "out"), Neighbour("m.f", "calls", "out")]
    assert graph.neighbours("m.A", direction="in") == [Neighbour("m", "contains", "in"),
                                                       Neighbour("m.B", "inherits", "in")]
    assert graph.neighbours("m.A", relation="inherits", direction="both") == [Neighbour("m.B", "inherits", "in")]
    assert graph.callers("m.A.run") == ["m.f", "m.g"]
    assert graph.callers("m.g") == []  # known, nobody calls it: empty, not an error
    # a relation's missing endpoint becomes an 'external' entity, which a defining add_entity replaces
    assert graph.entity("builtins.len") == ("external", {})
    graph.add_entity("builtins.len", "function", {"builtin": True})
    graph.add_relation("m.f", "calls", "builtins.len", HERE)  # a weak endpoint type never downgrades it
    assert graph.entity("builtins.len") == ("function", {"builtin": True})
    with pytest.raises(ValueError, match="direction='sideways'"):
        graph.neighbours("m.g", direction="sideways")


def test_unknown_entity_error_suggests_close_names():
    graph = small_graph()
    with pytest.raises(UnknownEntityError) as info:
        graph.neighbours("m.A.rn")
    assert str(info.value) == "no entity 'm.A.rn' in the knowledge graph; did you mean 'm.A.run'?"
    with pytest.raises(UnknownEntityError, match=r"^no entity 'zzz' in the knowledge graph$"):
        graph.callers("zzz")


def test_re_adding_a_fact_is_idempotent_and_provenance_is_kept():
    graph = small_graph()
    before = graph.stats()
    assert graph.add_relation("m.g", "calls", "m.f", Provenance("test.py", line=99)) is False
    assert graph.stats() == before
    assert graph.add_relation("m.g", "calls", "m.f", Provenance("other.txt", sentence=2, span=(5, 40))) is True
    assert graph.provenance(Edge("m.g", "calls", "m.f")) == [Provenance("other.txt", sentence=2, span=(5, 40)),
                                                              Provenance("test.py", line=1)]
    assert graph.stats() == before  # the same fact from two sources is still one relation


def test_a_failed_batch_changes_nothing():
    graph = small_graph()
    before = graph.stats()
    with pytest.raises(RuntimeError):
        with graph.transaction():
            graph.add_entity("m.h", "function")
            graph.add_relation("m.h", "calls", "m.g", HERE)
            raise RuntimeError("crash in the middle of a batch")
    assert graph.stats() == before and not graph.has_entity("m.h")
    with graph.transaction():  # an inner batch that fails and is caught undoes only itself
        graph.add_entity("m.kept", "function")
        with pytest.raises(ValueError):
            with graph.transaction():
                graph.add_entity("m.dropped", "function")
                graph.add_entity("", "function")  # invalid: raises inside the inner batch
    assert graph.has_entity("m.kept") and not graph.has_entity("m.dropped")


def test_sql_looking_names_are_just_data():
    graph = small_graph()
    evil = "x'); DROP TABLE relations; --"
    graph.add_entity(evil, "function")
    graph.add_relation(evil, "calls", "m.f", HERE)
    graph.add_relation("m.f", "calls", 'y" OR 1=1 --', HERE)
    assert graph.callers("m.f") == sorted([evil, "m.g"])
    assert Neighbour('y" OR 1=1 --', "calls", "out") in graph.neighbours("m.f")
    assert graph.stats()["relations/calls"] == 6
    with pytest.raises(UnknownEntityError):
        graph.neighbours("%")  # a LIKE wildcard matches nothing by itself


def test_persistence_wal_schema_and_readonly(tmp_path):
    path = tmp_path / "kg.sqlite"
    small_graph(path).close()
    with KnowledgeGraph(path) as graph:
        assert graph.callers("m.A.run") == ["m.f", "m.g"]
        assert graph.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert graph.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    with KnowledgeGraph(path, readonly=True) as graph:
        assert graph.stats()["relations"] == 10
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            graph.add_entity("m.new", "function")
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE t (x)")
    with pytest.raises(ValueError, match="not a quark knowledge graph of schema version 1"):
        KnowledgeGraph(other)
    with pytest.raises(FileNotFoundError):
        KnowledgeGraph(tmp_path / "missing.sqlite", readonly=True)


def test_paths_shortest_first_typed_and_bounded():
    graph = small_graph()
    assert graph.paths("m.g", "m.A.run") == [
        [Edge("m.g", "calls", "m.A.run")],
        [Edge("m.g", "calls", "m.f"), Edge("m.f", "calls", "m.A.run")],
    ]
    assert graph.paths("m.g", "m.A.run", max_hops=1) == [[Edge("m.g", "calls", "m.A.run")]]
    assert graph.paths("m.B", "m.A.run", relations=["calls"]) == []
    assert graph.paths("m.B", "m.A.run", relations=["inherits", "contains"]) == [
        [Edge("m.B", "inherits", "m.A"), Edge("m.A", "contains", "m.A.run")]]
    # against the direction of the relations: m.A.run <- m.A <- m (contains) then m -> m.B
    assert graph.paths("m.A.run", "m.B", relations=["contains", "inherits"], direction="both", max_hops=2) == [
        [Edge("m.A", "contains", "m.A.run"), Edge("m.B", "inherits", "m.A")]]
    with pytest.raises(ValueError, match="max_hops=0"):
        graph.paths("m.g", "m.f", max_hops=0)


def _reference_paths(edges, a, b, max_hops):
    """Every simple directed path from a to b with at most max_hops edges, by brute force, sorted the way
    KnowledgeGraph.paths promises (length, then the (name, relation) of each step)."""
    found = []

    def extend(node, path, seen):
        if path and node == b:
            found.append(list(path))
            return
        if len(path) == max_hops:
            return
        for s, r, o in edges:
            if s == node and (o not in seen or o == b):
                extend(o, path + [Edge(s, r, o)], seen | {o})

    extend(a, [], {a})
    return sorted(found, key=lambda p: (len(p), [(e.object, e.relation) for e in p]))


def test_paths_equal_a_brute_force_enumeration_on_a_random_graph():
    rng = random.Random(0)
    names = [f"n{i}" for i in range(12)]
    edges = sorted({(rng.choice(names), rng.choice(["calls", "imports"]), rng.choice(names)) for _ in range(40)})
    edges = [e for e in edges if e[0] != e[2]]
    graph = KnowledgeGraph()
    with graph.transaction():
        graph.add_relations((s, r, o, HERE) for s, r, o in edges)
    checked = 0
    for a in names[:6]:
        for b in names[6:]:
            if graph.has_entity(a) and graph.has_entity(b):
                expected = _reference_paths(edges, a, b, 3)
                assert graph.paths(a, b, max_hops=3, limit=10_000) == expected
                assert graph.paths(a, b, max_hops=3, limit=2) == expected[:2]
                checked += bool(expected)
    assert checked >= 10  # the random graph is connected enough for the comparison to mean something


def test_subgraph_hops_and_limit():
    graph = small_graph()
    one = graph.subgraph(["m.f"], hops=1)
    assert one.entities == {"m.f": "function", "m": "module", "m.A.run": "method", "m.g": "function"}
    assert one.edges == [Edge("m", "contains", "m.f"), Edge("m", "contains", "m.g"), Edge("m.f", "calls", "m.A.run"),
                         Edge("m.g", "calls", "m.A.run"), Edge("m.g", "calls", "m.f")]
    assert not one.truncated
    capped = graph.subgraph(["m.f"], hops=3, limit=3)
    assert list(capped.entities) == ["m.f", "m", "m.A.run"] and capped.truncated  # seeds, then by distance, name
    assert all(e.subject in capped.entities and e.object in capped.entities for e in capped.edges)
    everything = graph.subgraph(["m.f"], hops=5)
    assert len(everything.entities) == graph.stats()["entities"] and not everything.truncated
    with pytest.raises(ValueError, match="limit=1 is below the 2 seed entities"):
        graph.subgraph(["m.f", "m.g"], limit=1)
