"""Specialised agents and the leader that routes requests to them.

Every specialist answers ``await agent.run(request, critique=(), request_id=None) -> AgentResult``;
``critique`` holds ``(previous answer, what was wrong with it)`` pairs, shown to the model as earlier turns so
a re-invocation can do better.

* :class:`RetrievalAgent` — searches a retriever, shows the hits as fenced numbered sources
  (:mod:`quark_jax.retrieval.prompt`) and answers citing ``[n]``; the stop step lists the sources shown and
  the hits cited.
* :class:`ReasoningAgent` — arithmetic backed by the calculator tool: an expression read from the request
  (:func:`arithmetic_expression`: ``17 * 23``, "17 times 23", "add 17 and 23", "subtract 5 from 9") is
  computed by the tool and stated; anything else (or a re-invocation with a critique) goes to the agent loop
  with the calculator offered.
* :class:`ExecutionAgent` — the tool-calling agent loop (:class:`~quark_jax.agents.loop.Agent`) with its tools
  (default: the Python sandbox and the calculator).
* :class:`DirectAgent` — one answer from the model, no tools (summaries, small talk).
* :class:`RefusalAgent` — the fixed refusal of an unsafe request; no model call.
* :class:`PlanningAgent` — splits a request into sub-tasks (the router's split), has each answered by the
  agent of its own route (concurrently) and merges the answers as a numbered list.
* :class:`InterpretationAgent` — wraps another agent: checks its answer against the request (non-empty, the
  format the intent needs, the citations of a retrieval answer, the arithmetic against the calculator, the
  output rails) and re-invokes it with the critique, up to ``max_rounds`` times; an answer a rail still blocks
  is replaced by a refusal.
* :class:`Leader` — routes (:class:`~quark_jax.agents.router.Router`), dispatches to the specialist of the
  route through an :class:`InterpretationAgent`, and records the route in the audit log.

Steps beyond the loop's four kinds: ``route`` (the leader's decision), ``subtask`` (a planning sub-result) and
``critique`` (an interpretation round).
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from quark_jax.agents import calculator as calculator_lib
from quark_jax.agents.loop import REFUSAL, Agent, Guardrails, Limits
from quark_jax.agents.router import PLANNING, Route, Router, split_subtasks
from quark_jax.agents.tools import calculator, python_tool
from quark_jax.agents.types import AgentResult, ChatBackend, Message, Step, Tool, ToolError
from quark_jax.retrieval.context import Source
from quark_jax.retrieval.prompt import RAGTemplate, render_sources
from quark_jax.retrieval.rag import parse_citations
from quark_jax.retrieval.types import Retriever
from quark_jax.safety.audit import AuditLog
from quark_jax.safety.types import Action, Rail

Critique = Sequence[tuple[str | None, str]]


class Specialist(Protocol):
    """An agent the leader can dispatch to."""

    async def run(self, request: str, critique: Critique = (), request_id: str | None = None) -> AgentResult: ...


def _request_id(request_id: str | None, prefix: str) -> str:
    return request_id or f"{prefix}-{uuid.uuid4().hex[:24]}"


def with_critique(messages: Sequence[Message], critique: Critique) -> list[Message]:
    """``messages`` followed, for each earlier attempt, by its answer and a user turn with the critique."""
    out = [dict(m) for m in messages]
    for answer, problem in critique:
        out.append({"role": "assistant", "content": answer or ""})
        out.append({"role": "user", "content": f"That answer was not accepted: {problem} Answer again."})
    return out


def _finish(request_id: str, steps: list[Step], messages: list[Message], answer: str | None, reason: str,
            **details: Any) -> AgentResult:
    steps.append(Step("stop", {"stop_reason": reason, "answer": answer, **details}))
    return AgentResult(answer, reason, steps, messages, request_id)


def stop_data(result: AgentResult) -> Mapping[str, Any]:
    """The data of a result's stop step ({} when it has none)."""
    return next((s.data for s in reversed(result.steps) if s.kind == "stop"), {})


# ---- retrieval -----------------------------------------------------------------------------------------------

