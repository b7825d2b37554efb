"""The few types every retrieval module shares: a passage, a search hit, and what an embedder and a retriever
must provide. Anything with these methods plugs in (our :class:`~quark_jax.retrieval.embedder.Embedder`, an
index, a knowledge-graph-expanding retriever, a test's reference implementation)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Literal, Protocol

import numpy as np
from jaxtyping import Float

from quark_jax.data.records import Passage

TextKind = Literal["query", "passage"]
__all__ = ["Embedder", "Hit", "Passage", "Retriever", "TextKind"]


@dataclasses.dataclass(frozen=True)
class Hit:
    """A passage found by a search, with its score (higher is better; its scale depends on the method)."""

    id: str
    text: str
    score: float
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)


class Embedder(Protocol):
    """Maps texts to L2-normalised float32 vectors ``[N, dim]``. ``identity`` names the model and settings
    that made them: vectors from different identities are not comparable, and an index refuses them."""

    identity: str
    dim: int

    def embed(self, texts: Sequence[str], kind: TextKind = "passage") -> Float[np.ndarray, "N dim"]: ...


class Retriever(Protocol):
    """Anything that answers a query with ranked hits, best first."""

    def search(self, query: str, k: int = 10) -> list[Hit]: ...
