"""Text ingestion: exact triples from hand-written sentences and from real standard-library docstrings, their
provenance, and re-ingesting (same text: no change; changed text: that document's triples replaced)."""

from __future__ import annotations

import inspect
import json
import json.decoder
import shutil

import pytest

from quark_jax.knowledge.store import Edge, KnowledgeGraph, Provenance
from quark_jax.knowledge.triples import (MAX_DOCUMENT_CHARS, Triple, extract_triples, ingest, normalise,
                                         sentence_triples, sentences)


def test_each_pattern_gives_exactly_its_triples():
    cases = {
        "The `json.dumps()` function returns a JSON formatted str if all goes well.":
            [("json.dumps", "returns", "JSON formatted str")],
        "JSONDecoder is defined in json.decoder.": [("JSONDecoder", "defined-in", "json.decoder")],
        "OrderedDict inherits from dict.": [("OrderedDict", "inherits", "dict")],
        ":class:`Counter` is a subclass of :class:`dict`.": [("Counter", "inherits", "dict")],
        "dumps calls JSONEncoder.encode, which calls iterencode.": [("dumps", "calls", "JSONEncoder.encode")],
        "load raises ValueError or TypeError when the input is bad.":
            [("load", "raises", "ValueError"), ("load", "raises", "TypeError")],
        "shutil.copy also calls copyfile and copymode.":
            [("shutil.copy", "calls", "copyfile"), ("shutil.copy", "calls", "copymode")],
        "A deque is a list-like container with fast appends.": [("deque", "is-a", "list-like container")],
        "An OrderedDict is an ordered dictionary.": [("OrderedDict", "is-a", "ordered dictionary")],
        "This never raises KeyError.": [],  # negated
        "x does not return anything.": [],  # no pattern ("return" after "does not")
        "If the path is a directory, nothing happens.": [],  # a subordinate clause is not a subject
        "The very long and winding description of this thing is a mystery.": [],  # 8-word subject: a clause
        "Return the sum.": [],  # an imperative without a document subject
    }
    for sentence, expected in cases.items():
        assert sentence_triples(sentence) == expected, sentence
    # with a subject (a docstring's owner), imperatives and pronouns stand for it
    assert sentence_triples("Return the sum of ``a`` and ``b``.", "ops.add") == [
        ("ops.add", "returns", "sum of a and b")]
    assert sentence_triples("Raises KeyError if missing.", "d.pop") == [("d.pop", "raises", "KeyError")]
    assert sentence_triples("It is a helper for tests.", "m.h") == [("m.h", "is-a", "helper")]
    assert normalise(" the `foo()`. ") == "foo" and normalise("file's name") == "file's name"


def test_sentences_and_provenance_spans():
    text = "Hello world. This is it.\n\nNext para? Yes, e.g. this one."
    spans = sentences(text)
    assert [text[a:b] for a, b in spans] == ["Hello world.", "This is it.", "Next para?", "Yes, e.g. this one."]
    doc = "Some prose here.  The cache is a dict.\nParse calls tokenize."
    assert extract_triples(doc) == [Triple("cache", "is-a", "dict", 1, (18, 38)),
                                    Triple("Parse", "calls", "tokenize", 2, (39, 60))]
    assert doc[18:38] == "The cache is a dict."


def test_real_standard_library_docstrings():
    decode = inspect.getdoc(json.decoder.JSONDecoder.decode)
    assert extract_triples(decode, "json.decoder.JSONDecoder.decode")[0].fact == (
        "json.decoder.JSONDecoder.decode", "returns", "Python representation of s")
    copy = inspect.getdoc(shutil.copy)
    assert [t.fact for t in extract_triples(copy, "shutil.copy")] == [("shutil.copy", "returns", "file's destination")]
    loads = inspect.getdoc(json.loads)
    assert [t.fact for t in extract_triples(loads, "json.loads")] == [
        ("object_hook", "is-a", "optional function"), ("object_pairs_hook", "is-a", "optional function")]


def _rows(graph):
    return sorted(graph.execute("SELECT subject, relation, object, source, line, sentence, span_start, span_end, "
                                "origin FROM relations"))


def test_reingesting_is_idempotent_and_a_changed_document_replaces_its_triples():
    graph = KnowledgeGraph()
    graph.add_entity("json.dumps", "function", {"path": "json/__init__.py"})
    first = "The json.dumps function returns a str. It raises TypeError or ValueError."
    triples = ingest(graph, "notes.md", first, subject="json.dumps")
    assert [t.fact for t in triples] == [("json.dumps", "returns", "str"), ("json.dumps", "raises", "TypeError"),
                                        ("json.dumps", "raises", "ValueError")]
    ingest(graph, "other.md", "A str is a sequence.")
    rows, stats = _rows(graph), graph.stats()
    assert ingest(graph, "notes.md", first, subject="json.dumps") == triples
    assert _rows(graph) == rows and graph.stats() == stats
    assert stats["documents"] == 2 and graph.entity("TypeError") == ("mention", {})
    assert graph.provenance(Edge("json.dumps", "raises", "TypeError")) == [
        Provenance("notes.md", sentence=1, span=(first.index("It raises"), len(first)))]

    ingest(graph, "notes.md", "The json.dumps function returns a str.", subject="json.dumps")
    assert sorted(graph.execute("SELECT subject, relation, object, source FROM relations")) == [
        ("json.dumps", "returns", "str", "notes.md"), ("str", "is-a", "sequence", "other.md")]
    assert not graph.has_entity("TypeError")  # a mention nothing refers to any more is gone
    assert graph.entity("json.dumps") == ("function", {"path": "json/__init__.py"})  # a defined entity stays


def test_oversized_documents_are_refused_before_anything_is_written():
    graph = KnowledgeGraph()
    with pytest.raises(ValueError, match=r"^document 'big\.txt' has 2,000,001 characters, over the 2,000,000 limit"):
        ingest(graph, "big.txt", "x" * (MAX_DOCUMENT_CHARS + 1))
    assert graph.stats() == {"documents": 0}