class RetrievalAgent:
    """Answers from ``k`` passages of ``retriever``, citing them as ``[n]``."""

    def __init__(self, backend: ChatBackend, retriever: Retriever, k: int = 3, max_tokens: int = 96,
                 template: RAGTemplate = RAGTemplate()):
        if k < 1:
            raise ValueError(f"k={k} must be >= 1")
        self.backend, self.retriever, self.k, self.max_tokens, self.template = backend, retriever, k, max_tokens, template

    async def run(self, request: str, critique: Critique = (), request_id: str | None = None) -> AgentResult:
        request_id = _request_id(request_id, "retrieval")
        hits = self.retriever.search(request, self.k)
        sources = [Source(n, hit, hit.text) for n, hit in enumerate(hits, 1)]
        steps = [Step("tool", {"name": "retrieve", "arguments": {"query": request, "k": self.k},
                               "observation": [h.id for h in hits], "error": False})]
        messages = with_critique(self.template.messages(request, render_sources(sources)), critique)
        generation = await self.backend.chat(messages, max_tokens=self.max_tokens)
        answer = generation.message.get("content") or ""
        steps.append(Step("generate", {"content": answer, "tool_calls": [], "finish_reason": generation.finish_reason,
                                       "prompt_tokens": generation.prompt_tokens,
                                       "completion_tokens": generation.completion_tokens}))
        messages.append({"role": "assistant", "content": answer})
        cited, unknown = parse_citations(answer, {s.number: s.hit for s in sources})
        return _finish(request_id, steps, messages, answer, "answer", sources=[h.id for h in hits],
                       citations=[h.id for h in cited], unknown_citations=unknown)


# ---- reasoning -----------------------------------------------------------------------------------------------

_NUMBER = r"(-?\d+(?:\.\d+)?)"
_SYMBOLS = re.compile(_NUMBER + r"\s*([-+*/×x])\s*" + _NUMBER)
_WORDS = re.compile(_NUMBER + r"\s+(plus|minus|times|multiplied by|divided by)\s+" + _NUMBER, re.I)
_VERBS = (
    (re.compile(r"\badd\s+" + _NUMBER + r"\s+(?:and|to)\s+" + _NUMBER, re.I), "{0} + {1}"),
    (re.compile(r"\bsubtract\s+" + _NUMBER + r"\s+from\s+" + _NUMBER, re.I), "{1} - {0}"),
    (re.compile(r"\bmultiply\s+" + _NUMBER + r"\s+(?:by|and)\s+" + _NUMBER, re.I), "{0} * {1}"),
    (re.compile(r"\bdivide\s+" + _NUMBER + r"\s+by\s+" + _NUMBER, re.I), "{0} / {1}"),
    (re.compile(r"\bsum of\s+" + _NUMBER + r"\s+and\s+" + _NUMBER, re.I), "{0} + {1}"),
    (re.compile(r"\bproduct of\s+" + _NUMBER + r"\s+and\s+" + _NUMBER, re.I), "{0} * {1}"),
)
_WORD_OPS = {"plus": "+", "minus": "-", "times": "*", "multiplied by": "*", "divided by": "/"}


def arithmetic_expression(text: str) -> str | None:
    """The one binary arithmetic expression a request asks for (``"17 * 23"``), or None when it states none:
    symbols (``17*23``, ``17 x 23``), words ("17 times 23") or verbs ("add 17 and 23", "subtract 5 from 9")."""
    for pattern, form in _VERBS:
        match = pattern.search(text)
        if match:
            return form.format(*match.groups())
    match = _WORDS.search(text)
    if match:
        return f"{match.group(1)} {_WORD_OPS[match.group(2).lower()]} {match.group(3)}"
    match = _SYMBOLS.search(text)
    if match:
        op = "*" if match.group(2) in "×x" else match.group(2)
        return f"{match.group(1)} {op} {match.group(3)}"
    return None


