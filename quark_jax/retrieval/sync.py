"""Incremental knowledge-base updates: re-index only the documents whose content changed.

Each document becomes passages ``<doc id>#<content hash prefix>#<i>`` (paragraph-packed chunks of at most
``max_chars``) with metadata ``{"document": doc id, "content_hash": "sha256:..."}``. :func:`sync_documents`
compares a document set with what the index holds, by content hash:

* a new document's passages are added; a removed document's passages are deleted;
* a changed document's new passages are added *before* its old ones are deleted (the ids differ, as they carry
  the hash), so a crash between the two writes leaves both versions searchable, never neither, and the next
  sync deletes the stale one;
* an unchanged document is not touched: its passages keep their ids and rows, and nothing is re-embedded.

Passages without a ``document`` field (added by other means) are left alone.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
from collections.abc import Mapping

from quark_jax.retrieval.index import Index
from quark_jax.retrieval.types import Passage

HASH_PREFIX_CHARS = 12


def content_hash(text: str) -> str:
    """``sha256:<hex>`` of the document text (UTF-8)."""
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def document_passages(doc_id: str, text: str, max_chars: int = 1500) -> list[Passage]:
    """The passages of one document: paragraphs packed greedily up to ``max_chars`` (a longer paragraph is cut)."""
    if max_chars < 1:
        raise ValueError(f"max_chars={max_chars} must be >= 1")
    digest = content_hash(text)
    chunks, current = [], ""
    for paragraph in (p.strip() for p in text.split("\n\n")):
        while len(paragraph) > max_chars:
            if current:
                chunks.append(current)
                current = ""
            chunks.append(paragraph[:max_chars])
            paragraph = paragraph[max_chars:]
        if not paragraph:
            continue
        if current and len(current) + 2 + len(paragraph) > max_chars:
            chunks.append(current)
            current = ""
        current = f"{current}\n\n{paragraph}" if current else paragraph
    if current or not chunks:
        chunks.append(current)
    prefix = f"{doc_id}#{digest[len('sha256:'):][:HASH_PREFIX_CHARS]}"
    return [Passage(f"{prefix}#{i}", chunk, {"document": doc_id, "content_hash": digest})
            for i, chunk in enumerate(chunks)]


@dataclasses.dataclass(frozen=True)
class SyncReport:
    """Which documents a sync added, re-indexed, deleted and left alone (ids, sorted), and the passage counts."""

    added: list[str]
    changed: list[str]
    removed: list[str]
    unchanged: list[str]
    passages_added: int
    passages_deleted: int


def indexed_documents(index: Index) -> dict[str, dict[str, list[str]]]:
    """``{doc id: {content hash: [passage ids]}}`` of the passages a sync wrote (more than one hash: a sync was
    interrupted between its add and its delete)."""
    held: dict[str, dict[str, list[str]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    for passage_id in index.ids():
        metadata = index.get(passage_id).metadata or {}
        if "document" in metadata and "content_hash" in metadata:
            held[metadata["document"]][metadata["content_hash"]].append(passage_id)
    return {doc: dict(by_hash) for doc, by_hash in held.items()}


def sync_documents(index: Index, documents: Mapping[str, str], max_chars: int = 1500) -> SyncReport:
    """Makes ``index`` hold exactly ``documents`` (``{doc id: text}``), touching only what changed."""
    held = indexed_documents(index)
    added, changed, unchanged, new_passages, stale = [], [], [], [], []
    for doc_id, text in sorted(documents.items()):
        digest = content_hash(text)
        versions = held.get(doc_id, {})
        if digest in versions and len(versions) == 1:
            unchanged.append(doc_id)
            continue
        (changed if versions else added).append(doc_id)
        if digest not in versions:
            new_passages.extend(document_passages(doc_id, text, max_chars))
        stale.extend(pid for h, ids in versions.items() if h != digest for pid in ids)
    removed = sorted(set(held) - set(documents))
    stale.extend(pid for doc_id in removed for ids in held[doc_id].values() for pid in ids)
    index.add(new_passages)  # first: a crash here leaves the old passages, not none
    index.delete(stale)
    return SyncReport(added, changed, removed, unchanged, len(new_passages), len(stale))
