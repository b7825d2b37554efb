"""A knowledge graph in one SQLite file: named entities, typed relations between them with provenance, and the
queries retrieval needs (neighbours, who-calls-X, typed paths, the subgraph around some entities).

Schema (version :data:`SCHEMA_VERSION`, recorded in ``meta``):

* ``entities(name UNIQUE, type, attributes JSON)``: ``name`` is the identity (``json.decoder.JSONDecoder``).
* ``relations(subject, relation, object, source, line, sentence, span_start, span_end, origin)`` with
  ``UNIQUE(subject, relation, object, source)``: one row per fact per source (a file path or a document id);
  the location (``line`` for code, ``sentence`` and the character span for text) is the first occurrence.
  Adding the same fact from the same source again changes nothing. Indexes on ``(subject, relation)`` and
  ``(object, relation)`` serve outgoing and incoming look-ups.
* ``documents(doc_id, sha256, triples)``: the text documents ingested (see :mod:`quark_jax.knowledge.triples`).

Every relation's endpoints are entities: :meth:`KnowledgeGraph.add_relation` creates a missing endpoint with
type ``external`` (a name the graph refers to but does not define, e.g. ``builtins.len``), and a later
:meth:`KnowledgeGraph.add_entity` with a real type replaces it.

Queries on a name the graph does not hold raise :class:`UnknownEntityError` (a ``KeyError`` whose message
suggests close names); a known entity without matching relations gives an empty result. All SQL is
parameterised: names are data, whatever characters they hold.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import difflib
import json
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal

SCHEMA_VERSION = 1
Direction = Literal["out", "in", "both"]
DIRECTIONS = ("out", "in", "both")
# Types that only say "referred to, not defined here": a defining add_entity replaces them, never the reverse.
WEAK_TYPES = ("external", "mention")
_CHUNK = 500  # names per `IN (...)` query, well under SQLite's parameter limit

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entities (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    attributes TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS relations (
    id INTEGER PRIMARY KEY,
    subject TEXT NOT NULL,
    relation TEXT NOT NULL,
    object TEXT NOT NULL,
    source TEXT NOT NULL,
    line INTEGER,
    sentence INTEGER,
    span_start INTEGER,
    span_end INTEGER,
    origin TEXT NOT NULL DEFAULT 'code',
    UNIQUE (subject, relation, object, source)
);
CREATE INDEX IF NOT EXISTS relations_out ON relations (subject, relation);
CREATE INDEX IF NOT EXISTS relations_in ON relations (object, relation);
CREATE INDEX IF NOT EXISTS relations_source ON relations (source, origin);
CREATE TABLE IF NOT EXISTS documents (
    doc_id TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL,
    triples INTEGER NOT NULL
);
"""


class UnknownEntityError(KeyError):
    """A query named an entity the graph does not hold; the message suggests close names."""

    def __str__(self) -> str:  # KeyError would print the repr of its argument (quotes, escapes)
        return str(self.args[0]) if self.args else ""


@dataclasses.dataclass(frozen=True)
class Provenance:
    """Where a fact comes from: a source file and line (code), or a document, sentence and character span."""

    source: str
    line: int | None = None
    sentence: int | None = None
    span: tuple[int, int] | None = None


@dataclasses.dataclass(frozen=True, order=True)
class Edge:
    """One relation, ``subject --relation--> object``."""

    subject: str
    relation: str
    object: str


@dataclasses.dataclass(frozen=True, order=True)
class Neighbour:
    """An entity next to the queried one: reached through ``relation``, going ``direction`` ('out': the
    queried entity is the subject; 'in': it is the object)."""

    name: str
    relation: str
    direction: str


@dataclasses.dataclass(frozen=True)
class Subgraph:
    """Entities (name -> type) within some hops of the seeds, and every relation among them; ``truncated`` when
    the entity limit stopped the walk."""

    entities: dict[str, str]
    edges: list[Edge]
    truncated: bool


