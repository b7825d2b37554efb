"""The agent loop: generate (offering the tools) -> run the tool calls -> feed the observations back -> repeat,
until the model answers without a call.

One :meth:`Agent.run` is one coroutine; many run at once on one event loop and share the backend's batched
generator (the in-process engine's continuous batching, or the server's). Tools run in worker threads
(:data:`TOOL_THREADS`), so a slow tool (the Python sandbox) never holds up the other sessions' generations.

Every run ends with exactly one stop reason (:class:`~quark_jax.agents.types.AgentResult`):

* ``answer`` — the model wrote a message without a tool call: that is the answer;
* ``max_steps`` — ``Limits.max_steps`` generations, each of them a tool call;
* ``max_tokens`` — the run's generated tokens reached ``Limits.max_tokens`` before an answer (the last
  generation was cut), or the conversation no longer fits the model's context (:class:`ContextFull`);
* ``timeout`` — ``Limits.timeout_s`` of wall clock passed (a pending generation is cancelled, freeing its slot);
* ``repeated_call`` — the model repeated a call it already made in this run (same tool, same arguments after
  normalising the JSON): it would get the same observation again, so the run is stopped instead of looping;
* ``blocked`` — a guardrail blocked the input or the answer; the answer is a refusal naming the rail's reason.

A tool that refuses its input (:class:`ToolError`), an unknown tool, arguments that do not match the tool's
schema and any exception a tool raises become the observation ``"error: …"`` — the model sees it and may try
again; nothing is raised to the caller. Observations are untrusted data: ``observation_filter(text, source)``
(e.g. the safety layer's fencing) rewrites each before it enters the context. Every step is appended to the
audit log (``AuditLog.append(request_id, event, model=backend.model, ...)``) when one is given.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from quark_jax.agents.tools import MAX_OBSERVATION_CHARS, truncate
from quark_jax.agents.types import AgentResult, ChatBackend, ContextFull, Message, Step, Tool, ToolError
from quark_jax.data import tokenizer
from quark_jax.safety.audit import AuditLog
from quark_jax.safety.types import Action, Verdict

REFUSAL = "I can't help with that ({reason})."
# Tools run here, not in the event loop's default executor: ``asyncio.run`` waits for that one at exit, so a
# run that timed out during a slow tool would still wait for it.
TOOL_THREADS = ThreadPoolExecutor(max_workers=32, thread_name_prefix="quark-agent-tool")


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one run may use: generations (``max_steps``), generated tokens over all of them (``max_tokens``),
    wall-clock seconds (``timeout_s``), tokens per generation (``max_new_tokens``) and characters per
    observation (``max_observation_chars``)."""

    max_steps: int = 8
    max_tokens: int = 1024
    timeout_s: float = 60.0
    max_new_tokens: int = 128
    max_observation_chars: int = MAX_OBSERVATION_CHARS

    def __post_init__(self):
        for name in ("max_steps", "max_tokens", "max_new_tokens", "max_observation_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"Limits.{name}={getattr(self, name)}: must be >= 1")
        if not self.timeout_s > 0:
            raise ValueError(f"Limits.timeout_s={self.timeout_s}: must be > 0")


class Guardrails(Protocol):
    """What the loop asks of a guardrail: a verdict on the incoming messages and on the final answer. A
    ``REDACT`` verdict on the input replaces the last user message's content with ``verdict.text``; on the
    answer it replaces the answer."""

    def check_input(self, messages: Sequence[Message]) -> Verdict: ...

    def check_output(self, text: str) -> Verdict: ...


_MARKERS = re.compile("|".join(re.escape(m) for m in sorted(tokenizer.USER_DEFINED_TOKENS, key=len, reverse=True)))


def defuse_markers(text: str) -> str:
    """``text`` with every chat-template marker (``<|user|>``, ``<|end|>``, ``<|tool_call|>`` ...) written
    ``<\\|user|>``: plain text that can no longer open or close a turn. Tool output and the model's own text enter
    the conversation through this, so neither can forge a turn (and the server, which refuses markers inside
    content, accepts the conversation)."""
    return _MARKERS.sub(lambda m: "<\\" + m.group(0)[1:], text)


def step_seed(seed: int, step: int) -> int:
    """The sampling seed of generation ``step`` of a run seeded ``seed`` (distinct across steps, and across runs
    whose seeds differ by less than a million)."""
    return (seed * 1_000_003 + step) % 2**31


def normalised_call(name: str, arguments: str) -> tuple[str, str]:
    """The identity of a call for repeat detection: the tool name and the arguments as canonical JSON (sorted
    keys, no spaces), or the stripped raw text when they are not JSON."""
    try:
        return name, json.dumps(json.loads(arguments), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except (json.JSONDecodeError, TypeError):
        return name, str(arguments).strip()


def check_arguments(tool: Tool, arguments: str) -> dict[str, Any]:
    """The call's arguments as keyword arguments, checked against ``tool.parameters`` (an object; required keys
    present, no unknown keys, JSON types and enums as declared); :class:`ToolError` naming the first problem."""
    try:
        values = json.loads(arguments) if isinstance(arguments, str) else arguments
    except json.JSONDecodeError as e:
        raise ToolError(f"the arguments are not valid JSON ({e.msg}); send an object such as "
                        f"{_example(tool)}") from None
    if not isinstance(values, dict):
        raise ToolError(f"the arguments must be a JSON object such as {_example(tool)}")
    schema = tool.parameters
    properties: Mapping[str, Any] = schema.get("properties", {})
    missing = [k for k in schema.get("required", ()) if k not in values]
    if missing:
        raise ToolError(f"{tool.name}: missing argument {missing[0]!r}; e.g. {_example(tool)}")
    unknown = [k for k in values if k not in properties]
    if unknown:
        raise ToolError(f"{tool.name}: unknown argument {unknown[0]!r}; it takes {', '.join(properties) or 'none'}")
    for key, value in values.items():
        _check_type(tool.name, key, value, properties[key])
    return values


_JSON_TYPES = {"string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,),
               "object": (dict,), "array": (list,), "null": (type(None),)}


def _check_type(tool: str, key: str, value: Any, spec: Mapping[str, Any]) -> None:
    kind = spec.get("type")
    if kind in _JSON_TYPES:
        ok = isinstance(value, _JSON_TYPES[kind]) and not (kind in ("integer", "number") and isinstance(value, bool))
        if not ok:
            raise ToolError(f"{tool}: argument {key!r} must be a JSON {kind}, not {json.dumps(value)[:60]}")
    if "enum" in spec and value not in spec["enum"]:
        raise ToolError(f"{tool}: argument {key!r} must be one of {', '.join(map(str, spec['enum']))}")


def _example(tool: Tool) -> str:
    required = tool.parameters.get("required", ())
    return json.dumps({k: "..." for k in required})


class Agent:
    """A tool-using chat agent over a :class:`ChatBackend` (see the module docstring).

    ``tools`` are offered on every generation with ``tool_choice`` (``"auto"``; ``"required"`` or
    ``{"type": "function", "function": {"name": ...}}`` force a call). ``system`` is prepended as a system
    message when the conversation has none. ``guardrails`` checks the input and the answer, ``audit`` records
    every step, ``observation_filter(text, source)`` rewrites tool output before the model sees it.
    ``temperature`` and ``seed`` are the sampling settings (greedy by default; generation ``i`` of a run uses
    :func:`step_seed` ``(seed, i)``, so a sampled retry is not drawn from the same random numbers as the call it
    retries);
    ``on_step(step)`` sees each step as it happens (the terminal chat prints them)."""

    def __init__(self, backend: ChatBackend, tools: Sequence[Tool] = (), limits: Limits = Limits(),
                 guardrails: Guardrails | None = None, audit: AuditLog | None = None, system: str | None = None,
                 *, tool_choice: str | Mapping[str, Any] = "auto",
                 observation_filter: Callable[[str, str], str] | None = None, temperature: float = 0.0,
                 seed: int = 0, on_step: Callable[[Step], None] | None = None):
        names = [t.name for t in tools]
        if len(set(names)) != len(names):
            raise ValueError(f"tools: two tools are called {next(n for n in names if names.count(n) > 1)!r}")
        self.backend, self.limits, self.guardrails, self.audit = backend, limits, guardrails, audit
        self.tools = {t.name: t for t in tools}
        self.specs = [t.spec() for t in tools]
        self.system, self.tool_choice = system, tool_choice
        self.observation_filter = observation_filter or (lambda text, source: text)
        self.temperature, self.seed, self.on_step = temperature, seed, on_step

    def run_sync(self, messages: Sequence[Message] | str, request_id: str | None = None) -> AgentResult:
        """:meth:`run` from synchronous code (a script, the terminal chat)."""
        return asyncio.run(self.run(messages, request_id))

    async def run(self, messages: Sequence[Message] | str, request_id: str | None = None) -> AgentResult:
        """Runs the loop on ``messages`` (OpenAI chat messages, or one user message as a string) until a stop
        reason; never raises for what the model or a tool does."""
        run = _Run(self, messages, request_id or f"agent-{uuid.uuid4().hex[:24]}")
        try:
            return await asyncio.wait_for(run.loop(), timeout=self.limits.timeout_s)
        except (asyncio.TimeoutError, TimeoutError):
            return run.stop("timeout", None, elapsed_s=round(time.monotonic() - run.started, 3))


def _defused(message: Message) -> tuple[Message, list[dict[str, Any]]]:
    """A generated assistant message as it enters the conversation (markers defused in its content and its calls'
    arguments), and its tool calls."""
    message = dict(message)
    if isinstance(message.get("content"), str):
        message["content"] = defuse_markers(message["content"])
    calls = []
    for call in message.get("tool_calls") or []:
        function = dict(call.get("function") or {})
        if isinstance(function.get("arguments"), str):
            function["arguments"] = defuse_markers(function["arguments"])
        calls.append({**call, "function": function})
    if calls:
        message["tool_calls"] = calls
    return message, calls


class _Run:
    """The state of one :meth:`Agent.run`: its messages, steps and token count."""

    def __init__(self, agent: Agent, messages: Sequence[Message] | str, request_id: str):
        self.agent, self.request_id = agent, request_id
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        self.messages: list[Message] = [dict(m) for m in messages]
        if agent.system is not None and not any(m.get("role") == "system" for m in self.messages):
            self.messages.insert(0, {"role": "system", "content": agent.system})
        self.steps: list[Step] = []
        self.tokens = 0
        self.started = time.monotonic()
        self.stopped: AgentResult | None = None

    # ---- records -----------------------------------------------------------------------------------------
    def record(self, kind: str, **data: Any) -> None:
        step = Step(kind, data)
        self.steps.append(step)
        if self.agent.on_step is not None:
            self.agent.on_step(step)
        if self.agent.audit is not None:
            self.agent.audit.append(self.request_id, kind, model=self.agent.backend.model, **data)

    def stop(self, reason: str, answer: str | None, **details: Any) -> AgentResult:
        if self.stopped is None:
            self.record("stop", stop_reason=reason, answer=answer, tokens=self.tokens, **details)
            self.stopped = AgentResult(answer, reason, self.steps, self.messages, self.request_id)
        return self.stopped

    def guard(self, where: str, verdict: Verdict) -> Verdict:
        self.record("guardrail", where=where, action=verdict.action.value, rail=verdict.rail, reason=verdict.reason)
        return verdict

    # ---- the loop ----------------------------------------------------------------------------------------
    async def loop(self) -> AgentResult:
        agent, limits = self.agent, self.agent.limits
        connect = getattr(agent.backend, "connect", None)  # a remote backend learns the served model's id
        if connect is not None:
            await connect()
        last_user = next((m for m in reversed(self.messages) if m.get("role") == "user"), None)
        if agent.audit is not None:  # an audit event, not a step: the input is the caller's, not the agent's
            agent.audit.append(self.request_id, "input", model=agent.backend.model, messages=len(self.messages),
                               user=None if last_user is None else last_user.get("content"), tools=sorted(agent.tools))
        if agent.guardrails is not None:
            verdict = self.guard("input", agent.guardrails.check_input(self.messages))
            if verdict.blocked:
                return self.refuse(verdict)
            if verdict.action is Action.REDACT and last_user is not None:
                index = max(i for i, m in enumerate(self.messages) if m.get("role") == "user")
                self.messages[index] = {**self.messages[index], "content": verdict.text}
        seen: set[tuple[str, str]] = set()
        for step in range(limits.max_steps):
            budget = min(limits.max_new_tokens, limits.max_tokens - self.tokens)
            if budget < 1:
                return self.stop("max_tokens", None)
            try:
                generation = await agent.backend.chat(
                    self.messages, tools=agent.specs, tool_choice=agent.tool_choice if agent.specs else "none",
                    max_tokens=budget, temperature=agent.temperature, seed=step_seed(agent.seed, step))
            except ContextFull as e:
                return self.stop("max_tokens", None, detail=str(e))
            self.tokens += generation.completion_tokens
            message, calls = _defused(generation.message)
            self.record("generate", content=message.get("content"), tool_calls=calls,
                        finish_reason=generation.finish_reason, prompt_tokens=generation.prompt_tokens,
                        completion_tokens=generation.completion_tokens)
            self.messages.append(message)
            if not calls:
                if generation.finish_reason == "length" and self.tokens >= limits.max_tokens:
                    return self.stop("max_tokens", None)
                return self.answer(message.get("content") or "")
            for call in calls:
                function = call.get("function") or {}
                name, arguments = str(function.get("name")), function.get("arguments", "{}")
                key = normalised_call(name, arguments)
                if key in seen:
                    return self.stop("repeated_call", None, tool=name, arguments=key[1])
                seen.add(key)
                observation = await self.call_tool(name, arguments)
                self.messages.append({"role": "tool", "tool_call_id": call.get("id"), "content": observation})
        return self.stop("max_steps", None)

    async def call_tool(self, name: str, arguments: str) -> str:
        """The observation of one call, as it enters the context (filtered, cut to the limit)."""
        agent = self.agent
        started = time.monotonic()
        tool = agent.tools.get(name)
        error = True
        try:
            if tool is None:
                raise ToolError(f"no tool named {name!r}; the tools are {', '.join(agent.tools) or 'none'}")
            values = check_arguments(tool, arguments)
            text = await asyncio.get_running_loop().run_in_executor(TOOL_THREADS, functools.partial(tool.fn, **values))
            if not isinstance(text, str):
                text = json.dumps(text, default=str)
            error = False
        except ToolError as e:
            text = f"error: {e}"
        except Exception as e:  # noqa: BLE001 -- a tool's bug is the model's observation, never the caller's crash
            text = f"error: {type(e).__name__}: {e}"
        observation = agent.observation_filter(defuse_markers(truncate(text, agent.limits.max_observation_chars)),
                                               f"tool:{name}")
        self.record("tool", name=name, arguments=arguments, observation=observation, error=error,
                    seconds=round(time.monotonic() - started, 4))
        return observation

    def answer(self, text: str) -> AgentResult:
        guardrails = self.agent.guardrails
        if guardrails is not None:
            verdict = self.guard("output", guardrails.check_output(text))
            if verdict.blocked:
                return self.refuse(verdict)
            if verdict.action is Action.REDACT:
                text = verdict.text
                self.messages[-1] = {**self.messages[-1], "content": text}
        return self.stop("answer", text)

    def refuse(self, verdict: Verdict) -> AgentResult:
        refusal = REFUSAL.format(reason=verdict.reason)
        self.messages.append({"role": "assistant", "content": refusal})
        return self.stop("blocked", refusal, rail=verdict.rail)


__all__ = ["Agent", "Guardrails", "Limits", "check_arguments", "normalised_call"]
