"""The tools an agent can call, each a :class:`~quark_jax.agents.types.Tool` with an OpenAI JSON schema.

* :func:`calculator` — arithmetic from the syntax tree (:mod:`quark_jax.agents.calculator`), never ``eval``;
* :func:`python_tool` — a program run in the evaluation sandbox (:func:`quark_jax.evaluation.sandbox.run_python`:
  a fresh isolated interpreter, resource limits, no network, no processes, no writes outside its temp dir);
* :func:`search_corpus` — BM25 over the text files of one local folder (read once, regular files only, no
  symlink followed, nothing outside the folder);
* :func:`retrieve` — search of a ``quark index`` directory (:class:`quark_jax.retrieval.index.Index`);
* :func:`kg_query` — neighbours, callers and paths in a ``quark kg build`` graph (read-only SQLite).

Every tool takes keyword arguments as its schema describes and returns the observation text, at most
:data:`MAX_OBSERVATION_CHARS` characters; input it refuses raises :class:`ToolError` with one line saying what
is wrong. :func:`default_tools` builds the ones named on the command line.
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import stat
from collections.abc import Mapping, Sequence
from typing import Any

from quark_jax.agents import calculator as calculator_lib
from quark_jax.agents.types import Tool, ToolError

MAX_OBSERVATION_CHARS = 2000
MAX_QUERY_CHARS = 512
MAX_K = 10

# search_corpus: what one folder may hold
MAX_CORPUS_FILES = 20_000
MAX_CORPUS_FILE_BYTES = 2 << 20
MAX_CORPUS_BYTES = 256 << 20
PASSAGE_LINES = 30
SNIPPET_CHARS = 400

# python: what one program may be and use
MAX_CODE_CHARS = 20_000
SANDBOX_MARK = "[quark-sandbox]"  # the sandbox's own lines on stderr (its reason is reported apart)

TOOL_NAMES = ("calculator", "python", "search_corpus", "retrieve", "kg_query")


def truncate(text: str, limit: int = MAX_OBSERVATION_CHARS) -> str:
    """``text`` cut to ``limit`` characters, the cut marked (the model sees that something is missing)."""
    if len(text) <= limit:
        return text
    marker = f"\n…[cut: {len(text)} characters in all]"
    return text[: max(0, limit - len(marker))] + marker


def _text_argument(value: Any, name: str, limit: int) -> str:
    if not isinstance(value, str):
        raise ToolError(f"{name} must be a string, not {type(value).__name__}")
    if not value.strip():
        raise ToolError(f"{name} is empty")
    if len(value) > limit:
        raise ToolError(f"{name} has {len(value)} characters; at most {limit}")
    return value


def _k_argument(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise ToolError(f"k={k!r}: must be a whole number from 1 to {MAX_K}")
    return k


# ---- calculator ---------------------------------------------------------------------------------------------

def calculator() -> Tool:
    """Arithmetic: ``{"expression": "2 * (3 + 4) ** 2"}`` -> ``"98"``."""

    def run(expression: str) -> str:
        return calculator_lib.format_number(calculator_lib.evaluate(expression))

    return Tool(
        name="calculator",
        description="Evaluate an arithmetic expression: numbers, + - * / // % ** and parentheses, pi, e, "
                    "abs, round, min, max, sqrt.",
        parameters={"type": "object", "properties": {"expression": {"type": "string", "description":
                                                                    "e.g. 2 * (3 + 4) ** 2"}},
                    "required": ["expression"], "additionalProperties": False},
        fn=run)


# ---- python --------------------------------------------------------------------------------------------------

def python_tool(timeout_s: float = 5.0, memory_mb: int = 512) -> Tool:
    """A standard-library Python program run in the sandbox; the observation is its printed output (and, when
    it did not pass, its status and the end of its stderr)."""
    from quark_jax.evaluation.sandbox import run_python

    def run(code: str) -> str:
        code = _text_argument(code, "code", MAX_CODE_CHARS)
        result = run_python(code, timeout_s=timeout_s, memory_mb=memory_mb, max_file_bytes=1_000_000)
        if result.passed:
            return truncate(result.stdout if result.stdout.strip() else "(the program printed nothing)")
        parts = [f"{result.status}: {result.reason}" if result.reason else result.status]
        if result.stdout.strip():
            parts.append("stdout:\n" + result.stdout)
        stderr = "\n".join(line for line in result.stderr.splitlines() if not line.startswith(SANDBOX_MARK))
        if stderr.strip():
            parts.append("stderr:\n" + stderr[-MAX_OBSERVATION_CHARS // 2:])
        return truncate("\n".join(parts))

    return Tool(
        name="python",
        description="Run a standard-library Python 3 program (no network, no files outside a temporary folder, "
                    f"{timeout_s:g} s) and return what it prints.",
        parameters={"type": "object", "properties": {"code": {"type": "string", "description":
                                                              "the program; print the result"}},
                    "required": ["code"], "additionalProperties": False},
        fn=run)


# ---- search_corpus -------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class CorpusPassage:
    """A run of lines of one file of the corpus folder (``path`` relative to it, lines from 1)."""

    path: str
    first_line: int
    text: str


def read_corpus(root: str) -> list[CorpusPassage]:
    """Passages of :data:`PASSAGE_LINES` lines from every UTF-8 text file under ``root``.

    Only regular files and directories reached without following a symlink are read (a symlink, to a file or a
    folder, inside or outside ``root``, is skipped), each checked to resolve inside ``root``; files over
    :data:`MAX_CORPUS_FILE_BYTES`, binary files (a NUL byte, or not UTF-8) and hidden entries are skipped.
    More than :data:`MAX_CORPUS_FILES` files or :data:`MAX_CORPUS_BYTES` bytes is a ``ValueError``."""
    if not os.path.isdir(root):
        raise ValueError(f"--corpus {root}: not a directory")
    real_root = os.path.realpath(root)
    passages: list[CorpusPassage] = []
    files = total = 0
    for directory, dirnames, filenames in os.walk(real_root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and not os.path.islink(os.path.join(directory, d)))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = os.path.join(directory, name)
            info = os.lstat(path)
            if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_CORPUS_FILE_BYTES:
                continue
            if os.path.commonpath([real_root, os.path.realpath(path)]) != real_root:
                continue
            files += 1
            total += info.st_size
            if files > MAX_CORPUS_FILES or total > MAX_CORPUS_BYTES:
                raise ValueError(f"--corpus {root}: more than {MAX_CORPUS_FILES} files or {MAX_CORPUS_BYTES >> 20} "
                                 "MiB of text; point it at a smaller folder")
            text = _read_text(path)
            if text is None:
                continue
            relative = os.path.relpath(path, real_root)
            lines = text.splitlines()
            for start in range(0, len(lines), PASSAGE_LINES):
                chunk = "\n".join(lines[start:start + PASSAGE_LINES])
                if chunk.strip():
                    passages.append(CorpusPassage(relative, start + 1, chunk))
    return passages


def _read_text(path: str) -> str | None:
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_CORPUS_FILE_BYTES + 1)
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def search_corpus(root: str) -> Tool:
    """BM25 search (:class:`quark_jax.retrieval.lexical.BM25`) over the text files under ``root``, read once
    (:func:`read_corpus`); each hit is shown as ``path:line`` and the start of its passage."""
    from quark_jax.retrieval.lexical import BM25

    passages = read_corpus(root)
    bm25 = BM25.fit([f"{p.path}\n{p.text}" for p in passages])

    def run(query: str, k: int = 3) -> str:
        query = _text_argument(query, "query", MAX_QUERY_CHARS)
        positions, scores = bm25.search(query, _k_argument(k))
        if len(positions) == 0:
            return f"no passage matches {query!r}"
        shown = [f"[{i + 1}] {passages[p].path}:{passages[p].first_line} (score {s:.2f})\n"
                 f"{passages[p].text[:SNIPPET_CHARS]}" for i, (p, s) in enumerate(zip(positions, scores))]
        return truncate("\n\n".join(shown))

    return Tool(
        name="search_corpus",
        description=f"Search the text files of the local folder {os.path.basename(os.path.normpath(root))!r} "
                    "by keywords; returns file:line and the passage.",
        parameters=_search_parameters(), fn=run)


def _search_parameters() -> dict[str, Any]:
    return {"type": "object",
            "properties": {"query": {"type": "string", "description": "keywords"},
                           "k": {"type": "integer", "minimum": 1, "maximum": MAX_K, "description": "hits (default 3)"}},
            "required": ["query"], "additionalProperties": False}


# ---- retrieve ------------------------------------------------------------------------------------------------

def retrieve(index: Any, mode: str | None = None) -> Tool:
    """Search of an open :class:`quark_jax.retrieval.index.Index` (``quark index build``); ``mode`` as
    :meth:`Index.search` takes it (None: what the index and its embedder allow, lexical without an embedder)."""
    if mode is None and index.embedder is None:
        mode = "lexical" if index.manifest["parts"]["lexical"] else None

    def run(query: str, k: int = 3) -> str:
        query = _text_argument(query, "query", MAX_QUERY_CHARS)
        try:
            hits = index.search(query, _k_argument(k), mode=mode)
        except ValueError as e:
            raise ToolError(str(e)) from None
        if not hits:
            return f"no passage matches {query!r}"
        return truncate("\n\n".join(f"[{i + 1}] {h.id} (score {h.score:.3f})\n{h.text[:SNIPPET_CHARS]}"
                                    for i, h in enumerate(hits)))

    return Tool(name="retrieve", description="Search the document index; returns the best passages with their ids.",
                parameters=_search_parameters(), fn=run)


def open_index(path: str, embedder_dir: str | None = None) -> Any:
    """The ``quark index`` directory at ``path``, with the embedder of run ``embedder_dir`` for dense search
    (None: lexical search only); a ``ValueError`` naming ``--index`` when it cannot be opened."""
    from quark_jax.retrieval.index import Index, IndexFormatError

    try:
        embedder = None
        if embedder_dir:
            from quark_jax.retrieval.embedder import Embedder

            embedder = Embedder.from_run(embedder_dir)
        return Index.open(path, embedder=embedder)
    except (OSError, ValueError, IndexFormatError) as e:
        raise ValueError(f"--index {path}: {e}") from None


# ---- kg_query ------------------------------------------------------------------------------------------------

MAX_KG_LINES = 40
KG_OPERATIONS = ("neighbours", "callers", "path")


def kg_query(db: str) -> Tool:
    """Queries of a ``quark kg build`` graph: the relations of an entity, who calls it, or the paths from it to
    another. The file is opened read-only on every call (a connection per call: calls may come from any thread)."""
    from quark_jax.knowledge.store import KnowledgeGraph, UnknownEntityError

    with KnowledgeGraph(db, readonly=True):  # fails now, naming the file, rather than at the first call
        pass

    def run(operation: str, entity: str, target: str | None = None, relation: str | None = None) -> str:
        if operation not in KG_OPERATIONS:
            raise ToolError(f"operation={operation!r}: must be one of {', '.join(KG_OPERATIONS)}")
        entity = _text_argument(entity, "entity", MAX_QUERY_CHARS)
        if relation is not None:
            relation = _text_argument(relation, "relation", MAX_QUERY_CHARS)
        with KnowledgeGraph(db, readonly=True) as graph:
            try:
                if operation == "neighbours":
                    lines = [f"{entity} --{n.relation}--> {n.name}" if n.direction == "out"
                             else f"{n.name} --{n.relation}--> {entity}"
                             for n in graph.neighbours(entity, relation, "both")]
                elif operation == "callers":
                    lines = [f"{c} --calls--> {entity}" for c in graph.callers(entity)]
                else:
                    if target is None:
                        raise ToolError("operation='path' needs target, the entity the path ends at")
                    target = _text_argument(target, "target", MAX_QUERY_CHARS)
                    paths = graph.paths(entity, target, None if relation is None else [relation], max_hops=3,
                                        direction="both", limit=5)
                    lines = [" ; ".join(f"{e.subject} --{e.relation}--> {e.object}" for e in path) for path in paths]
            except UnknownEntityError as e:
                raise ToolError(str(e)) from None
        if not lines:
            return f"no {operation} found for {entity!r}"
        more = len(lines) - MAX_KG_LINES
        return truncate("\n".join(lines[:MAX_KG_LINES]) + (f"\n… and {more} more" if more > 0 else ""))

    return Tool(
        name="kg_query",
        description="Query the code knowledge graph: the relations of an entity (neighbours), who calls it "
                    "(callers), or how it connects to a target entity (path). Entities are dotted names such as "
                    "json.decoder.JSONDecoder.",
        parameters={"type": "object",
                    "properties": {"operation": {"type": "string", "enum": list(KG_OPERATIONS)},
                                   "entity": {"type": "string"},
                                   "target": {"type": "string", "description": "operation path: where it ends"},
                                   "relation": {"type": "string", "description": "keep only this relation"}},
                    "required": ["operation", "entity"], "additionalProperties": False},
        fn=run)


# ---- the registry --------------------------------------------------------------------------------------------

def default_tools(names: Sequence[str], *, corpus: str | None = None, index: Any = None, kg: str | None = None,
                  python_timeout_s: float = 5.0) -> list[Tool]:
    """The tools called ``names`` (from :data:`TOOL_NAMES`), in that order. ``search_corpus`` needs ``corpus`` (a
    folder), ``retrieve`` an ``index`` (an open :class:`Index`, or a directory opened lexical-only), ``kg_query``
    a ``kg`` SQLite file; a missing one, an unknown or repeated name is a ``ValueError`` naming the fix."""
    unknown = [n for n in names if n not in TOOL_NAMES]
    if unknown:
        raise ValueError(f"--tools: unknown tool {unknown[0]!r}; choose from {', '.join(TOOL_NAMES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"--tools: {', '.join(names)} names a tool twice")
    needs: Mapping[str, tuple[str, Any]] = {"search_corpus": ("--corpus DIR", corpus),
                                            "retrieve": ("--index DIR", index), "kg_query": ("--kg DB", kg)}
    tools = []
    for name in names:
        if name in needs and needs[name][1] is None:
            raise ValueError(f"--tools {name} needs {needs[name][0]}")
        if name == "calculator":
            tools.append(calculator())
        elif name == "python":
            tools.append(python_tool(python_timeout_s))
        elif name == "search_corpus":
            tools.append(search_corpus(corpus))
        elif name == "retrieve":
            tools.append(retrieve(open_index(index) if isinstance(index, str) else index))
        else:
            try:
                tools.append(kg_query(kg))
            except (OSError, ValueError, sqlite3.Error) as e:
                raise ValueError(f"--kg {kg}: {e}") from None
    return tools
