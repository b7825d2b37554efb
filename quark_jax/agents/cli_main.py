"""``quark agent``: a terminal chat with a tool-using agent, showing every step.

    quark agent --model_dir RUN [--tools calculator,python] [--prompt TEXT]
    quark agent --server http://127.0.0.1:8000 [--model NAME] --tools search_corpus --corpus DIR
    quark agent --model_dir RUN --tools retrieve,kg_query --index DIR --kg stdlib_kg.sqlite --audit_log audit.jsonl

With ``--prompt`` it answers once and exits; otherwise it reads one user turn per line from standard input (the
conversation goes on until end of input or ``exit``). Each step is printed as it happens: ``call NAME ARGS``,
``  -> OBSERVATION``, ``answer: TEXT``, then one line with the stop reason, steps, tokens and seconds.
Mistakes raise :class:`AgentUsageError` (one line naming the flag; ``quark`` exits 2).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from quark_jax.agents.types import Step

SHOWN_CHARS = 300  # of an observation or a call's arguments on the terminal


class AgentUsageError(ValueError):
    """A mistake on the ``quark agent`` command line."""


def add_subparser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Registers ``agent`` on the ``quark`` parser's sub-parsers."""
    from quark_jax.agents.tools import TOOL_NAMES

    agent = sub.add_parser("agent", parents=[common], help="a terminal chat with a tool-using agent",
                           description="A terminal chat with a tool-using agent, showing every step (the model in "
                                       "this process, or a `quark serve` server).")
    where = agent.add_mutually_exclusive_group(required=True)
    where.add_argument("--model_dir", help="run directory: the model runs in this process")
    where.add_argument("--server", help="a `quark serve` URL (http://host:port): the model runs there")
    agent.add_argument("--model", default=None, help="--server: the model id (default: the one it serves)")
    agent.add_argument("--step", type=int, default=None, help="--model_dir: checkpoint step (default: newest)")
    agent.add_argument("--tools", default="calculator",
                       help=f"comma-separated, from {', '.join(TOOL_NAMES)} (default calculator; '' for none)")
    agent.add_argument("--corpus", default=None, help="search_corpus: the folder of text files to search")
    agent.add_argument("--index", default=None, help="retrieve: a `quark index build` directory")
    agent.add_argument("--embedder_dir", default=None, help="retrieve: the run whose embedder built a dense index")
    agent.add_argument("--kg", default=None, help="kg_query: a `quark kg build` SQLite file")
    agent.add_argument("--audit_log", default=None, help="append every step to this JSONL audit log")
    agent.add_argument("--guardrails", action="store_true",
                       help="check every user turn and the answer, fence tool output (quark_jax.safety)")
    agent.add_argument("--guardrails_config", default=None, help="--guardrails: a gin file of GuardrailsConfig bindings")
    agent.add_argument("--system", default=None, help="a system message")
    agent.add_argument("--prompt", default=None, help="answer this once and exit (default: read turns from stdin)")
    agent.add_argument("--max_steps", type=int, default=8, help="generations per answer")
    agent.add_argument("--max_tokens", type=int, default=1024, help="generated tokens per answer")
    agent.add_argument("--max_new_tokens", type=int, default=128, help="tokens per generation")
    agent.add_argument("--timeout", type=float, default=120.0, help="seconds per answer")
    agent.add_argument("--temperature", type=float, default=0.0)
    agent.add_argument("--seed", type=int, default=0)
    agent.add_argument("--max_seq_len", type=int, default=None,
                       help="--model_dir: context tokens (default: the trained context, at most 2048)")
    agent.add_argument("--json", action="store_true", help="also print each run's result as one JSON line")
    agent.set_defaults(quantize=None)  # what the CLI's model loader reads


