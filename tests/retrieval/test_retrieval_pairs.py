"""The standard-library retrieval data: passages without docstrings, summaries, held-out modules, the benchmark."""

import ast
import inspect
import json
import os
import textwrap

import pytest

from quark_jax.data import corpus
from quark_jax.data import retrieval_pairs as rp
from quark_jax.data.splits import split_of


def _body_without_docstring(source: str) -> str:
    """ast.dump of a definition's body with its docstring statement dropped (parsed from ``inspect``)."""
    node = ast.parse(textwrap.dedent(source)).body[0]
    return ast.dump(ast.Module(body=node.body[1:], type_ignores=[]))


@pytest.mark.parametrize("function", [json.dumps, textwrap.dedent])
def test_code_passage_is_the_source_without_its_docstring(function):
    name = f"{function.__module__}.{function.__qualname__}"
    split = split_of(os.path.relpath(inspect.getsourcefile(function), corpus.stdlib_root()))
    passage = {p.id: p for p in rp.passages(split, "code")}[name]
    parsed = ast.parse(passage.text).body[0]
    assert ast.get_docstring(parsed) is None and parsed.name == function.__name__
    expected = _body_without_docstring(inspect.getsource(function))
    assert ast.dump(ast.Module(body=parsed.body, type_ignores=[])) == expected
    assert passage.metadata == {"module": function.__module__, "entity": name, "split": split, "task": "code",
                                "source": passage.metadata["source"]}
    query = {q.relevant[0]: q for q in rp.queries(split, "code")}[name]
    first_line = inspect.getdoc(function).split("\n\n")[0].replace("\n", " ")
    assert first_line.startswith(query.text) and query.text.endswith(".") and query.text not in passage.text
    docs = {p.id: p for p in rp.passages(split, "docs")}[rp.DOC_PREFIX + name]
    assert docs.text == f"{name}\n{inspect.getdoc(function)}"[: rp.MAX_PASSAGE_CHARS]


def test_summary_and_trivial_rules():
    assert rp.summary("Return the   sum.\n\nMore text. And more.") == "Return the sum."
    assert rp.summary("Split the string\ninto words. Then stop.") == "Split the string into words."
    assert rp.summary("No sentence end here") == "No sentence end here"
    assert rp.is_trivial("Return self.") and rp.is_trivial("f(x, y) -> int")
    assert not rp.is_trivial("Return the sum of two numbers.")
    assert rp.question("json.dumps") in [t.format(name="json.dumps") for t in rp.QUESTION_TEMPLATES]


def test_splits_are_held_out_by_module_and_queries_well_posed():
    modules = {split: {e.module for e in rp.entities(split)} for split in ("train", "validation")}
    assert not modules["train"] & modules["validation"] and len(modules["validation"]) >= 10
    for split in ("train", "validation"):
        ids = {p.id for p in rp.passages(split, "code")}
        queries = rp.queries(split, "code")
        assert all(split_of(q.metadata["source"]) == split and q.relevant[0] in ids for q in queries)
        texts = [q.text.lower() for q in queries]
        assert len(set(texts)) == len(texts) and not any(rp.is_trivial(t) for t in texts)
    everything = [q.text.lower() for s in ("train", "validation") for q in rp.queries(s, "code")]
    assert len(set(everything)) == len(everything)  # no summary shared across the splits either
    assert "return self." not in everything
    pairs = rp.training_pairs("validation")
    assert len(pairs) == len(rp.queries("validation", "code")) + len(rp.queries("validation", "docs"))


def test_benchmark_pool_holds_the_relevant_passages_and_distractors():
    passages, queries = rp.benchmark("validation", max_queries=100, max_passages=600)
    again = rp.benchmark("validation", max_queries=100, max_passages=600)
    assert (passages, queries) == again and len(queries) == 100 and len(passages) == 600
    ids = [p.id for p in passages]
    assert len(set(ids)) == len(ids) and all(q.relevant[0] in ids for q in queries)
    assert {p.metadata["split"] for p in passages} == {"train", "validation"}  # distractors from all modules
    assert {q.metadata["split"] for q in queries} == {"validation"}
    docs_passages, docs_queries = rp.benchmark("validation", task="docs", max_queries=20, max_passages=50)
    assert all(p.id.startswith(rp.DOC_PREFIX) for p in docs_passages) and docs_queries[0].text.endswith(("?", "."))
    with pytest.raises(ValueError, match=r"max_passages=10 is fewer than the 100 relevant passages of 100 queries"):
        rp.benchmark("validation", max_queries=100, max_passages=10)
    with pytest.raises(ValueError, match="Unknown retrieval task 'nope'"):
        rp.queries("train", "nope")
