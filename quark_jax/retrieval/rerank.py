"""Reranking retrieved passages by the model's own log-likelihood of the question given the passage.

For each hit the model scores ``log p(question | passage)``: the prompt is the passage text followed by
``"\\nQuestion: "``, the continuation is the question, and the sum of the question tokens' log-probabilities
comes from the compiled scorer (``LoadedModel.score``: one padded forward pass per batch). The score is
normalised per token (divided by the question's token count). For one query every passage is followed by the
same question tokens, so the normalisation does not change the order; it makes scores comparable across
questions of different lengths. A passage too long for the model's trained context keeps its first tokens.

The question is what the passage must explain: a passage under which the question is likely is one that talks
about what the question asks (the "query likelihood" model of classic IR, with the LM as the document model).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from quark_jax.retrieval.types import Hit

QUESTION_SEPARATOR = "\nQuestion: "


class LogLikelihoodReranker:
    """Reorders hits by ``log p(question | passage) / question tokens`` under ``model`` (a ``LoadedModel``).

    ``batch_size`` pairs go through the scorer per call. The reranked hits carry the new score in ``score``
    and the retriever's score in ``metadata["retrieval_score"]``.
    """

    def __init__(self, model: Any, batch_size: int = 8):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: must be >= 1")
        self.model, self.batch_size = model, batch_size

    def prompt_of(self, passage: str, question: str) -> str:
        """The scored prompt for a passage: its text (its first tokens when the pair would not fit the trained
        context) and the question separator."""
        tokenizer = self.model.tokenizer
        context = getattr(self.model, "trained_context", None)
        if context:
            room = context - len(tokenizer.encode(question)) - len(tokenizer.encode(QUESTION_SEPARATOR)) - 1
            if room < 1:
                raise ValueError(f"the question is {len(tokenizer.encode(question))} tokens; it leaves no room for "
                                 f"a passage in the model's {context}-token context")
            ids = tokenizer.encode(passage)
            if len(ids) > room:
                passage = tokenizer.decode(ids[:room])
        return passage + QUESTION_SEPARATOR

    def scores(self, question: str, passages: Sequence[str]) -> list[float]:
        """``log p(question | passage)`` per token of the question, for each passage, in order."""
        if not question.strip():
            raise ValueError("the question is empty: there is nothing to score")
        prompts = [self.prompt_of(p, question) for p in passages]
        out: list[float] = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start:start + self.batch_size]
            for result in self.model.score(chunk, [question] * len(chunk)):
                out.append(result["logprob"] / result["num_tokens"])
        return out

    def rerank(self, question: str, hits: Sequence[Hit]) -> list[Hit]:
        """The hits sorted by :meth:`scores`, best first (ties keep the retriever's order)."""
        if not hits:
            return []
        scores = self.scores(question, [h.text for h in hits])
        order = sorted(range(len(hits)), key=lambda i: -scores[i])
        return [dataclasses.replace(hits[i], score=scores[i],
                                    metadata={**hits[i].metadata, "retrieval_score": hits[i].score})
                for i in order]
