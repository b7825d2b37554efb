"""``quark index build|add|delete|sync|search|info``: index directories from the command line.

    quark index build  --index DIR --passages FILE.jsonl [--model_dir RUN] [--hnsw] [--no_dense] [--no_lexical]
    quark index add    --index DIR --passages FILE.jsonl [--model_dir RUN]
    quark index delete --index DIR --ids ID [ID ...]
    quark index sync   --index DIR --source DOCS_DIR [--model_dir RUN] [--suffixes .md,.txt,.rst] [--max_chars 1500]
    quark index search --index DIR --query TEXT [--k 10] [--mode hybrid|lexical|dense] [--model_dir RUN]
    quark index info   --index DIR

A passages file holds one JSON object per line: ``{"id": "...", "text": "...", "metadata": {...}}`` (metadata
optional). ``search`` prints one JSON line per hit (rank, id, score, text, metadata); ``info`` prints the
manifest summary as one JSON line. ``sync`` makes the index hold exactly the documents of a directory
(:mod:`quark_jax.retrieval.sync`: changed and new files re-indexed, deleted ones dropped, unchanged ones not
touched; a missing index is created with ``build``'s part options) and prints one summary line. The embedder of a dense index is the run's
(``quark_jax.retrieval.embedder.Embedder.from_run``); BM25-only indexes (``--no_dense``) need no model.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from collections.abc import Callable
from typing import Any

from quark_jax.data.jsonl import iter_jsonl
from quark_jax.retrieval.doc_dir import DEFAULT_SUFFIXES
from quark_jax.retrieval.types import Passage

MAX_PASSAGES_FILE_BYTES = 4 << 30


class IndexCommandError(Exception):
    """A mistake on the ``quark index`` command line; printed as one line, exit status 2."""


def add_subparser(sub: Any, common: argparse.ArgumentParser, parser_class: type) -> None:
    """Registers ``index`` and its sub-commands on the ``quark`` parser's sub-parsers."""
    index = sub.add_parser("index", help="build, update and search retrieval indexes (BM25, dense, hybrid)",
                           description=__doc__.split("\n\n")[0])
    index_sub = index.add_subparsers(dest="index_command", required=True, parser_class=parser_class)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = index_sub.add_parser(name, parents=[common], help=help_text)
        p.add_argument("--index", required=True, help="the index directory")
        return p

    build = command("build", "a new index from a passages JSONL file")
    build.add_argument("--passages", required=True, help='JSONL: {"id", "text", "metadata"} per line')
    build.add_argument("--model_dir", default=None, help="run directory whose model embeds (dense indexes)")
    build.add_argument("--hnsw", action="store_true", help="also build a faiss HNSW graph for approximate search")
    build.add_argument("--no_dense", action="store_true", help="BM25 only: no vectors, no model needed")
    build.add_argument("--no_lexical", action="store_true", help="dense only: no BM25")
    add = command("add", "add passages (ids must be new)")
    add.add_argument("--passages", required=True)
    add.add_argument("--model_dir", default=None)
    delete = command("delete", "delete passages by id")
    delete.add_argument("--ids", nargs="+", required=True)
    sync = command("sync", "make the index hold a directory's documents: re-index changed files, drop deleted ones")
    sync.add_argument("--source", required=True, help="directory of documents (one file each; the id is its path)")
    sync.add_argument("--suffixes", default=",".join(DEFAULT_SUFFIXES),
                      help="comma-separated file name endings that are documents")
    sync.add_argument("--max_chars", type=int, default=1500, help="most characters per passage")
    sync.add_argument("--model_dir", default=None)
    sync.add_argument("--hnsw", action="store_true", help="a new index: also a faiss HNSW graph")
    sync.add_argument("--no_dense", action="store_true", help="a new index: BM25 only")
    sync.add_argument("--no_lexical", action="store_true", help="a new index: dense only")
    search = command("search", "search; one JSON line per hit")
    search.add_argument("--query", required=True)
    search.add_argument("--k", type=int, default=10)
    search.add_argument("--mode", choices=("hybrid", "lexical", "dense"), default=None,
                        help="default: hybrid when the index has both parts")
    search.add_argument("--model_dir", default=None)
    command("info", "the manifest: embedder, parts, counts, bytes")


def read_passages(path: str) -> list[Passage]:
    """Passages from a JSONL file; a bad line is an :class:`IndexCommandError` naming it."""
    if not os.path.isfile(path):
        raise IndexCommandError(f"--passages {path}: no such file")
    if os.path.getsize(path) > MAX_PASSAGES_FILE_BYTES:
        raise IndexCommandError(f"--passages {path}: over {MAX_PASSAGES_FILE_BYTES} bytes; split it and use "
                                f"`quark index add` for the rest")
    passages = []
    try:
        for number, row in iter_jsonl(path):
            if (not isinstance(row, dict) or not isinstance(row.get("id"), str) or not isinstance(row.get("text"), str)
                    or not isinstance(row.get("metadata", {}), dict)):
                raise IndexCommandError(f'--passages {path} line {number}: each line needs a string "id" and "text" '
                                        f'and optionally an object "metadata", e.g. {{"id": "doc1", "text": "..."}}')
            passages.append(Passage(row["id"], row["text"], row.get("metadata", {})))
    except ValueError as e:  # iter_jsonl's "PATH:LINE: ..." for a line that is not JSON or not UTF-8
        raise IndexCommandError(f"--passages {e}") from None
    if not passages:
        raise IndexCommandError(f"--passages {path}: no passages in the file")
    return passages