def check_arguments(args: argparse.Namespace) -> list[str]:
    """The tool names, after checking every flag that needs no model; :class:`AgentUsageError` otherwise."""
    from quark_jax.agents.tools import TOOL_NAMES

    names = [n.strip() for n in args.tools.split(",") if n.strip()]
    for name in names:
        if name not in TOOL_NAMES:
            raise AgentUsageError(f"--tools: unknown tool {name!r}; choose from {', '.join(TOOL_NAMES)}")
    needs = {"search_corpus": ("corpus", "--corpus DIR"), "retrieve": ("index", "--index DIR"),
             "kg_query": ("kg", "--kg DB")}
    for name, (attribute, flag) in needs.items():
        if name in names and getattr(args, attribute) is None:
            raise AgentUsageError(f"--tools {name} needs {flag}")
    if args.corpus is not None and not os.path.isdir(args.corpus):
        raise AgentUsageError(f"--corpus {args.corpus}: not a directory")
    if args.kg is not None and not os.path.isfile(args.kg):
        raise AgentUsageError(f"--kg {args.kg}: no such file; build one with `quark kg build --db {args.kg}`")
    if args.index is not None and not os.path.isdir(args.index):
        raise AgentUsageError(f"--index {args.index}: not a directory; build one with `quark index build`")
    for name in ("max_steps", "max_tokens", "max_new_tokens"):
        if getattr(args, name) < 1:
            raise AgentUsageError(f"--{name}={getattr(args, name)}: must be >= 1")
    if args.max_seq_len is not None and args.max_seq_len < 2:
        raise AgentUsageError(f"--max_seq_len={args.max_seq_len}: must be >= 2")
    if not args.timeout > 0:
        raise AgentUsageError(f"--timeout={args.timeout}: must be > 0")
    if not 0.0 <= args.temperature <= 2.0:
        raise AgentUsageError(f"--temperature={args.temperature}: must be in [0, 2]")
    if args.model is not None and args.server is None:
        raise AgentUsageError("--model names a served model: use it with --server URL")
    if args.server is not None and not args.server.startswith(("http://", "https://")):
        raise AgentUsageError(f"--server {args.server}: must be an http:// or https:// URL, e.g. http://127.0.0.1:8000")
    if args.prompt is not None and not args.prompt.strip():
        raise AgentUsageError("--prompt '' is empty; ask something, e.g. --prompt 'What is 17 * 23?'")
    return names


def _guardrails(args: argparse.Namespace) -> Any:
    """The guardrails ``--guardrails`` asks for (``--guardrails_config`` a gin file), else None."""
    if not args.guardrails:
        if args.guardrails_config:
            raise AgentUsageError("--guardrails_config needs --guardrails")
        return None
    from quark_jax.safety.guardrails import from_gin_file

    try:
        return from_gin_file(args.guardrails_config)
    except ValueError as e:
        raise AgentUsageError(f"--guardrails_config {e}") from None