class ReasoningAgent:
    """Arithmetic with the calculator tool (see the module docstring)."""

    def __init__(self, backend: ChatBackend, limits: Limits = Limits(max_steps=4), audit: AuditLog | None = None):
        self.backend, self.limits, self.audit = backend, limits, audit
        self.tool = calculator()

    async def run(self, request: str, critique: Critique = (), request_id: str | None = None) -> AgentResult:
        request_id = _request_id(request_id, "reasoning")
        expression = arithmetic_expression(request)
        if expression is not None and not critique:
            steps: list[Step] = []
            try:
                value = self.tool.fn(expression=expression)
            except ToolError as e:
                steps.append(Step("tool", {"name": "calculator", "arguments": {"expression": expression},
                                           "observation": f"error: {e}", "error": True}))
            else:
                steps.append(Step("tool", {"name": "calculator", "arguments": {"expression": expression},
                                           "observation": value, "error": False}))
                answer = f"{expression} = {value}"
                messages = [{"role": "user", "content": request}, {"role": "assistant", "content": answer}]
                return _finish(request_id, steps, messages, answer, "answer", expression=expression)
        agent = Agent(self.backend, [self.tool], self.limits, audit=self.audit,
                      system="Use the calculator tool for every computation, then state the result.")
        return await agent.run(with_critique([{"role": "user", "content": request}], critique), request_id)


# ---- execution, direct answers, refusals ---------------------------------------------------------------------

class ExecutionAgent:
    """The agent loop with tools (default: the Python sandbox and the calculator)."""

    def __init__(self, backend: ChatBackend, tools: Sequence[Tool] | None = None, limits: Limits = Limits(),
                 guardrails: Guardrails | None = None, audit: AuditLog | None = None, system: str | None = None):
        self.agent = Agent(backend, list(tools) if tools is not None else [python_tool(), calculator()], limits,
                           guardrails, audit, system)

    async def run(self, request: str, critique: Critique = (), request_id: str | None = None) -> AgentResult:
        return await self.agent.run(with_critique([{"role": "user", "content": request}], critique),
                                    _request_id(request_id, "execution"))


class DirectAgent:
    """One answer from the model, without tools."""

    def __init__(self, backend: ChatBackend, limits: Limits = Limits(max_steps=1), guardrails: Guardrails | None = None,
                 audit: AuditLog | None = None, system: str | None = None):
        self.agent = Agent(backend, (), limits, guardrails, audit, system)

    async def run(self, request: str, critique: Critique = (), request_id: str | None = None) -> AgentResult:
        return await self.agent.run(with_critique([{"role": "user", "content": request}], critique),
                                    _request_id(request_id, "direct"))


class RefusalAgent:
    """Refuses without calling a model: what an unsafe request gets."""

    def __init__(self, reason: str = "the request asks for harmful help"):
        self.reason = reason

    async def run(self, request: str, critique: Critique = (), request_id: str | None = None) -> AgentResult:
        answer = REFUSAL.format(reason=self.reason)
        steps = [Step("guardrail", {"where": "input", "action": Action.BLOCK.value, "rail": "router:unsafe",
                                    "reason": self.reason})]
        messages = [{"role": "user", "content": request}, {"role": "assistant", "content": answer}]
        return _finish(_request_id(request_id, "refusal"), steps, messages, answer, "blocked", rail="router:unsafe")


# ---- planning --------------------------------------------------------------------------------------------------

RunRoute = Callable[[Route, str, str], Awaitable[AgentResult]]  # (route, text, request id) -> result