class KnowledgeGraph:
    """A knowledge graph stored in one SQLite file (WAL mode), or in memory with ``path=":memory:"``.

    Opening a file that holds another schema raises ``ValueError``; ``readonly=True`` opens an existing file
    without creating or changing it. Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike = ":memory:", *, readonly: bool = False):
        self.path = os.fspath(path)
        if readonly:
            if self.path == ":memory:" or not os.path.isfile(self.path):
                raise FileNotFoundError(f"{self.path}: no such knowledge-graph file")
            uri = "file:" + self.path.replace("%", "%25").replace("?", "%3f").replace("#", "%23") + "?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, isolation_level=None)
        else:
            self._db = sqlite3.connect(self.path, isolation_level=None)  # autocommit; transactions are explicit
        self._depth = 0
        try:
            self._open(readonly)
        except Exception:
            self._db.close()
            raise

    def _open(self, readonly: bool) -> None:
        tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables:
            version = None
            if "meta" in tables:
                row = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                version = row and row[0]
            if version != str(SCHEMA_VERSION):
                raise ValueError(f"{self.path}: not a quark knowledge graph of schema version {SCHEMA_VERSION} "
                                 f"(found {version!r}); rebuild it with `quark kg build --db PATH`")
        elif readonly:
            raise ValueError(f"{self.path}: an empty database, not a knowledge graph; build one with "
                             "`quark kg build --db PATH`")
        if readonly:
            return
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")
        with self.transaction():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)
            self._db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                             (str(SCHEMA_VERSION),))

    # ---- lifetime ------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Closes the connection (a WAL file is checkpointed into the main file)."""
        self._db.close()

    def __enter__(self) -> KnowledgeGraph:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[KnowledgeGraph]:
        """A batch of changes that is applied all or nothing: an exception inside rolls every change of the
        batch back. Nested batches join the outer one (savepoints), so an inner failure that is caught undoes
        only the inner changes."""
        name = f"batch{self._depth}"
        self._db.execute("BEGIN" if self._depth == 0 else f"SAVEPOINT {name}")
        self._depth += 1
        try:
            yield self
        except BaseException:
            self._depth -= 1
            if self._depth == 0:
                self._db.execute("ROLLBACK")
            else:
                self._db.execute(f"ROLLBACK TO {name}")
                self._db.execute(f"RELEASE {name}")
            raise
        self._depth -= 1
        self._db.execute("COMMIT" if self._depth == 0 else f"RELEASE {name}")

    # ---- writing -------------------------------------------------------------------------------------------
    def add_entity(self, name: str, type: str, attributes: dict[str, Any] | None = None) -> None:
        """Adds an entity, or updates its type and attributes. A weak type (``external``, ``mention``) never
        replaces a defining one."""
        _check_name(name)
        self._db.execute(
            "INSERT INTO entities (name, type, attributes) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET type = excluded.type, attributes = excluded.attributes "
            "WHERE entities.type IN (?, ?) OR excluded.type NOT IN (?, ?)",
            (name, type, json.dumps(attributes or {}, sort_keys=True), *WEAK_TYPES, *WEAK_TYPES))

    def add_relation(self, subject: str, relation: str, object: str, provenance: Provenance,
                     origin: str = "code", endpoint_type: str = "external") -> bool:
        """Adds ``subject --relation--> object`` from ``provenance``; endpoints the graph lacks are added with
        ``endpoint_type``. Returns False when the fact was already recorded from that source (nothing changes)."""
        for name in (subject, object):
            _check_name(name)
            self._db.execute("INSERT OR IGNORE INTO entities (name, type) VALUES (?, ?)", (name, endpoint_type))
        span = provenance.span or (None, None)
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO relations (subject, relation, object, source, line, sentence, span_start, "
            "span_end, origin) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (subject, relation, object, provenance.source, provenance.line, provenance.sentence, *span, origin))
        return cursor.rowcount == 1

    def add_entities(self, rows: Iterable[tuple[str, str, dict[str, Any]]]) -> None:
        """:meth:`add_entity` for many ``(name, type, attributes)`` rows (one statement, for bulk builds)."""
        rows = [(n, t, json.dumps(a or {}, sort_keys=True), *WEAK_TYPES, *WEAK_TYPES) for n, t, a in rows]
        for row in rows:
            _check_name(row[0])
        self._db.executemany(
            "INSERT INTO entities (name, type, attributes) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET type = excluded.type, attributes = excluded.attributes "
            "WHERE entities.type IN (?, ?) OR excluded.type NOT IN (?, ?)", rows)

    def add_relations(self, rows: Iterable[tuple[str, str, str, Provenance]], origin: str = "code",
                      endpoint_type: str = "external") -> None:
        """:meth:`add_relation` for many ``(subject, relation, object, provenance)`` rows (bulk builds)."""
        rows = list(rows)
        names = {name for s, _, o, _ in rows for name in (s, o)}
        for name in names:
            _check_name(name)
        self._db.executemany("INSERT OR IGNORE INTO entities (name, type) VALUES (?, ?)",
                             [(n, endpoint_type) for n in sorted(names)])
        self._db.executemany(
            "INSERT OR IGNORE INTO relations (subject, relation, object, source, line, sentence, span_start, "
            "span_end, origin) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(s, r, o, p.source, p.line, p.sentence, *(p.span or (None, None)), origin) for s, r, o, p in rows])

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> sqlite3.Cursor:
        """A parameterised statement for the modules of this package (text ingestion's bookkeeping)."""
        return self._db.execute(sql, parameters)

    # ---- reading -------------------------------------------------------------------------------------------
    def has_entity(self, name: str) -> bool:
        """Whether the graph holds an entity of this name."""
        return self._db.execute("SELECT 1 FROM entities WHERE name = ?", (name,)).fetchone() is not None

    def entity(self, name: str) -> tuple[str, dict[str, Any]]:
        """(type, attributes) of an entity; :class:`UnknownEntityError` if it is not in the graph."""
        row = self._db.execute("SELECT type, attributes FROM entities WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise self._unknown(name)
        return row[0], json.loads(row[1])

    def provenance(self, edge: Edge) -> list[Provenance]:
        """Every source that recorded ``edge``, sorted."""
        rows = self._db.execute(
            "SELECT source, line, sentence, span_start, span_end FROM relations "
            "WHERE subject = ? AND relation = ? AND object = ? ORDER BY source",
            (edge.subject, edge.relation, edge.object))
        return [Provenance(s, line, sent, None if a is None else (a, b)) for s, line, sent, a, b in rows]

    def neighbours(self, name: str, relation: str | None = None, direction: Direction = "out") -> list[Neighbour]:
        """Entities one relation away from ``name``, sorted by (name, relation, direction); ``relation`` keeps
        one relation type. Raises :class:`UnknownEntityError` if ``name`` is not in the graph."""
        self._require(name)
        relations = None if relation is None else (relation,)
        found = set()
        for near, rel, way, _ in self._step([name], relations, direction):
            found.add(Neighbour(near, rel, way))
        return sorted(found)

    def callers(self, name: str) -> list[str]:
        """Who calls ``name``: the sorted subjects of its incoming ``calls`` relations."""
        return sorted({n.name for n in self.neighbours(name, "calls", "in")})

    def paths(self, a: str, b: str, relations: Sequence[str] | None = None, max_hops: int = 3,
              direction: Direction = "out", limit: int = 10) -> list[list[Edge]]:
        """Up to ``limit`` simple paths from ``a`` to ``b`` of at most ``max_hops`` relations (of the types in
        ``relations``, all types when None), shortest first, then in name order.

        Breadth-first from ``b`` backwards gives every entity's distance to ``b``; paths are then walked
        forward from ``a`` only through entities close enough to reach ``b`` in the hops left, so the work is
        bounded by the entities within ``max_hops`` of the two ends, not by the fan-out of the whole graph.
        With ``direction="both"`` relations may be walked against their direction (the edge is still reported
        as stored, subject first).
        """
        if max_hops < 1:
            raise ValueError(f"max_hops={max_hops}: must be >= 1")
        self._require(a)
        self._require(b)
        rels = None if relations is None else tuple(relations)
        backward = {"out": "in", "in": "out", "both": "both"}[_check_direction(direction)]
        distance = {b: 0}
        frontier = [b]
        for hop in range(1, max_hops):
            nxt = set()
            for near, _, _, _ in self._step(frontier, rels, backward):
                if near not in distance:
                    distance[near] = hop
                    nxt.add(near)
            frontier = sorted(nxt)
        found: list[list[Edge]] = []
        for length in range(1, max_hops + 1):
            self._walk(a, b, length, [], {a}, rels, direction, distance, found, limit)
            if len(found) >= limit:
                break
        return found[:limit]

    def _walk(self, node, goal, left, path, seen, rels, direction, distance, found, limit) -> None:
        """Depth-first extension of ``path`` by exactly ``left`` more edges ending at ``goal``, in name order."""
        if len(found) >= limit:
            return
        if left == 0:
            if node == goal:
                found.append(list(path))
            return
        steps = sorted(self._step([node], rels, direction), key=lambda s: (s[0], s[1], s[2]))
        for near, rel, way, _ in steps:
            if near in seen and near != goal:
                continue
            if near == goal and left != 1:
                continue
            if near != goal and distance.get(near, left) > left - 1:
                continue
            edge = Edge(node, rel, near) if way == "out" else Edge(near, rel, node)
            seen.add(near)
            path.append(edge)
            self._walk(near, goal, left - 1, path, seen, rels, direction, distance, found, limit)
            path.pop()
            if near != goal:
                seen.discard(near)

    def subgraph(self, names: Iterable[str], hops: int = 1, limit: int = 200,
                 relations: Sequence[str] | None = None) -> Subgraph:
        """The entities within ``hops`` relations of ``names`` (both directions), at most ``limit`` of them
        (seeds first, then by distance, then by name), and every relation among them."""
        seeds = list(dict.fromkeys(names))
        for name in seeds:
            self._require(name)
        if limit < len(seeds):
            raise ValueError(f"limit={limit} is below the {len(seeds)} seed entities")
        rels = None if relations is None else tuple(relations)
        kept = dict.fromkeys(seeds)
        frontier, truncated = seeds, False
        for _ in range(hops):
            nxt = sorted({near for near, _, _, _ in self._step(frontier, rels, "both")} - kept.keys())
            room = limit - len(kept)
            if len(nxt) > room:
                nxt, truncated = nxt[:room], True
            kept.update(dict.fromkeys(nxt))
            frontier = nxt
            if truncated or not frontier:
                break
        members = list(kept)
        types = {}
        for chunk in _chunks(members):
            marks = ",".join("?" * len(chunk))
            types.update(self._db.execute(f"SELECT name, type FROM entities WHERE name IN ({marks})", chunk))
        edges = set()
        for near, rel, way, origin in self._step(members, rels, "out"):
            if near in kept:
                edges.add(Edge(origin, rel, near))
        return Subgraph({m: types[m] for m in members}, sorted(edges), truncated)

    def stats(self) -> dict[str, int]:
        """Counts: ``entities``, ``entities/<type>``, ``relations`` (distinct facts), ``relations/<relation>``,
        ``documents``."""
        counts: dict[str, int] = collections.Counter()
        for type_, n in self._db.execute("SELECT type, COUNT(*) FROM entities GROUP BY type ORDER BY type"):
            counts[f"entities/{type_}"] = n
            counts["entities"] += n
        for rel, n in self._db.execute(
                "SELECT relation, COUNT(*) FROM (SELECT DISTINCT subject, relation, object FROM relations) "
                "GROUP BY relation ORDER BY relation"):
            counts[f"relations/{rel}"] = n
            counts["relations"] += n
        counts["documents"] = self._db.execute("SELECT COUNT(*) FROM documents").fetchone()[0]
        return dict(counts)

    # ---- helpers -------------------------------------------------------------------------------------------
    def _step(self, names: Sequence[str], relations: Sequence[str] | None,
              direction: Direction) -> Iterator[tuple[str, str, str, str]]:
        """(neighbour, relation, 'out'|'in', the name it was reached from) for every relation touching
        ``names`` (repeats possible: one per source)."""
        ways = {"out": ("out",), "in": ("in",), "both": ("out", "in")}[_check_direction(direction)]
        for chunk in _chunks(list(names)):
            marks = ",".join("?" * len(chunk))
            rel_filter, rel_args = "", []
            if relations is not None:
                rel_filter = f" AND relation IN ({','.join('?' * len(relations))})"
                rel_args = list(relations)
            for way in ways:
                here, there = ("subject", "object") if way == "out" else ("object", "subject")
                sql = (f"SELECT DISTINCT {there}, relation, {here} FROM relations "
                       f"WHERE {here} IN ({marks}){rel_filter}")
                for near, rel, origin in self._db.execute(sql, [*chunk, *rel_args]):
                    yield near, rel, way, origin

    def _require(self, name: str) -> None:
        if not self.has_entity(name):
            raise self._unknown(name)

    def _unknown(self, name: str) -> UnknownEntityError:
        return UnknownEntityError(f"no entity {name!r} in the knowledge graph{self._suggest(name)}")

    def _suggest(self, name: str) -> str:
        """'; did you mean ...?' with up to three close names (those ending like ``name`` first, so a search
        over a large graph stays quick)."""
        last = str(name).rsplit(".", 1)[-1]
        pool = [r[0] for r in self._db.execute(
            "SELECT name FROM entities WHERE name LIKE ? ESCAPE '\\' LIMIT 5000", ("%" + _like_escape(last),))]
        close = difflib.get_close_matches(name, pool, n=3, cutoff=0.6)
        if not close:
            pool = [r[0] for r in self._db.execute("SELECT name FROM entities LIMIT 200000")]
            close = difflib.get_close_matches(name, pool, n=3, cutoff=0.75)
        return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"entity names must be non-empty strings, not {name!r}")


def _check_direction(direction: str) -> str:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction={direction!r}: expected one of {DIRECTIONS}")
    return direction


def _chunks(items: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start:start + _CHUNK]
