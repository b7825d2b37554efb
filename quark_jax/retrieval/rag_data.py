"""The RAG fine-tuning set: API questions (:mod:`quark_jax.data.api_questions`) asked with retrieved passages,
answered with the gold passage cited — so a model learns to read the fenced sources and cite them.

Each question is searched with a retriever; when the gold passage is not among the ``k`` hits it replaces
the last one, and the hits are shuffled (seeded) so the gold passage's position, and with it its citation
number, varies. The passages are fitted under the prompt budget with the real tokenizer exactly as at answer
time (:meth:`RAGPipeline.fit <quark_jax.retrieval.rag.RAGPipeline.fit>`'s rule); an example whose gold
passage does not fit is skipped. The answer is ``"<exact answer> [n]"``. A ``closed_book_fraction`` of the
examples has no sources and an answer without a citation, so the model also knows the closed-book prompt
(the baseline of the measurement).

Records are the chat JSONL the SFT task reads (``{"messages": [...]}``, :mod:`quark_jax.data.chat_tasks`).
"""

from __future__ import annotations

import functools
import json
import os
import random
import tempfile
from collections.abc import Sequence
from typing import Any

from quark_jax.data.api_questions import APIQuestion, api_functions
from quark_jax.retrieval.context import fit_passages
from quark_jax.retrieval.prompt import RAGTemplate, render_sources
from quark_jax.retrieval.types import Hit, Passage, Retriever


def api_passages() -> list[Passage]:
    """Every API function of the stdlib as a passage (id: qualified name), both splits: what the index holds."""
    return [Passage(f.qualname, f.passage_text, {"module": f.module, "source": f.relpath, "kind": "function"})
            for f in api_functions()]


@functools.lru_cache(maxsize=None)
def _passages_by_id() -> dict[str, Passage]:
    return {p.id: p for p in api_passages()}


def gold_hit(question: APIQuestion) -> Hit:
    """The gold passage of a question as a hit (score 0)."""
    passage = _passages_by_id()[question.gold_id]
    return Hit(passage.id, passage.text, 0.0, passage.metadata)


def sft_record(question: APIQuestion, hits: Sequence[Hit], tokenizer: Any, budget_tokens: int,
               template: RAGTemplate, rng: random.Random) -> dict | None:
    """One chat record answering ``question`` from ``hits`` (gold added and shuffled in), or None when the
    gold passage does not fit the budget."""
    hits = list(hits)
    if not any(h.id == question.gold_id for h in hits):
        hits = hits[:-1] + [gold_hit(question)] if hits else [gold_hit(question)]
    rng.shuffle(hits)
    fitted = fit_passages(hits, tokenizer, budget_tokens, frame=lambda block: template.prompt(question.question, block),
                          render=render_sources)
    number = next((s.number for s in fitted.sources if s.hit.id == question.gold_id and not s.cut), None)
    if number is None:
        return None
    return {"messages": template.conversation(question.question, fitted.block, f"{question.answer} [{number}]"),
            "gold_id": question.gold_id, "kind": question.kind}


def sft_records(questions: Sequence[APIQuestion], retriever: Retriever, tokenizer: Any, budget_tokens: int,
                k: int = 3, closed_book_fraction: float = 0.25, seed: int = 0,
                template: RAGTemplate | None = None) -> list[dict]:
    """Chat records for ``questions``: with retrieved sources (see the module docstring), or closed-book for
    a seeded ``closed_book_fraction`` of them."""
    template = template or RAGTemplate()
    rng = random.Random(seed)
    records = []
    for question in questions:
        if rng.random() < closed_book_fraction:
            records.append({"messages": template.conversation(question.question, "", question.answer),
                            "gold_id": question.gold_id, "kind": question.kind})
            continue
        record = sft_record(question, retriever.search(question.question, k), tokenizer, budget_tokens, template, rng)
        if record is not None:
            records.append(record)
    return records


def write_jsonl(records: Sequence[dict], path: str) -> None:
    """Writes ``records`` as JSONL atomically (a temporary file in the same directory, then ``os.replace``)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=directory, suffix=".tmp", delete=False, encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(f.name, path)
