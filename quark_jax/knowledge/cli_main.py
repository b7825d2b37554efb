"""``quark kg build`` and ``quark kg query``: build the standard-library knowledge graph into a SQLite file, and
query it, printing JSON lines. Mistakes raise ``ValueError`` with one line naming the culprit and the fix (the
``quark`` command prints it and exits 2)."""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import time
from collections.abc import Sequence

from quark_jax.data.splits import SPLITS
from quark_jax.knowledge import stdlib_graph
from quark_jax.knowledge.store import KnowledgeGraph, UnknownEntityError


def add_arguments(kg: argparse.ArgumentParser, parser_class, common: argparse.ArgumentParser) -> None:
    """The ``build`` and ``query`` subcommands of ``quark kg``."""
    kg_sub = kg.add_subparsers(dest="kg_command", required=True, parser_class=parser_class)
    build = kg_sub.add_parser("build", parents=[common], help="the standard library's graph into a SQLite file")
    build.add_argument("--db", required=True, help="SQLite file to write (replaced atomically when complete)")
    build.add_argument("--splits", default=",".join(SPLITS), help="corpus splits, comma-separated")
    query = kg_sub.add_parser("query", parents=[common], help="neighbours, callers, typed paths or a subgraph; "
                              "prints JSON lines")
    query.add_argument("--db", required=True, help="a SQLite file written by `quark kg build`")
    what = query.add_mutually_exclusive_group(required=True)
    what.add_argument("--neighbours", metavar="X", help="entities one relation away from X")
    what.add_argument("--callers", metavar="X", help="who calls X")
    what.add_argument("--path", nargs=2, metavar=("A", "B"), help="shortest typed paths from A to B")
    what.add_argument("--subgraph", metavar="X", action="append", help="the graph around X (repeatable)")
    query.add_argument("--relation", action="append", default=None,
                       help="keep only this relation type (repeatable; --neighbours takes one)")
    query.add_argument("--direction", choices=("out", "in", "both"), default=None,
                       help="--neighbours (default out) and --path (default out)")
    query.add_argument("--max_hops", type=int, default=3, help="--path: longest path in relations")
    query.add_argument("--hops", type=int, default=1, help="--subgraph: relations away from the seeds")
    query.add_argument("--limit", type=int, default=None, help="--path: paths (default 10); --subgraph: "
                       "entities (default 200)")


def run(args: argparse.Namespace) -> int:
    """Runs ``quark kg build`` or ``quark kg query``."""
    return build(args.db, args.splits) if args.kg_command == "build" else query(args)


def build(db: str, splits: str) -> int:
    """Builds the graph of the corpus ``splits`` into ``db``; prints one JSON line of counts."""
    chosen = [s.strip() for s in splits.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SPLITS]
    if unknown or not chosen:
        raise ValueError(f"--splits {splits!r}: expected some of {', '.join(SPLITS)}, comma-separated")
    if os.path.isdir(db):
        raise ValueError(f"--db {db}: is a directory; give a file path, e.g. {os.path.join(db, 'stdlib_kg.sqlite')}")
    start = time.perf_counter()
    try:
        report = stdlib_graph.write_graph(db, stdlib_graph.stdlib_sources(chosen))
    except (OSError, sqlite3.Error) as e:
        raise ValueError(f"--db {db}: cannot write it ({e})") from None
    print(json.dumps({"db": db, "entities": report.entities, "relations": report.relations,
                      "calls_unresolved": report.calls_unresolved, "files_unparsable": report.files_unparsable,
                      "seconds": round(time.perf_counter() - start, 2)}))
    return 0


def _open(db: str) -> KnowledgeGraph:
    if not os.path.isfile(db):
        raise ValueError(f"--db {db}: no such file; build it first with `quark kg build --db {db}`")
    try:
        return KnowledgeGraph(db, readonly=True)
    except sqlite3.DatabaseError as e:
        raise ValueError(f"--db {db}: not a knowledge graph ({e}); build one with `quark kg build --db PATH`") \
            from None


def query(args: argparse.Namespace) -> int:
    """Answers one query of ``quark kg query``, one JSON object per line."""
    for flag, value in (("--max_hops", args.max_hops), ("--hops", args.hops), ("--limit", args.limit)):
        if value is not None and value < 1:
            raise ValueError(f"{flag}={value}: must be >= 1")
    relations = args.relation
    with _open(args.db) as graph:
        try:
            lines = _answer(graph, args, relations)
        except UnknownEntityError as e:
            raise ValueError(str(e)) from None
    for line in lines:
        print(json.dumps(line))
    return 0


def _answer(graph: KnowledgeGraph, args: argparse.Namespace, relations: Sequence[str] | None) -> list[dict]:
    if args.neighbours is not None:
        if relations and len(relations) > 1:
            raise ValueError("--neighbours takes one --relation; query each relation separately")
        found = graph.neighbours(args.neighbours, relations[0] if relations else None, args.direction or "out")
        return [{"name": n.name, "relation": n.relation, "direction": n.direction} for n in found]
    if args.callers is not None:
        return [{"caller": name} for name in graph.callers(args.callers)]
    if args.path is not None:
        a, b = args.path
        found = graph.paths(a, b, relations, args.max_hops, args.direction or "out", args.limit or 10)
        return [{"path": [[e.subject, e.relation, e.object] for e in path]} for path in found]
    sub = graph.subgraph(args.subgraph, args.hops, args.limit or 200, relations)
    lines: list[dict] = [{"entity": name, "type": type_} for name, type_ in sub.entities.items()]
    lines.extend({"subject": e.subject, "relation": e.relation, "object": e.object} for e in sub.edges)
    if sub.truncated:
        lines.append({"truncated": True, "limit": args.limit or 200})
    return lines