class PlanningAgent:
    """Splits a request into sub-tasks, has each answered by the agent of its route, merges the answers.

    ``run_route(route, text, request_id)`` answers one sub-task (the :class:`Leader` passes its own dispatch);
    at most ``max_subtasks`` sub-tasks run (the rest are reported as not attempted)."""

    def __init__(self, router: Router, run_route: RunRoute, max_subtasks: int = 5):
        if max_subtasks < 1:
            raise ValueError(f"max_subtasks={max_subtasks} must be >= 1")
        self.router, self.run_route, self.max_subtasks = router, run_route, max_subtasks

    async def run(self, request: str, critique: Critique = (), request_id: str | None = None) -> AgentResult:
        request_id = _request_id(request_id, "planning")
        parts = split_subtasks(request)
        routes = self.router.route_many(parts)
        if len(parts) == 1 and routes[0].agent == PLANNING:  # cannot split further: answer it as one task
            routes = [dataclasses.replace(routes[0], agent="direct")]
        chosen = list(zip(parts, routes))[: self.max_subtasks]
        results = await asyncio.gather(*(self.run_route(route, text, f"{request_id}.{n}")
                                          for n, (text, route) in enumerate(chosen, 1)))
        steps = [Step("subtask", {"text": text, "intent": route.intent, "agent": route.agent,
                                  "stop_reason": result.stop_reason, "answer": result.answer,
                                  "request_id": result.request_id})
                 for (text, route), result in zip(chosen, results)]
        lines = [f"{n}. {result.answer if result.answer is not None else '(no answer: ' + result.stop_reason + ')'}"
                 for n, result in enumerate(results, 1)]
        lines += [f"{n}. (not attempted: at most {self.max_subtasks} sub-tasks)"
                  for n in range(len(chosen) + 1, len(parts) + 1)]
        answer = "\n".join(lines)
        reasons = [r.stop_reason for r in results if r.stop_reason != "answer"]
        messages = [{"role": "user", "content": request}, {"role": "assistant", "content": answer}]
        return _finish(request_id, steps, messages, answer, reasons[0] if reasons else "answer", subtasks=len(parts))


# ---- interpretation -------------------------------------------------------------------------------------------

FORMATS: dict[str, tuple[re.Pattern, str]] = {
    "arithmetic": (re.compile(r"-?\d"), "it states no number."),
    "code": (re.compile(r"```|\bdef |\bclass |\bimport |\breturn\b|\bprint\("), "it contains no code."),
}


class InterpretationAgent:
    """Checks another agent's answer against the request and re-invokes it with a critique (module docstring).

    ``intent`` selects the format check (:data:`FORMATS`) and, for ``arithmetic``, the check of the stated
    number against the calculator; a retrieval answer (its stop step lists ``sources``) must cite one of them;
    ``rails`` check the answer as ``"output"`` (block: a problem; redact: the redacted text is kept; warn:
    noted). ``max_rounds`` is the number of re-invocations after the first answer."""

    def __init__(self, agent: Specialist, intent: str | None = None, rails: Sequence[Rail] = (), max_rounds: int = 2,
                 max_chars: int = 4000):
        if max_rounds < 0:
            raise ValueError(f"max_rounds={max_rounds} must be >= 0")
        self.agent, self.intent, self.rails, self.max_rounds, self.max_chars = agent, intent, tuple(rails), max_rounds, max_chars

    def problems(self, request: str, result: AgentResult) -> tuple[list[str], str | None, list[dict]]:
        """``(problems, answer as it may pass, rail verdicts)`` of one result; no problems = accepted."""
        answer, verdicts = result.answer, []
        if result.stop_reason == "blocked":
            return [], answer, verdicts  # a refusal is final, not something to argue with
        if not answer or not answer.strip():
            return [f"there was no answer (the run stopped: {result.stop_reason})."], answer, verdicts
        problems = []
        if len(answer) > self.max_chars:
            problems.append(f"it is {len(answer)} characters long; keep it under {self.max_chars}.")
        if self.intent in FORMATS and not FORMATS[self.intent][0].search(answer):
            problems.append(FORMATS[self.intent][1])
        if self.intent == "arithmetic":
            expression = arithmetic_expression(request)
            if expression is not None:
                value = calculator_lib.format_number(calculator_lib.evaluate(expression))
                if not re.search(r"(?<![\d.])" + re.escape(value) + r"(?![\d.])", answer):
                    problems.append(f"the result of {expression} is not stated correctly (check it with the calculator).")
        data = stop_data(result)
        if data.get("sources"):
            if not data.get("citations"):
                problems.append(f"it cites none of the {len(data['sources'])} sources; cite them as [n].")
            if data.get("unknown_citations"):
                problems.append(f"it cites source number(s) {data['unknown_citations']} that were not shown.")
        for rail in self.rails:
            verdict = rail.check(answer, "output")
            verdicts.append({"rail": verdict.rail, "action": verdict.action.value, "reason": verdict.reason})
            if verdict.action is Action.BLOCK:
                problems.append(f"the {verdict.rail} guardrail blocks it: {verdict.reason}.")
            elif verdict.action is Action.REDACT:
                answer = verdict.text
        return problems, answer, verdicts

    async def run(self, request: str, critique: Critique = (), request_id: str | None = None) -> AgentResult:
        request_id = _request_id(request_id, "interpretation")
        history = list(critique)
        steps: list[Step] = []
        for round_number in range(self.max_rounds + 1):
            result = await self.agent.run(request, history, f"{request_id}.r{round_number}")
            problems, answer, verdicts = self.problems(request, result)
            steps.extend(result.steps)
            steps.append(Step("critique", {"round": round_number, "accepted": not problems, "problems": problems,
                                           "rails": verdicts}))
            if not problems:
                return AgentResult(answer, result.stop_reason, steps, result.messages, request_id)
            history.append((result.answer, " ".join(problems)))
        blocked = [v for v in verdicts if v["action"] == Action.BLOCK.value]
        if blocked:  # never hand out what a rail blocks, however many rounds it took
            refusal = REFUSAL.format(reason=blocked[0]["reason"])
            steps.append(Step("stop", {"stop_reason": "blocked", "answer": refusal, "rail": blocked[0]["rail"]}))
            return AgentResult(refusal, "blocked", steps, result.messages, request_id)
        steps.append(Step("stop", {"stop_reason": result.stop_reason, "answer": answer, "unresolved": problems}))
        return AgentResult(answer, result.stop_reason, steps, result.messages, request_id)


