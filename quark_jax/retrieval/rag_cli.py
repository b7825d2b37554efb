"""``quark rag``: answer a question from a run directory and an index directory, with the sources cited.

    quark rag --model_dir /tmp/sft --index /tmp/stdlib_index --question "What are the parameters of `json.dumps`?"
    quark rag ... --k 8 --rerank --budget 384 --json

The flags are declared in :mod:`quark_jax.cli` (so ``quark --help`` imports nothing of retrieval).
Everything a user can get wrong (an empty question, a bad number, a missing directory) is checked before the
index or the model is loaded, and reported as one line (``quark rag: ...``, exit status 2). The index module
(:mod:`quark_jax.retrieval.index`) is imported only when a question is answered.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from quark_jax.retrieval.types import Hit


class RagUsageError(ValueError):
    """A command-line mistake, printed by ``quark`` as one line with exit status 2."""


def check_arguments(args: argparse.Namespace) -> None:
    """Raises :class:`RagUsageError` naming the first bad flag; reads nothing but the file system."""
    if not args.question.strip():
        raise RagUsageError("--question is empty; ask something, e.g. --question 'What does `json.dumps` do?'")
    for name, minimum in (("k", 1), ("budget", 1), ("max_new_tokens", 1), ("step", 0)):
        value = getattr(args, name)
        if value is not None and value < minimum:
            raise RagUsageError(f"--{name}={value}: must be >= {minimum}")
    if not os.path.isdir(args.index):
        raise RagUsageError(f"--index {args.index}: no such directory (build one with quark_jax.retrieval.index)")


class IndexRetriever:
    """An index as a :class:`~quark_jax.retrieval.types.Retriever`, searching in one ``mode`` (None: its
    default)."""

    def __init__(self, index: Any, mode: str | None = None):
        self.index, self.mode = index, mode

    def search(self, query: str, k: int = 10) -> list[Hit]:
        return self.index.search(query, k) if self.mode is None else self.index.search(query, k, self.mode)


def load_index(path: str, embedder_dir: str | None = None) -> Any:
    """The index stored at ``path`` (``quark_jax.retrieval.index.Index.open``, imported lazily), with the
    embedder of the run ``embedder_dir`` for dense search (None: lexical search only); a load error is a
    usage error."""
    try:
        from quark_jax.retrieval import index as index_module
    except ImportError as e:
        raise RagUsageError(f"the index module is not available ({e}); install quark_jax with retrieval") from None
    errors = (OSError, ValueError) + tuple(
        e for e in (getattr(index_module, "IndexFormatError", None),) if isinstance(e, type))
    try:
        embedder = None
        if embedder_dir:
            from quark_jax.retrieval.embedder import Embedder

            embedder = Embedder.from_run(embedder_dir)
        return index_module.Index.open(path, embedder=embedder)
    except errors as e:
        raise RagUsageError(f"--index {path}: {e}") from None


def run(args: argparse.Namespace, load_model) -> int:
    """Answers ``--question``; ``load_model(args)`` loads the run (the CLI's loader, errors as usage errors)."""
    from quark_jax.retrieval.rag import RAGPipeline

    index = load_index(args.index, args.embedder_dir)
    model = load_model(args)
    try:
        pipeline = RAGPipeline(model, IndexRetriever(index, args.mode), budget_tokens=args.budget, k=args.k,
                               rerank=args.rerank, max_new_tokens=args.max_new_tokens)
        answer = pipeline.answer(args.question)
    except ValueError as e:
        raise RagUsageError(str(e)) from None
    if args.json:
        print(json.dumps({
            "answer": answer.text,
            "citations": [h.id for h in answer.citations],
            "unknown_citations": answer.unknown_citations,
            "sources": [{"number": i, "id": h.id, "score": h.score, "metadata": h.metadata}
                        for i, h in enumerate(answer.sources, 1)],
            "dropped": [{"id": i, "reason": r} for i, r in answer.dropped],
            "prompt": answer.prompt,
        }, ensure_ascii=False, default=str))
        return 0
    print(answer.text)
    print("sources:")
    cited = {h.id for h in answer.citations}
    for number, hit in enumerate(answer.sources, 1):
        print(f"  [{number}] {hit.id}{' (cited)' if hit.id in cited else ''}")
    if answer.unknown_citations:
        print(f"  cited numbers with no source: {answer.unknown_citations}")
    return 0
