"""Retrieval-augmented generation: retrieve, optionally rerank, fit the context window, generate, cite.

    pipeline = RAGPipeline(qj.load(run), index, k=5, rerank=True)
    answer = pipeline.answer("What are the parameters of `json.dumps`?")
    answer.text, [h.id for h in answer.citations]

The prompt is measured with the run's tokenizer while it is built (:mod:`quark_jax.retrieval.context`), so it
is never longer than ``budget_tokens``; ``budget_tokens + max_new_tokens`` must fit the context the run was
trained on. Generation is greedy, through the compiled generator (``LoadedModel.complete``), and stops at the
end-of-turn marker. Citations are the ``[n]`` the answer writes, mapped back to the sources shown; a number
that names no source is ignored and counted in ``unknown_citations``.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from quark_jax.data import tokenizer as tokens
from quark_jax.retrieval.context import FittedContext, Source, fit_passages
from quark_jax.retrieval.prompt import RAGTemplate, render_sources
from quark_jax.retrieval.rerank import LogLikelihoodReranker
from quark_jax.retrieval.types import Hit, Retriever

_CITATION = re.compile(r"\[(\d{1,4})\]")


@dataclasses.dataclass
class RAGAnswer:
    """An answer: its ``text``, the hits it ``citations`` cites (first mention first, each once), every
    passage shown (``sources``, in citation-number order), the ``prompt`` text, the cited numbers that name
    no source (``unknown_citations``), and the hits left out of the context (``dropped``: id, reason)."""

    text: str
    citations: list[Hit]
    sources: list[Hit]
    prompt: str
    unknown_citations: list[int] = dataclasses.field(default_factory=list)
    dropped: list[tuple[str, str]] = dataclasses.field(default_factory=list)


def parse_citations(text: str, sources: dict[int, Hit]) -> tuple[list[Hit], list[int]]:
    """(hits cited by ``[n]`` in ``text``, first mention first and each once; numbers naming no source)."""
    cited, unknown, seen = [], [], set()
    for match in _CITATION.finditer(text):
        number = int(match.group(1))
        if number in seen:
            continue
        seen.add(number)
        if number in sources:
            cited.append(sources[number])
        else:
            unknown.append(number)
    return cited, unknown


def strip_citations(text: str) -> str:
    """``text`` without its ``[n]`` markers and surrounding spaces (the answer proper, for exact match)."""
    return " ".join(_CITATION.sub(" ", text).split())


class RAGPipeline:
    """Answers questions from a ``retriever`` (anything with ``search(query, k) -> list[Hit]``) with ``model``.

    ``k`` hits are retrieved (``rerank=True``: reordered by :class:`LogLikelihoodReranker`), fitted under
    ``budget_tokens`` prompt tokens (default: the trained context minus ``max_new_tokens``), rendered with
    ``template`` and answered greedily in at most ``max_new_tokens`` tokens.
    """

    def __init__(self, model: Any, retriever: Retriever | None, budget_tokens: int | None = None, k: int = 5,
                 rerank: bool = False, max_new_tokens: int = 32, template: RAGTemplate | None = None):
        if k < 1:
            raise ValueError(f"k={k}: must be >= 1")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens}: must be >= 1")
        context = getattr(model, "trained_context", None)
        if budget_tokens is None:
            budget_tokens = (context or 2048) - max_new_tokens
        if budget_tokens < 1:
            raise ValueError(f"budget_tokens={budget_tokens}: must be >= 1 (max_new_tokens={max_new_tokens} "
                             f"leaves no prompt room in the {context}-token context)")
        if context and budget_tokens + max_new_tokens > context:
            raise ValueError(f"budget_tokens={budget_tokens} + max_new_tokens={max_new_tokens} exceeds the "
                             f"{context}-token context the model was trained on; lower one of them")
        self.model, self.retriever = model, retriever
        self.budget_tokens, self.k, self.max_new_tokens = budget_tokens, k, max_new_tokens
        self.template = template or RAGTemplate()
        self.reranker = LogLikelihoodReranker(model) if rerank else None

    def retrieve(self, question: str) -> list[Hit]:
        """The ``k`` hits for ``question``, reranked when the pipeline reranks."""
        if self.retriever is None:
            raise ValueError("this pipeline has no retriever; use answer_without_retrieval")
        hits = list(self.retriever.search(question, self.k))
        return self.reranker.rerank(question, hits) if self.reranker else hits

    def fit(self, question: str, hits: list[Hit]) -> FittedContext:
        """The sources that fit the prompt budget for ``question`` (the whole prompt is what is measured)."""
        return fit_passages(hits, self.model.tokenizer, self.budget_tokens,
                            frame=lambda block: self.template.prompt(question, block), render=render_sources)

    def answer(self, question: str) -> RAGAnswer:
        """Retrieve, (rerank), fit, generate; the answer with the sources it cites."""
        _check_question(question)
        fitted = self.fit(question, self.retrieve(question))
        prompt = self.template.prompt(question, fitted.block)
        text = self._generate(prompt)
        cited, unknown = parse_citations(text, fitted.citations)
        return RAGAnswer(text, cited, [s.hit if not s.cut else _shown(s) for s in fitted.sources], prompt,
                         unknown, fitted.dropped)

    def answer_without_retrieval(self, question: str) -> RAGAnswer:
        """The same model and template with no sources (the closed-book baseline)."""
        _check_question(question)
        fitted = fit_passages([], self.model.tokenizer, self.budget_tokens,
                              frame=lambda block: self.template.prompt(question, block), render=render_sources)
        prompt = self.template.prompt(question, fitted.block)
        text = self._generate(prompt)
        _, unknown = parse_citations(text, {})
        return RAGAnswer(text, [], [], prompt, unknown)

    def _generate(self, prompt: str) -> str:
        (completion,) = self.model.complete([prompt], max_new_tokens=self.max_new_tokens, stop=[tokens.END])
        return completion.text.strip()


def _shown(source: Source) -> Hit:
    """The hit of a cut source, with the text shown and ``metadata["cut"] = True``."""
    return dataclasses.replace(source.hit, text=source.text, metadata={**source.hit.metadata, "cut": True})


def _check_question(question: str) -> None:
    if not isinstance(question, str) or not question.strip():
        raise ValueError("the question is empty; ask something, e.g. 'What are the parameters of `json.dumps`?'")
