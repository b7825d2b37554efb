"""The agent's tools other than the calculator: the sandboxed Python program, BM25 over a local folder (confined
to it: no symlink followed), a `quark index` directory, the knowledge graph, and the registry's errors."""

from __future__ import annotations

import os

import pytest

from quark_jax.agents import tools
from quark_jax.agents.types import ToolError


def test_python_runs_in_the_sandbox():
    python = tools.python_tool(timeout_s=5.0)
    assert python.fn(code="print(sum(i * i for i in range(10)))") == "285\n"
    refused = python.fn(code="import socket\nsocket.create_connection(('127.0.0.1', 9))")
    assert refused == "forbidden: socket.getaddrinfo"
    failed = python.fn(code="print('half')\n1/0")
    assert failed.startswith("failed: ZeroDivisionError: division by zero") and "stdout:\nhalf" in failed
    with pytest.raises(ToolError, match="code has 20001 characters; at most 20000"):
        python.fn(code="#" * 20001)


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "notes"
    (root / "sub").mkdir(parents=True)
    (root / "alpha.txt").write_text("The quokka lives on Rottnest Island.\nIt is a small marsupial.\n")
    lines = [f"line {i} about nothing in particular" for i in range(1, 36)]
    lines[32] = "line 33 mentions the narwhal tusk"
    (root / "sub" / "long.md").write_text("\n".join(lines))
    (root / "binary.bin").write_bytes(b"\x00\x01narwhal quokka\x00")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "x.txt").write_text("platypus in a hidden folder")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("the password is swordfish")
    os.symlink(outside / "secret.txt", root / "link.txt")  # a file symlink pointing out of the folder
    os.symlink(outside, root / "linked_dir")  # a directory symlink pointing out of the folder
    return str(root)


def test_search_corpus_finds_passages_with_their_file_and_line(corpus):
    search = tools.search_corpus(corpus)
    first = search.fn(query="quokka marsupial", k=1)
    assert first.startswith("[1] alpha.txt:1 (score ") and "Rottnest Island" in first
    narwhal = search.fn(query="narwhal")
    assert narwhal.startswith("[1] sub/long.md:31 ") and "line 33 mentions the narwhal tusk" in narwhal
    assert "binary.bin" not in narwhal  # binary files are not read
    assert search.fn(query="platypus") == "no passage matches 'platypus'"  # hidden folders are skipped


def test_search_corpus_never_follows_a_symlink_out_of_the_folder(corpus):
    passages = tools.read_corpus(corpus)
    assert sorted({p.path for p in passages}) == ["alpha.txt", "sub/long.md"]
    assert tools.search_corpus(corpus).fn(query="swordfish password") == "no passage matches 'swordfish password'"


def test_search_corpus_arguments_are_checked(corpus):
    search = tools.search_corpus(corpus)
    with pytest.raises(ToolError, match=r"k=11: must be a whole number from 1 to 10"):
        search.fn(query="quokka", k=11)
    with pytest.raises(ToolError, match="query is empty"):
        search.fn(query="  ")
    with pytest.raises(ValueError, match="not a directory"):
        tools.search_corpus(os.path.join(corpus, "alpha.txt"))


def test_retrieve_searches_a_lexical_index(tmp_path):
    from quark_jax.retrieval.index import Index
    from quark_jax.retrieval.types import Passage

    index = Index.create(str(tmp_path / "index"), dense=False)
    index.add([Passage("json-doc", "json.dumps serialises an object to a JSON formatted str"),
               Passage("os-doc", "os.path.join joins path components")])
    retrieve = tools.default_tools(["retrieve"], index=str(tmp_path / "index"))[0]
    found = retrieve.fn(query="serialise object to JSON", k=2)
    assert found.startswith("[1] json-doc (score ") and "os-doc" not in found
    assert retrieve.fn(query="zebra") == "no passage matches 'zebra'"


def test_kg_query_answers_from_a_read_only_graph(tmp_path):
    from quark_jax.knowledge.store import KnowledgeGraph, Provenance

    db = str(tmp_path / "kg.sqlite")
    with KnowledgeGraph(db) as graph:
        for name in ("pkg.a", "pkg.b", "pkg.c"):
            graph.add_entity(name, "function")
        graph.add_relation("pkg.a", "calls", "pkg.b", Provenance("pkg.py", 1))
        graph.add_relation("pkg.b", "calls", "pkg.c", Provenance("pkg.py", 2))
    kg = tools.kg_query(db)
    assert kg.fn(operation="neighbours", entity="pkg.b") == "pkg.a --calls--> pkg.b\npkg.b --calls--> pkg.c"
    assert kg.fn(operation="callers", entity="pkg.c") == "pkg.b --calls--> pkg.c"
    assert kg.fn(operation="path", entity="pkg.a", target="pkg.c") == "pkg.a --calls--> pkg.b ; pkg.b --calls--> pkg.c"
    with pytest.raises(ToolError, match=r"no entity 'pkg.bb' in the knowledge graph; did you mean 'pkg.b'"):
        kg.fn(operation="callers", entity="pkg.bb")
    with pytest.raises(ToolError, match="operation='drop': must be one of neighbours, callers, path"):
        kg.fn(operation="drop", entity="pkg.a")


def test_default_tools_name_what_is_missing(tmp_path):
    assert [t.name for t in tools.default_tools(["python", "calculator"])] == ["python", "calculator"]
    with pytest.raises(ValueError, match="--tools: unknown tool 'shell'; choose from calculator, python"):
        tools.default_tools(["shell"])
    with pytest.raises(ValueError, match="--tools search_corpus needs --corpus DIR"):
        tools.default_tools(["search_corpus"])
    with pytest.raises(ValueError, match=r"--kg .*no such knowledge-graph file"):
        tools.default_tools(["kg_query"], kg=str(tmp_path / "missing.sqlite"))


def test_observations_are_cut_to_the_limit():
    text = tools.truncate("x" * 5000, 100)
    assert len(text) == 100 and text == "x" * 69 + "\n…[cut: 5000 characters in all]"
