"""Guardrails in the server (``quark serve --guardrails``): every user turn checked, output checked as it
streams, every decision in the audit log.

* A blocked request (any user turn) is answered as Azure OpenAI's content filter answers it, which is what
  OpenAI clients handle: HTTP 400, ``{"error": {"code": "content_filter", "param": "messages", ...}}``
  (the ``openai`` client raises ``BadRequestError`` with ``code == "content_filter"``).
* Redacted input (a pasted key) and fenced tool results go to the model instead of the originals.
* Output: a blocked completion ends with ``finish_reason: "content_filter"``; its text is cut, never sent
  and retracted, because streamed text is released through a :class:`~quark_jax.safety.StreamGuard` that
  holds back a window of characters until they are checked. Redactions (personal data, secrets) are applied
  before the text is sent.
* With an :class:`~quark_jax.safety.audit.AuditLog`, every check (input and output, allowed or not) is one
  ``guardrail`` line with the request id, the model version and the rails that fired.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Sequence
from typing import Any

from quark_jax.safety.audit import AuditLog
from quark_jax.safety.guardrails import Guardrails, StreamGuard
from quark_jax.safety.types import Verdict
from quark_jax.serving.engine import Output
from quark_jax.serving.protocol import APIError, ChatRequest

CONTENT_FILTER = "content_filter"


class ServerGuard:
    """The server's guardrails and audit trail (``audit`` None: decisions are not logged)."""

    def __init__(self, guardrails: Guardrails, model_version: str, audit: AuditLog | None = None):
        self.guardrails, self.model_version, self.audit = guardrails, model_version, audit

    def _log(self, request_id: str, stage: str, verdict: Verdict, decisions: Sequence[Any]) -> None:
        if self.audit is None:
            return
        fired = [d if isinstance(d, dict) else {"rail": d.rail, "action": d.action.value, "reason": d.reason}
                 for d in decisions]
        self.audit.append(request_id, "guardrail", model=self.model_version, stage=stage,
                          action=verdict.action.value, rail=verdict.rail, reason=verdict.reason, decisions=fired)

    def _blocked(self, request_id: str, verdict: Verdict) -> APIError:
        return APIError(400, f"the request was blocked by the content filter ({verdict.rail}): {verdict.reason}",
                        "messages", code=CONTENT_FILTER, headers={"x-request-id": request_id})

    def screen_chat(self, request_id: str, req: ChatRequest) -> ChatRequest:
        """The request with every user turn checked (block: APIError 400 ``content_filter``), redacted, and
        tool results fenced."""
        screening = self.guardrails.screen(req.messages)
        self._log(request_id, "input", screening.verdict, screening.decisions)
        if screening.verdict.blocked:
            raise self._blocked(request_id, screening.verdict)
        return dataclasses.replace(req, messages=screening.messages)

    def screen_prompts(self, request_id: str, prompts: Sequence[str]) -> list[str]:
        """Completion prompts checked as user input (block: APIError 400), redacted."""
        out = []
        for prompt in prompts:
            verdict, fired = self.guardrails.evaluate(prompt, "input")
            self._log(request_id, "input", verdict, fired)
            if verdict.blocked:
                raise self._blocked(request_id, verdict)
            out.append(verdict.text)
        return out

    def output(self, request_id: str, text: str) -> tuple[str, bool]:
        """(text that may be sent, whether it was blocked) for a whole completion."""
        verdict, fired = self.guardrails.evaluate(text, "output")
        self._log(request_id, "output", verdict, fired)
        return ("", True) if verdict.blocked else (verdict.text, False)

    def streams(self, n: int) -> list[StreamGuard]:
        return [self.guardrails.stream() for _ in range(n)]

    async def guarded(self, request_id: str, events: AsyncIterator[tuple[int, Output]], guards: list[StreamGuard],
                      handles: list, choices: list[Output]) -> AsyncIterator[tuple[int, Output]]:
        """The engine's (choice, output) events with their text replaced by what each choice's StreamGuard
        releases. A cut choice gets one last event with ``finish_reason="content_filter"`` and its request is
        cancelled (its slot frees); ``choices[i].text`` always holds what was sent."""
        finished = [False] * len(guards)
        async for i, out in events:
            if finished[i]:  # events of a cut choice that were already on their way
                choices[i].text = guards[i].sent
                continue
            guard = guards[i]
            released = guard.feed(out.text) if out.text else ""
            if not guard.cut and out.finish_reason is not None:
                released += guard.finish()
            choices[i].text = guard.sent
            if guard.cut:
                handles[i].cancel()
                finished[i] = True
                self._log(request_id, "output", guard.verdict, guard.decisions)
                yield i, dataclasses.replace(out, text=released, finish_reason=CONTENT_FILTER)
                continue
            if out.finish_reason is not None:
                finished[i] = True
                self._log(request_id, "output", guard.verdict, guard.decisions)
            yield i, dataclasses.replace(out, text=released)
