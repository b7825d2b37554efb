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

Reading and parsing the library takes seconds, and every ``quark train`` process needs it, so the result is
kept in a JSON file under ``$QUARK_CACHE_DIR`` (default ``~/.cache/quark_jax``), named by a fingerprint of
the interpreter, this module's source and every eligible file's path, size and modification time: a changed
library or a changed extraction is a different file. An unreadable cache file is ignored and rewritten.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import json
import logging
import os
import pathlib
import sys
import sysconfig
import tempfile

from quark_jax.data.splits import SPLITS, split_of

KINDS = ("stdlib_code", "stdlib_docstrings")
CACHE_ENV = "QUARK_CACHE_DIR"
_CACHE_FORMAT = 1
log = logging.getLogger(__name__)

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


def _candidates(root: pathlib.Path) -> list[pathlib.PurePosixPath]:
    """Relative paths of the ``.py`` files outside the excluded directories, sorted (symbolic links to
    directories are not followed)."""
    found = []
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = [d for d in subdirs if d not in _EXCLUDED_DIRS]
        rel = pathlib.PurePosixPath(pathlib.Path(directory).relative_to(root).as_posix())
        found.extend(rel / n for n in names if n.endswith(".py"))
    return sorted(found, key=lambda p: p.as_posix())


def cache_dir() -> pathlib.Path:
    """Where quark_jax keeps derived data that is safe to delete: ``$QUARK_CACHE_DIR`` or ~/.cache/quark_jax."""
    return pathlib.Path(os.environ.get(CACHE_ENV) or pathlib.Path.home() / ".cache" / "quark_jax")


def _fingerprint(root: pathlib.Path, paths: list[pathlib.PurePosixPath]) -> str:
    digest = hashlib.sha256(f"{_CACHE_FORMAT}\0{sys.version}\0{root}\0".encode())
    digest.update(pathlib.Path(__file__).read_bytes())
    for rel in paths:
        try:
            stat = (root / rel).stat()
        except OSError:
            continue
        digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


@functools.lru_cache(maxsize=None)
def _corpus() -> dict:
    """The scanned files, their counters and both splits' docstring documents: from the cache file when its
    fingerprint matches, else computed and written (atomically) for the next process."""
    root = stdlib_root()
    paths = _candidates(root)
    path = cache_dir() / "stdlib_corpus" / f"{_fingerprint(root, paths)}.json"
    try:
        with open(path, encoding="utf-8") as f:
            cached = json.load(f)
        cached["files"] = tuple(SourceFile(rel, text) for rel, text in cached["files"])
        return cached
    except (OSError, ValueError, KeyError, TypeError) as e:
        if not isinstance(e, FileNotFoundError):
            log.warning("ignoring an unreadable corpus cache %s (%s); rebuilding it", path, e)
    scan = _read_files(root, paths)
    corpus = {"files": scan.files, "too_large": scan.too_large, "undecodable": scan.undecodable,
              "empty": scan.empty, "docstrings": {}, "unparsable": {}}
    for split in SPLITS:
        docs, unparsable = _parse_docstrings(f for f in scan.files if split_of(f.relpath) == split)
        corpus["docstrings"][split], corpus["unparsable"][split] = docs, unparsable
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False,
                                         encoding="utf-8") as f:
            json.dump({**corpus, "files": [[s.relpath, s.text] for s in scan.files]}, f)
        os.replace(f.name, path)
    except OSError as e:  # a read-only home: every process parses the library itself
        log.warning("could not write the corpus cache %s: %s", path, e)
    return corpus


def _read_files(root: pathlib.Path, paths: list[pathlib.PurePosixPath]) -> _Scan:
    """Reads every eligible stdlib file once, in sorted relative-path order."""
    files, too_large, undecodable, empty = [], 0, 0, 0
    for rel in paths:
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


def _scan() -> _Scan:
    """Every eligible stdlib file, in sorted relative-path order, and what was left out."""
    c = _corpus()
    return _Scan(c["files"], c["too_large"], c["undecodable"], c["empty"])


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


def parse(source: SourceFile) -> ast.Module | None:
    """The file's syntax tree, or None when this interpreter cannot parse it (a file written for another
    Python version): every reader of the corpus skips those the same way."""
    try:
        return ast.parse(source.text, filename=source.relpath)
    except (SyntaxError, ValueError):
        return None


def _parse_docstrings(files) -> tuple[list[str], int]:
    """(docstring documents, number of modules that failed to parse) of some files."""
    docs, unparsable = [], 0
    for source in files:
        tree = parse(source)
        if tree is None:
            unparsable += 1
            continue
        doc = docstring_document(tree, source.relpath)
        if doc is not None:
            docs.append(doc)
    return docs, unparsable


def _docstring_documents(split: str) -> tuple[tuple[str, ...], int]:
    """(documents, number of modules that failed to parse) for one split."""
    c = _corpus()
    return tuple(c["docstrings"][split]), c["unparsable"][split]


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