def run(args: argparse.Namespace, load_model: Callable[[argparse.Namespace], Any], stdin: TextIO | None = None,
        stdout: TextIO | None = None) -> int:
    """Runs ``quark agent``; ``load_model(args)`` loads ``--model_dir`` (the CLI's loader, errors as usage
    errors); turns come from ``stdin`` and steps go to ``stdout`` (default: the process's)."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    from quark_jax.agents.loop import Agent, Limits
    from quark_jax.agents.tools import default_tools, open_index
    from quark_jax.safety.audit import AuditLog

    names = check_arguments(args)
    try:
        index = open_index(args.index, args.embedder_dir) if "retrieve" in names else None
        tools = default_tools(names, corpus=args.corpus, index=index, kg=args.kg)
    except ValueError as e:
        raise AgentUsageError(str(e)) from None
    backend = _backend(args, load_model)
    try:
        audit = AuditLog(args.audit_log) if args.audit_log else None
    except OSError as e:
        raise AgentUsageError(f"--audit_log {args.audit_log}: cannot write it ({e.strerror})") from None
    guardrails = _guardrails(args)
    printer = StepPrinter(stdout)
    agent = Agent(backend, tools, Limits(args.max_steps, args.max_tokens, args.timeout, args.max_new_tokens),
                  guardrails=guardrails, audit=audit, system=args.system, temperature=args.temperature,
                  seed=args.seed, on_step=printer,
                  observation_filter=guardrails.check_untrusted if guardrails is not None else None)
    try:
        if args.prompt is not None:
            try:
                _answer(agent, [{"role": "user", "content": args.prompt}], args.json, stdout)
            except ValueError as e:  # the request was refused (e.g. a chat-template marker in the prompt)
                raise AgentUsageError(f"--prompt: {e}") from None
            return 0
        messages: list[dict[str, Any]] = []
        while True:
            if stdin.isatty():
                print("you> ", end="", file=stdout, flush=True)
            line = stdin.readline()
            if not line or line.strip() in ("exit", "quit"):
                return 0
            if not line.strip():
                continue
            try:
                messages = _answer(agent, messages + [{"role": "user", "content": line.rstrip("\n")}], args.json,
                                   stdout)
            except ValueError as e:  # this turn was refused: say so, and go on with the conversation as it was
                print(f"error: {e}", file=stdout, flush=True)
    finally:
        close = getattr(backend, "close", None)
        if close is not None:
            close()


def _backend(args: argparse.Namespace, load_model: Callable[[argparse.Namespace], Any]) -> Any:
    if args.server is not None:
        import asyncio

        import openai

        from quark_jax.agents.backends import OpenAIBackend

        backend = OpenAIBackend(args.server, args.model)
        try:
            asyncio.run(backend.connect())
        except (openai.APIError, ValueError) as e:
            raise AgentUsageError(f"--server {args.server}: {getattr(e, 'message', e)}") from None
        return backend
    from quark_jax.agents.backends import EngineBackend

    loaded = load_model(args)
    return EngineBackend.from_model(loaded, f"{os.path.normpath(args.model_dir)}@{loaded.step}", max_slots=1,
                                    max_seq_len=args.max_seq_len)


def _answer(agent: Any, messages: list[dict[str, Any]], as_json: bool, stdout: TextIO) -> list[dict[str, Any]]:
    started = time.monotonic()
    result = agent.run_sync(messages)
    tokens = next((s.data.get("tokens") for s in result.steps if s.kind == "stop"), 0)
    generations = sum(s.kind == "generate" for s in result.steps)
    print(f"({result.stop_reason}: {generations} generation{'' if generations == 1 else 's'}, {tokens} tokens, "
          f"{time.monotonic() - started:.1f} s)", file=stdout, flush=True)
    if as_json:
        print(json.dumps({"request_id": result.request_id, "answer": result.answer, "stop_reason": result.stop_reason,
                          "steps": [{"kind": s.kind, **s.data} for s in result.steps]}, default=str), file=stdout)
    return result.messages


def _short(text: Any, limit: int = SHOWN_CHARS) -> str:
    text = str(text).replace("\n", "\\n")
    return text if len(text) <= limit else text[:limit] + f"… ({len(text)} chars)"


class StepPrinter:
    """Prints the steps of a run concisely as they happen: calls, observations, the answer, guardrail
    decisions."""

    def __init__(self, stdout: TextIO):
        self.stdout = stdout

    def __call__(self, step: Step) -> None:
        data = step.data
        if step.kind == "generate":
            for call in data.get("tool_calls") or []:
                function = call.get("function") or {}
                self._print(f"call {function.get('name')} {_short(function.get('arguments'))}")
        elif step.kind == "tool":
            self._print(f"  -> {_short(data.get('observation'))}")
        elif step.kind == "guardrail" and data.get("action") != "allow":
            self._print(f"guardrail {data.get('rail')}: {data.get('action')} ({data.get('reason')})")
        elif step.kind == "stop":
            if data.get("answer") is not None:
                self._print(f"answer: {data['answer']}")
            elif data.get("detail"):
                self._print(f"stopped: {data['detail']}")
            elif data.get("stop_reason") == "repeated_call":
                self._print(f"stopped: {data.get('tool')} called again with the same arguments")

    def _print(self, line: str) -> None:
        print(line, file=self.stdout, flush=True)