def embedder_from_run(model_dir: str):
    """The run's embedder (imported lazily: it loads JAX and the model)."""
    from quark_jax.retrieval.embedder import Embedder

    return Embedder.from_run(model_dir)


def run(args: argparse.Namespace, make_embedder: Callable[[str], Any] = embedder_from_run,
        out: Callable[[str], None] = print) -> int:
    """Runs one ``quark index`` sub-command; library errors become :class:`IndexCommandError`."""
    from quark_jax.retrieval.index import EmbedderMismatchError, Index, IndexFormatError

    model_dir = getattr(args, "model_dir", None)
    try:
        embedder = make_embedder(model_dir) if model_dir else None
    except (OSError, ValueError) as e:
        raise IndexCommandError(f"--model_dir {model_dir}: {e}") from None
    try:
        if args.index_command == "build":
            dense = not args.no_dense
            if dense and embedder is None:
                raise IndexCommandError("a dense index needs --model_dir RUN (the model that embeds); pass "
                                        "--no_dense for a BM25-only index")
            passages = read_passages(args.passages)
            existed = os.path.lexists(args.index)
            index = Index.create(args.index, embedder=embedder, lexical=not args.no_lexical, dense=dense,
                                 hnsw=args.hnsw)
            try:
                index.add(passages)
            except BaseException:
                if not existed:  # a failed build leaves nothing behind
                    shutil.rmtree(args.index, ignore_errors=True)
                raise
            out(json.dumps(index.info()))
            return 0
        if args.index_command == "sync":
            return _sync(args, embedder, out)
        index = Index.open(args.index, embedder=embedder)
        needs_model = index.manifest["parts"]["dense"] and embedder is None
        if args.index_command == "add":
            if needs_model:
                raise IndexCommandError(f"index {args.index} is dense (embedder {index.manifest['embedder']!r}): "
                                        f"pass --model_dir RUN of that model")
            index.add(read_passages(args.passages))
            out(json.dumps(index.info()))
        elif args.index_command == "delete":
            index.delete(args.ids)
            out(json.dumps(index.info()))
        elif args.index_command == "search":
            mode = args.mode or ("lexical" if needs_model and index.manifest["parts"]["lexical"] else None)
            if needs_model and mode != "lexical":
                raise IndexCommandError(f"--mode {mode or 'dense'} on index {args.index} needs its embedder "
                                        f"{index.manifest['embedder']!r}: pass --model_dir RUN, or --mode lexical")
            for rank, hit in enumerate(index.search(args.query, k=args.k, mode=mode), start=1):
                out(json.dumps({"rank": rank, "id": hit.id, "score": round(hit.score, 6), "text": hit.text,
                                "metadata": hit.metadata}, ensure_ascii=False))
        else:
            out(json.dumps(index.info()))
        index.close()
        return 0
    except (ValueError, KeyError, FileExistsError, IndexFormatError, EmbedderMismatchError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        raise IndexCommandError(message) from None


def _sync(args: argparse.Namespace, embedder: Any, out: Callable[[str], None]) -> int:
    """``quark index sync``: the index made to hold exactly the documents of ``--source``."""
    from quark_jax.retrieval import doc_dir, sync
    from quark_jax.retrieval.index import Index

    if args.max_chars < 1:
        raise IndexCommandError(f"--max_chars={args.max_chars}: must be >= 1")
    suffixes = tuple(s.strip() for s in args.suffixes.split(",") if s.strip())
    if not suffixes:
        raise IndexCommandError(f"--suffixes {args.suffixes!r}: name at least one file ending, e.g. .md,.txt")
    try:
        documents = doc_dir.read_documents(args.source, suffixes)
    except doc_dir.DocumentDirError as e:
        raise IndexCommandError(str(e)) from None
    created = not os.path.lexists(args.index)
    if created:
        if not args.no_dense and embedder is None:
            raise IndexCommandError(f"no index at {args.index}: a new dense index needs --model_dir RUN (the model "
                                    "that embeds); pass --no_dense for a BM25-only index")
        index = Index.create(args.index, embedder=embedder, lexical=not args.no_lexical, dense=not args.no_dense,
                             hnsw=args.hnsw)
    else:
        index = Index.open(args.index, embedder=embedder)
        if index.manifest["parts"]["dense"] and embedder is None:
            raise IndexCommandError(f"index {args.index} is dense (embedder {index.manifest['embedder']!r}): pass "
                                    "--model_dir RUN of that model")
    try:
        report = sync.sync_documents(index, documents, max_chars=args.max_chars)
    except BaseException:
        if created:  # a failed first sync leaves nothing behind
            shutil.rmtree(args.index, ignore_errors=True)
        raise
    index.close()
    out(json.dumps({"index": args.index, "source": args.source, "created": created, "added": len(report.added),
                    "changed": len(report.changed), "removed": len(report.removed),
                    "unchanged": len(report.unchanged), "passages_added": report.passages_added,
                    "passages_deleted": report.passages_deleted}))
    return 0
