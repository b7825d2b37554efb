"""The agent layer's shared vocabulary: tools, the chat backends agents talk to, and the record of a run.

Messages are OpenAI chat messages end to end (``{"role", "content"}``; an assistant message may carry
``tool_calls``; a tool result is ``{"role": "tool", "tool_call_id", "content"}``), and tools are OpenAI
function tools (:meth:`Tool.spec`), so the same agent runs against the in-process engine or ``quark serve``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

Message = dict[str, Any]


class ContextFull(Exception):
    """The conversation no longer fits the model's context (with room for at least one generated token): a
    backend raises it instead of generating; the agent loop ends the run with ``max_tokens``."""


class ToolError(Exception):
    """A tool refused its input (bad arguments, a limit, a forbidden path): reported to the model as the tool's
    observation, never raised to the user."""


@dataclasses.dataclass(frozen=True)
class Tool:
    """A Python callable the model may call: ``fn(**arguments) -> str`` (the observation), described by a JSON
    schema of its keyword arguments. ``fn`` raises :class:`ToolError` for input it refuses."""

    name: str
    description: str
    parameters: Mapping[str, Any]  # JSON schema of an object: {"type": "object", "properties": ..., "required": ...}
    fn: Callable[..., str]

    def spec(self) -> dict[str, Any]:
        """The OpenAI function-tool description (what ``tools=[...]`` carries on the wire)."""
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": dict(self.parameters)}}


@dataclasses.dataclass(frozen=True)
class Generation:
    """What a backend returns for one chat turn: the assistant message (``content`` and/or ``tool_calls``),
    the tokens it used, why it stopped, and the model that wrote it (for the audit trail)."""

    message: Message
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    model: str


class ChatBackend(Protocol):
    """Something that answers an OpenAI chat request: the in-process engine or a remote ``quark serve``.

    When ``tools`` are offered, the backend decodes under the tool-call grammar (constrained decoding), so a
    call it returns always parses. Many concurrent ``chat`` awaits share one batched generator."""

    model: str  # the model version: run directory and step, or the server's model id

    async def chat(self, messages: Sequence[Message], *, tools: Sequence[Mapping[str, Any]] = (),
                   tool_choice: str | Mapping[str, Any] = "auto", max_tokens: int = 64, temperature: float = 0.0,
                   seed: int = 0) -> Generation: ...


@dataclasses.dataclass(frozen=True)
class Step:
    """One step of an agent run: a generation, a tool call with its observation, a guardrail decision, or the
    stop (``kind`` says which; ``data`` holds the details, JSON-serialisable)."""

    kind: str  # "generate" | "tool" | "guardrail" | "stop"
    data: Mapping[str, Any]


@dataclasses.dataclass
class AgentResult:
    """The final answer (None when the run stopped without one), why the run ended, and every step."""

    answer: str | None
    stop_reason: str  # "answer" | "max_steps" | "max_tokens" | "timeout" | "repeated_call" | "blocked"
    steps: list[Step]
    messages: list[Message]
    request_id: str
