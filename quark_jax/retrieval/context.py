"""The context-window manager of RAG: which retrieved passages are shown to the model, and how much of each.

:func:`fit_passages` walks the hits in rank order and keeps each one that still fits under a token budget,
measured with the run's real tokenizer on the text the budget covers (by default the rendered sources block;
the RAG pipeline passes the whole chat prompt, so the measured count is the prompt's exact length):

* **dedup** — a hit with the id of a kept one, or whose normalised text (case-folded, whitespace collapsed)
  equals, contains or is contained in a kept one's, is dropped: the higher-ranked passage wins.
* **cuts** — a passage that does not fit whole is cut at the last sentence boundary that fits (line boundary
  for code), never mid-sentence; a passage whose first sentence (line) does not fit is dropped as too large.
* **numbering** — kept passages are numbered ``[1]``, ``[2]``... in rank order; the citation map sends each
  number back to its hit (id, metadata, the text shown).

:func:`chunk_document` cuts a long document into token windows exactly as the data pipeline's chunker
(:mod:`quark_jax.data.chunking`) cuts training sequences, so an indexed chunk is a training-shaped piece.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from typing import Any

from quark_jax.data.chunking import chunk_starts
from quark_jax.retrieval.types import Hit, Passage


@dataclasses.dataclass(frozen=True)
class Source:
    """A passage as shown in the prompt: its citation ``number``, the ``hit`` it came from and the ``text``
    shown (the hit's text, or a prefix of it cut at a sentence or line boundary when ``cut``)."""

    number: int
    hit: Hit
    text: str
    cut: bool = False


@dataclasses.dataclass(frozen=True)
class FittedContext:
    """What :func:`fit_passages` chose: the rendered ``block``, the ``sources`` shown (numbered from 1), the
    measured ``num_tokens`` of the budgeted text (plus ``reserve``), and ``dropped``: ``(hit id, reason)`` for
    every hit left out, reason ``"duplicate"`` or ``"no room"``."""

    block: str
    sources: list[Source]
    num_tokens: int
    budget_tokens: int
    dropped: list[tuple[str, str]]

    @property
    def citations(self) -> dict[int, Hit]:
        """Citation number -> the hit it stands for."""
        return {s.number: s.hit for s in self.sources}


def render_numbered(sources: Sequence[Source]) -> str:
    """The plain block: each source as ``[n] (id)`` then its text, separated by blank lines."""
    return "\n\n".join(f"[{s.number}] ({s.hit.id})\n{s.text}" for s in sources)


def normalise(text: str) -> str:
    """Case-folded text with runs of whitespace collapsed to one space: the key of duplicate detection."""
    return " ".join(text.casefold().split())


_CODE_LINE = re.compile(r"^\s*(def |class |import |from \S+ import |@|return\b|if .*:$|for .*:$)", re.M)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n\s*\n")


def looks_like_code(hit: Hit) -> bool:
    """Whether a passage is code (cut at lines): ``metadata["kind"] == "code"``, or several lines of which at
    least a third start like Python statements."""
    if hit.metadata.get("kind") == "code":
        return True
    lines = [line for line in hit.text.splitlines() if line.strip()]
    return len(lines) >= 3 and len(_CODE_LINE.findall(hit.text)) * 3 >= len(lines)


def cut_points(text: str, code: bool) -> list[int]:
    """Character offsets where ``text`` may be cut, ascending, ending with ``len(text)``: at each line end for
    code, after each sentence (``.``, ``!``, ``?`` then whitespace) or paragraph for prose."""
    if code:
        points = [m.start() for m in re.finditer(r"\n", text)]
    else:
        points = [m.start() for m in _SENTENCE_END.finditer(text)]
    points = sorted({p for p in points if 0 < p < len(text) and text[:p].strip()})
    return points + [len(text)]


def _is_duplicate(text: str, kept: Sequence[str]) -> bool:
    return any(text == k or text in k or k in text for k in kept)


def fit_passages(
    hits: Sequence[Hit],
    tokenizer: Any,
    budget_tokens: int,
    reserve: int = 0,
    frame: Callable[[str], str] | None = None,
    render: Callable[[Sequence[Source]], str] = render_numbered,
) -> FittedContext:
    """The hits that fit under ``budget_tokens``, in order, deduplicated, cut at sentence/line boundaries.

    ``tokenizer`` is the run's vocabulary (``qj.load(run).tokenizer``: ``encode(text) -> ids``).
    ``frame(block)`` is the text the budget covers given the rendered block (default: the block itself;
    the RAG pipeline passes a function that renders the whole prompt around it, question included);
    ``reserve`` tokens are set aside (e.g. for the answer). Every decision is made by tokenizing the framed
    text, so ``len(tokenizer.encode(frame(result.block))) + reserve <= budget_tokens`` holds exactly.
    Raises ``ValueError`` when the frame with no sources (the question and template) plus ``reserve``
    already exceeds the budget.
    """
    frame = frame or (lambda block: block)
    lead = len(getattr(tokenizer, "prompt_prefix_ids", ()) or ())

    def count(sources: Sequence[Source]) -> int:
        return lead + len(tokenizer.encode(frame(render(sources)))) + reserve

    if budget_tokens < 1:
        raise ValueError(f"budget_tokens={budget_tokens}: must be >= 1")
    empty = count([])
    if empty > budget_tokens:
        raise ValueError(f"the prompt without sources needs {empty} tokens (reserve {reserve} included) but "
                         f"budget_tokens is {budget_tokens}; raise the budget or shorten the question")
    sources: list[Source] = []
    kept_ids: set[str] = set()
    kept_texts: list[str] = []
    dropped: list[tuple[str, str]] = []
    for hit in hits:
        key = normalise(hit.text)
        if hit.id in kept_ids or not key or _is_duplicate(key, kept_texts):
            dropped.append((hit.id, "duplicate"))
            continue
        number = len(sources) + 1
        whole = Source(number, hit, hit.text)
        if count(sources + [whole]) <= budget_tokens:
            chosen = whole
        else:
            chosen = _longest_prefix(hit, number, sources, count, budget_tokens)
        if chosen is None:
            dropped.append((hit.id, "no room"))
            continue
        sources.append(chosen)
        kept_ids.add(hit.id)
        kept_texts.append(key)
    return FittedContext(render(sources), sources, count(sources), budget_tokens, dropped)


def _longest_prefix(hit: Hit, number: int, sources: list[Source], count, budget_tokens: int) -> Source | None:
    """The longest prefix of ``hit`` ending at a cut point that fits (binary search: the token count grows
    with the prefix), or None when not even the first sentence/line fits."""
    points = cut_points(hit.text, looks_like_code(hit))[:-1]  # the whole text is known not to fit
    lo, hi, best = 0, len(points) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        candidate = Source(number, hit, hit.text[: points[mid]].rstrip(), cut=True)
        if count(sources + [candidate]) <= budget_tokens:
            best, lo = candidate, mid + 1
        else:
            hi = mid - 1
    return best


class ContextWindow:
    """:func:`fit_passages` with the tokenizer, budget and rendering bound: ``ContextWindow(tok, 512).fit(hits)``."""

    def __init__(self, tokenizer: Any, budget_tokens: int, reserve: int = 0,
                 render: Callable[[Sequence[Source]], str] = render_numbered):
        self.tokenizer, self.budget_tokens, self.reserve, self.render = tokenizer, budget_tokens, reserve, render

    def fit(self, hits: Sequence[Hit], frame: Callable[[str], str] | None = None) -> FittedContext:
        """The hits that fit (see :func:`fit_passages`)."""
        return fit_passages(hits, self.tokenizer, self.budget_tokens, self.reserve, frame, self.render)


def chunk_tokens(ids: Sequence[int], max_tokens: int, overlap: int = 0) -> list[list[int]]:
    """Token windows of at most ``max_tokens``, consecutive ones sharing ``overlap`` tokens: the windows
    :func:`quark_jax.data.chunking.split_to_feature_lengths` makes (same start offsets, same lengths)."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens={max_tokens}: must be >= 1")
    if not 0 <= overlap < max_tokens:
        raise ValueError(f"overlap={overlap}: must be >= 0 and smaller than max_tokens={max_tokens}")
    return [list(ids[start:start + max_tokens]) for start in chunk_starts(len(ids), max_tokens, overlap)]


def chunk_document(text: str, tokenizer: Any, max_tokens: int, overlap: int = 0) -> list[str]:
    """A long document as texts of at most ``max_tokens`` tokens each (:func:`chunk_tokens` on its token
    ids, each window decoded); an empty document gives no chunks."""
    return [tokenizer.decode(window) for window in chunk_tokens(list(tokenizer.encode(text)), max_tokens, overlap)]


def chunk_passage(passage: Passage, tokenizer: Any, max_tokens: int, overlap: int = 0) -> list[Passage]:
    """A passage split by :func:`chunk_document`; one that fits stays whole. Chunk ids are ``id#i`` and their
    metadata adds ``chunk`` (i) and ``parent`` (the passage id)."""
    chunks = chunk_document(passage.text, tokenizer, max_tokens, overlap)
    if len(chunks) <= 1:
        return [passage]
    return [Passage(f"{passage.id}#{i}", text, {**passage.metadata, "chunk": i, "parent": passage.id})
            for i, text in enumerate(chunks)]
