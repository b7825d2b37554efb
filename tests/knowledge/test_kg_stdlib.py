"""The graph built from Python source with ``ast``: the exact relations of a small package written here, known
facts of the real standard library (checked against the source and against runtime introspection), and the
``quark kg`` command in-process."""

from __future__ import annotations

import importlib
import inspect
import json
import textwrap

import pytest

from quark_jax.cli import main
from quark_jax.data.corpus import SourceFile
from quark_jax.knowledge import stdlib_graph
from quark_jax.knowledge.store import Edge, KnowledgeGraph

PACKAGE = {
    "pkg/__init__.py": """
        from .base import Base
    """,
    "pkg/base.py": '''
        """Base things."""
        import os


        class Base:
            """A base."""

            def run(self):
                return self.step()

            def step(self):
                return os.path.join("a", "b")


        def helper(x):
            return len(x)
    ''',
    "pkg/child.py": """
        from . import base
        from .base import helper as assist
        from pkg import Base


        class Child(base.Base):
            def step(self):
                value = super().step()
                return assist(value)

            def twice(self):
                self.run()
                return self.step()


        class Grand(Base):
            pass


        def make(helper):
            c = Child()
            helper(c)  # the parameter, not pkg.base.helper: unresolved
            unknown_thing()
            return c.twice()
    """,
}


def test_a_small_package_gives_exactly_these_relations(tmp_path):
    files = [SourceFile(path, textwrap.dedent(text).lstrip()) for path, text in PACKAGE.items()]
    with KnowledgeGraph(tmp_path / "pkg.sqlite") as graph:
        report = stdlib_graph.build_graph(graph, files)
        rows = set(graph.execute("SELECT subject, relation, object FROM relations"))
        types = dict(graph.execute("SELECT name, type FROM entities"))
    expected = {
        ("pkg", "contains", "pkg.base"), ("pkg", "contains", "pkg.child"),
        ("pkg.base", "contains", "pkg.base.Base"), ("pkg.base", "contains", "pkg.base.helper"),
        ("pkg.base.Base", "contains", "pkg.base.Base.run"), ("pkg.base.Base", "contains", "pkg.base.Base.step"),
        ("pkg.child", "contains", "pkg.child.Child"), ("pkg.child", "contains", "pkg.child.Grand"),
        ("pkg.child", "contains", "pkg.child.make"), ("pkg.child.Child", "contains", "pkg.child.Child.step"),
        ("pkg.child.Child", "contains", "pkg.child.Child.twice"),
        # relative imports resolved; `from . import base` is the module pkg.base, `from pkg import Base` is pkg
        ("pkg", "imports", "pkg.base"), ("pkg.base", "imports", "os"), ("pkg.child", "imports", "pkg.base"),
        ("pkg.child", "imports", "pkg"),
        # bases across modules: through a module alias, and through the package's re-export
        ("pkg.child.Child", "inherits", "pkg.base.Base"), ("pkg.child.Grand", "inherits", "pkg.base.Base"),
        ("pkg.base.Base.run", "calls", "pkg.base.Base.step"),  # self.step
        ("pkg.base.Base.step", "calls", "os.path.join"),  # os is not among the files: kept as written
        ("pkg.base.helper", "calls", "builtins.len"),
        ("pkg.child.Child.step", "calls", "builtins.super"),
        ("pkg.child.Child.step", "calls", "pkg.base.Base.step"),  # super().step()
        ("pkg.child.Child.step", "calls", "pkg.base.helper"),  # the alias `assist`
        ("pkg.child.Child.twice", "calls", "pkg.base.Base.run"),  # self.run, inherited
        ("pkg.child.Child.twice", "calls", "pkg.child.Child.step"),  # self.step, the override
        ("pkg.child.make", "calls", "pkg.child.Child"),  # the constructor
        ("pkg.child.make", "calls", "pkg.child.Child.twice"),  # c = Child(); c.twice()
        ("pkg.base", "documented-by", "doc:pkg.base"), ("pkg.base.Base", "documented-by", "doc:pkg.base.Base"),
    }
    assert rows == expected
    assert report.calls_unresolved == 2  # helper(c) on a parameter, unknown_thing()
    assert report.relations == {"calls": 10, "contains": 11, "documented-by": 2, "imports": 4, "inherits": 2}
    assert types["pkg.base.Base.run"] == "method" and types["pkg.base.helper"] == "function"
    assert types["os"] == types["os.path.join"] == "external" and types["doc:pkg.base"] == "docstring"


def test_rebuilding_replaces_the_file_and_its_stale_journal(tmp_path):
    files = [SourceFile(path, textwrap.dedent(text).lstrip()) for path, text in PACKAGE.items()]
    db = tmp_path / "kg.sqlite"
    stdlib_graph.write_graph(db, files[:2])
    (tmp_path / "kg.sqlite-wal").write_bytes(b"stale frames of the previous file")
    (tmp_path / "kg.sqlite-shm").write_bytes(b"stale index")
    stdlib_graph.write_graph(db, files)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kg.sqlite"]
    with KnowledgeGraph(db, readonly=True) as graph:
        assert graph.stats()["relations/contains"] == 11  # the second build, whole


@pytest.fixture(scope="module")
def stdlib():
    """The whole standard library's graph (both splits), built once and cached in $QUARK_CACHE_DIR."""
    with KnowledgeGraph(stdlib_graph.stdlib_graph_path(), readonly=True) as graph:
        yield graph