# ---- the leader ----------------------------------------------------------------------------------------------

@dataclasses.dataclass
class LeaderResult:
    """A request's route and the result of the agent that answered it."""

    route: Route
    result: AgentResult


class Leader:
    """Routes a request and dispatches it to the specialist of its route, checked by interpretation.

    ``agents`` maps agent names (:data:`~quark_jax.agents.router.INTENT_AGENTS` values) to specialists; the
    ``planning`` agent is built here on the same dispatch, and ``refuse`` defaults to a
    :class:`RefusalAgent`. ``rails`` and ``max_rounds`` configure the :class:`InterpretationAgent` around
    every non-planning specialist (``max_rounds=0``: check once, never re-invoke)."""

    def __init__(self, router: Router, agents: Mapping[str, Specialist], rails: Sequence[Rail] = (),
                 max_rounds: int = 2, audit: AuditLog | None = None, max_subtasks: int = 5):
        self.router, self.rails, self.max_rounds, self.audit = router, tuple(rails), max_rounds, audit
        self.agents: dict[str, Specialist] = {"refuse": RefusalAgent(), **agents}
        self.agents[PLANNING] = PlanningAgent(router, self.dispatch, max_subtasks)
        wanted = sorted(set(router.agents.values()) - set(self.agents))
        if wanted:
            raise ValueError(f"the router routes to agent(s) {wanted} that the leader was not given")

    async def dispatch(self, route: Route, request: str, request_id: str | None = None) -> AgentResult:
        """The answer of the route's agent (through interpretation unless it is the planner or a refusal)."""
        request_id = _request_id(request_id, "leader")
        if self.audit is not None:
            self.audit.append(request_id, "route", model=None, **route.as_dict())
        agent = self.agents[route.agent]
        if route.agent not in (PLANNING, "refuse"):
            agent = InterpretationAgent(agent, route.intent, self.rails, self.max_rounds)
        result = await agent.run(request, (), request_id)
        result.steps.insert(0, Step("route", route.as_dict()))
        return result

    async def handle(self, request: str, request_id: str | None = None) -> LeaderResult:
        """Routes ``request`` and answers it."""
        route = self.router.route(request)
        return LeaderResult(route, await self.dispatch(route, request, request_id))

    def handle_sync(self, request: str, request_id: str | None = None) -> LeaderResult:
        """:meth:`handle` from synchronous code."""
        return asyncio.run(self.handle(request, request_id))


async def dispatch(router: Router, agents: Mapping[str, Specialist], request: str, **options: Any) -> LeaderResult:
    """One request through a :class:`Leader` built on ``router`` and ``agents`` (``options``: its settings)."""
    return await Leader(router, agents, **options).handle(request)
