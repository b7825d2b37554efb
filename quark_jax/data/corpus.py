"""A small, real, offline corpus: the Python standard library's own source.

Every machine that runs this code has a CPython installation, so the stdlib is a corpus that needs no
download, is licensed for reuse (PSF), and mixes code with English prose (docstrings). It is small
(~20 MB of text) but large enough to train a 4k-vocabulary tokenizer and a tiny language model.

Two document kinds are produced from the same files:

* ``stdlib_code``: the source text of one file per document.
* ``stdlib_docstrings``: one document per module, joining the module, class and function docstrings,
  each preceded by its qualified name.

Both kinds share one train/validation split, decided per file by its relative path with the rule of
``splits.py`` (3% validation), so a validation module's docstrings never leak into training through the
other kind.

Note: the corpus is whatever stdlib the running interpreter ships; different Python versions give
different (but individually deterministic) corpora.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import pathlib
import sysconfig

from quark_jax.data.splits import SPLITS, split_of

KINDS = ("stdlib_code", "stdlib_docstrings")

# Directories that are not "the library": third-party packages, test suites (huge, repetitive, and full
# of deliberately odd code), and bundled applications or wheels.
_EXCLUDED_DIRS = frozenset(
    {
        "site-packages",
        "dist-packages",
        "test",
        "tests",
        "idle_test",
        "lib2to3",
        "idlelib",
        "turtledemo",
        "ensurepip",
        "__pycache__",
    }
)
# Generated tables (e.g. pydoc_data/topics.py) and giant reference implementations would dominate a
# corpus this small; the cap keeps it to hand-written modules.
MAX_FILE_BYTES = 200_000


@dataclasses.dataclass(frozen=True)
class SourceFile:
    """One decoded stdlib file; ``relpath`` uses '/' separators and is the split/sort key."""

    relpath: str
    text: str


@dataclasses.dataclass(frozen=True)
class _Scan:
    """Result of walking the stdlib once; the counters explain what was left out and why."""

    files: tuple[SourceFile, ...]
    too_large: int
    undecodable: int
    empty: int


def stdlib_root() -> pathlib.Path:
    """Directory of the running interpreter's standard library."""
    return pathlib.Path(sysconfig.get_paths()["stdlib"])


def _is_excluded(relpath: pathlib.PurePath) -> bool:
    return any(part in _EXCLUDED_DIRS for part in relpath.parts[:-1])


@functools.lru_cache(maxsize=None)
def _scan() -> _Scan:
    """Reads every eligible stdlib file once, in sorted relative-path order."""
    root = stdlib_root()
    paths = sorted(
        (p.relative_to(root) for p in root.rglob("*.py")),
        key=lambda rel: rel.as_posix(),
    )
    files, too_large, undecodable, empty = [], 0, 0, 0
    for rel in paths:
        if _is_excluded(rel):
            continue
        path = root / rel
        if not path.is_file():
            continue
        if path.stat().st_size > MAX_FILE_BYTES:
            too_large += 1
            continue
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            # A file in another encoding would be mojibake after a lossy decode; leaving it out is
            # cleaner than teaching the tokenizer replacement characters.
            undecodable += 1
            continue
        if not text.strip():
            # Empty package __init__ files carry no signal and would become EOS-only examples.
            empty += 1
            continue
        files.append(SourceFile(rel.as_posix(), text))
    return _Scan(tuple(files), too_large, undecodable, empty)


def _module_name(relpath: str) -> str:
    """'json/decoder.py' -> 'json.decoder'; 'json/__init__.py' -> 'json'."""
    parts = relpath[: -len(".py")].split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


_DOCUMENTED = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _docstrings(node: ast.AST, qualname: str) -> list[tuple[str, str]]:
    """(qualified name, cleaned docstring) pairs for ``node`` and the definitions inside it."""
    found = []
    doc = ast.get_docstring(node, clean=True)
    if doc:
        found.append((qualname, doc))
    found.extend(_body_docstrings(node.body, qualname))
    return found


def _body_docstrings(body: list[ast.stmt], qualname: str) -> list[tuple[str, str]]:
    """Docstrings of the definitions in a statement list, in source order."""
    found = []
    for stmt in body:
        if isinstance(stmt, _DOCUMENTED):
            found.extend(_docstrings(stmt, f"{qualname}.{stmt.name}"))
        elif isinstance(stmt, (ast.If, ast.Try)):
            # Platform-specific variants (``if sys.platform == ...: def f(): ...``) live in these.
            for block in (stmt.body, stmt.orelse, getattr(stmt, "finalbody", [])):
                found.extend(_body_docstrings(block, qualname))
    return found


def docstring_document(tree: ast.Module, relpath: str) -> str | None:
    """One document joining a parsed module's docstrings, each under its qualified name.

    Returns None when the module has no docstrings at all.
    """
    entries = _docstrings(tree, _module_name(relpath))
    if not entries:
        return None
    return "\n\n".join(f"{name}\n{text}" for name, text in entries) + "\n"


def _check(kind: str, split: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"Unknown corpus kind {kind!r}; expected one of {KINDS}.")
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; expected one of {SPLITS}.")


@functools.lru_cache(maxsize=None)
def stdlib_files(split: str) -> tuple[SourceFile, ...]:
    """The decoded files of one split, sorted by relative path."""
    _check(KINDS[0], split)
    return tuple(f for f in _scan().files if split_of(f.relpath) == split)


@functools.lru_cache(maxsize=None)
def _docstring_documents(split: str) -> tuple[tuple[str, ...], int]:
    """(documents, number of modules that failed to parse) for one split."""
    docs, unparsable = [], 0
    for source in stdlib_files(split):
        try:
            tree = ast.parse(source.text, filename=source.relpath)
        except (SyntaxError, ValueError):
            unparsable += 1
            continue
        doc = docstring_document(tree, source.relpath)
        if doc is not None:
            docs.append(doc)
    return tuple(docs), unparsable


@functools.lru_cache(maxsize=None)
def stdlib_documents(kind: str, split: str) -> list[str]:
    """Documents of ``kind`` ('stdlib_code' or 'stdlib_docstrings') for ``split``, deterministic order.

    The list is cached and shared: callers must not mutate it.
    """
    _check(kind, split)
    if kind == "stdlib_code":
        return [f.text for f in stdlib_files(split)]
    return list(_docstring_documents(split)[0])


def corpus_stats() -> dict[str, int]:
    """Document and character counts per kind and split, plus counts of skipped files."""
    scan = _scan()
    stats = {
        "files_too_large": scan.too_large,
        "files_undecodable": scan.undecodable,
        "files_empty": scan.empty,
    }
    for split in SPLITS:
        stats[f"files/{split}"] = len(stdlib_files(split))
        stats[f"modules_unparsable/{split}"] = _docstring_documents(split)[1]
        for kind in KINDS:
            docs = stdlib_documents(kind, split)
            stats[f"{kind}/{split}/documents"] = len(docs)
            stats[f"{kind}/{split}/characters"] = sum(len(d) for d in docs)
    return stats