def test_known_facts_of_the_standard_library(stdlib):
    calls = {n.name for n in stdlib.neighbours("json.dumps", "calls")}
    assert "json.encoder.JSONEncoder.encode" in calls  # `_default_encoder = JSONEncoder(...)`, `.encode(obj)`
    assert {"json.decoder.JSONDecoder.decode", "json.detect_encoding"} <= {
        n.name for n in stdlib.neighbours("json.loads", "calls")}
    assert stdlib.neighbours("collections.OrderedDict", "inherits") == [
        type(stdlib.neighbours("json.dumps")[0])("builtins.dict", "inherits", "out")]
    assert {"json.decoder", "json.encoder", "json.scanner"} <= {n.name for n in stdlib.neighbours("json", "contains")}
    assert {"json.decoder", "json.encoder"} <= {n.name for n in stdlib.neighbours("json", "imports")}
    assert "json.dumps" in stdlib.callers("json.encoder.JSONEncoder.encode")
    # os.path is posixpath on this platform (os.py imports it `as path` under `if 'posix' in _names`)
    assert "posixpath.join" in {n.name for n in stdlib.neighbours("shutil.copy", "calls")}
    assert stdlib.neighbours("json.dumps", "documented-by")[0].name == "doc:json.dumps"
    assert stdlib.entity("json.decoder.JSONDecoder.decode")[0] == "method"
    assert stdlib.entity("json.decoder.JSONDecoder.decode")[1]["path"] == "json/decoder.py"
    counts = stdlib.stats()
    assert counts["entities/module"] > 400 and counts["relations/calls"] > 10_000


@pytest.mark.parametrize("module_name", ["json.decoder", "json.encoder", "shutil"])
def test_contains_matches_runtime_introspection(stdlib, module_name):
    """The classes and functions the graph says a module defines are those the imported module holds (a
    reference computed differently: by the interpreter, not by reading the source)."""
    module = importlib.import_module(module_name)
    runtime = {f"{module_name}.{name}" for name, obj in vars(module).items()
               if (inspect.isfunction(obj) or inspect.isclass(obj))
               and obj.__module__ == module_name and obj.__qualname__ == name}
    graph = {n.name for n in stdlib.neighbours(module_name, "contains")
             if stdlib.entity(n.name)[0] in ("class", "function")}
    assert graph == runtime and len(runtime) >= 4


def test_typed_paths_callers_and_subgraph_bounds_on_the_stdlib(stdlib):
    assert stdlib.paths("json.dumps", "json.encoder.JSONEncoder.iterencode", relations=["calls"], max_hops=2) == [
        [Edge("json.dumps", "calls", "json.encoder.JSONEncoder.encode"),
         Edge("json.encoder.JSONEncoder.encode", "calls", "json.encoder.JSONEncoder.iterencode")]]
    assert stdlib.paths("json", "json.decoder.JSONDecoder.decode", relations=["contains"]) == [
        [Edge("json", "contains", "json.decoder"), Edge("json.decoder", "contains", "json.decoder.JSONDecoder"),
         Edge("json.decoder.JSONDecoder", "contains", "json.decoder.JSONDecoder.decode")]]
    callers = stdlib.callers("posixpath.join")
    assert len(callers) > 50 and "shutil.copy" in callers and callers == sorted(callers)
    sub = stdlib.subgraph(["json"], hops=2, limit=30)
    assert len(sub.entities) == 30 and sub.truncated and next(iter(sub.entities)) == "json"
    assert all(e.subject in sub.entities and e.object in sub.entities for e in sub.edges)


def test_cli_build_and_query(tmp_path, capsys):
    db = tmp_path / "kg.sqlite"
    assert main(["kg", "build", "--db", str(db), "--splits", "validation"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["entities"]["module"] > 5 and report["relations"]["contains"] > 50
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kg.sqlite"]  # no temporary file left behind
    with KnowledgeGraph(db, readonly=True) as graph:
        caller, callee = graph.execute("SELECT subject, object FROM relations WHERE relation = 'calls' "
                                       "ORDER BY subject, object LIMIT 1").fetchone()
        expected_callers = graph.callers(callee)
        expected_neighbours = graph.neighbours(caller)
        expected_paths = graph.paths(caller, callee)
    assert main(["kg", "query", "--db", str(db), "--callers", callee]) == 0
    assert [json.loads(line)["caller"] for line in capsys.readouterr().out.splitlines()] == expected_callers
    assert main(["kg", "query", "--db", str(db), "--neighbours", caller]) == 0
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == [
        {"name": n.name, "relation": n.relation, "direction": n.direction} for n in expected_neighbours]
    assert main(["kg", "query", "--db", str(db), "--path", caller, callee]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0] == {"path": [[caller, "calls", callee]]} and len(lines) == len(expected_paths)
    assert main(["kg", "query", "--db", str(db), "--subgraph", caller, "--limit", "3"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0] == {"entity": caller, "type": graph_type(db, caller)}
    assert sum("entity" in line for line in lines) <= 3

    # mistakes: one line naming the culprit and the fix, exit status 2
    assert main(["kg", "query", "--db", str(db), "--callers", caller + "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"quark kg query: no entity '{caller}x' in the knowledge graph; did you mean '{caller}'")
    assert err.count("\n") == 1
    missing = tmp_path / "missing.sqlite"
    assert main(["kg", "query", "--db", str(missing), "--callers", "x"]) == 2
    assert capsys.readouterr().err == (f"quark kg query: --db {missing}: no such file; build it first with "
                                       f"`quark kg build --db {missing}`\n")
    # readers left nothing beside the file (it was finished in rollback-journal mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kg.sqlite"]
    assert main(["kg", "build", "--db", str(db), "--splits", "test"]) == 2
    assert "--splits 'test': expected some of train, validation" in capsys.readouterr().err


def graph_type(db, name):
    with KnowledgeGraph(db, readonly=True) as graph:
        return graph.entity(name)[0]
