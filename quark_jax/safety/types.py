"""What a guardrail decides: allow, warn, redact or block, with the rail that decided and why."""

from __future__ import annotations

import dataclasses
import enum
from typing import Protocol


class Action(str, enum.Enum):
    """Ordered by severity: a combined decision takes the most severe."""

    ALLOW = "allow"
    WARN = "warn"  # passes unchanged, the reason is logged
    REDACT = "redact"  # passes with the offending spans replaced (``Verdict.text``)
    BLOCK = "block"  # does not pass; the caller answers with a refusal naming ``reason``

    @property
    def severity(self) -> int:
        return ("allow", "warn", "redact", "block").index(self.value)


@dataclasses.dataclass(frozen=True)
class Verdict:
    """A rail's decision on one text. ``text`` is what passes (the input, or its redacted form)."""

    action: Action
    rail: str  # which rail decided ("pii", "toxicity", "jailbreak", "secrets", "topic:<name>", ...)
    reason: str  # one line a user or operator can read
    text: str

    @property
    def blocked(self) -> bool:
        return self.action is Action.BLOCK


class Rail(Protocol):
    """One check. ``where`` is "input" (a user turn), "output" (model text), or "tool" / "retrieved" (untrusted
    data entering the context)."""

    name: str

    def check(self, text: str, where: str) -> Verdict: ...
