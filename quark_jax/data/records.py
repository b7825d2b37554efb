"""Plain records the data layer hands to the layers above it."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Passage:
    """One retrievable text. ``id`` is unique in its index; ``metadata`` is JSON-serialisable (e.g.
    ``{"source": "json/__init__.py", "entity": "json.dumps"}``). Retrieval re-exports it as
    ``quark_jax.retrieval.Passage``."""

    id: str
    text: str
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
