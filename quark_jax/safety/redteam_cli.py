"""``quark redteam``: the suite against a run or a server, guardrails off, on or both; a JSON and markdown report.

    quark redteam --model_dir RUN                       # in-process, guardrails off and on
    quark redteam --server http://127.0.0.1:8000 --guardrails on --output /tmp/redteam.json

Exit status: 0 when the gate passes (or only guardrails off ran), 1 when it fails, 2 on a usage error (one line).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from quark_jax.safety import redteam_suite


class RedteamUsageError(ValueError):
    """A command-line mistake, printed by ``quark`` as one line with exit status 2."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model_dir", default=None, help="run directory answered in-process (or give --server)")
    parser.add_argument("--server", default=None, help="base URL of a quark serve / OpenAI-compatible server")
    parser.add_argument("--model", default=None, help="model id on --server (default: the first it lists)")
    parser.add_argument("--guardrails", choices=("on", "off", "both"), default="both")
    parser.add_argument("--guardrails_config", default=None, help="gin file binding quark_jax.safety.GuardrailsConfig")
    parser.add_argument("--suite", default=redteam_suite.DEFAULT_OUTPUT, help="suite JSONL (default: the shipped v1)")
    parser.add_argument("--output", default=None, help="report JSON path (markdown next to it; default: print only)")
    parser.add_argument("--max_tokens", type=int, default=16, help="new tokens per reply")
    parser.add_argument("--batch_size", type=int, default=64, help="prompts per compiled call (in-process)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N cases (a quick look)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")


def guardrails_from(path: str | None):
    """The Guardrails of ``--guardrails_config`` (None: every rail on)."""
    from quark_jax.safety.guardrails import from_gin_file

    try:
        return from_gin_file(path)
    except ValueError as e:
        raise RedteamUsageError(f"--guardrails_config {e}") from None


def run(args: argparse.Namespace, load_model: Callable[[argparse.Namespace], Any]) -> int:
    """Checks the flags, runs the suite, prints the markdown report; ``load_model(args)`` loads ``--model_dir``."""
    from quark_jax.safety import redteam

    if not args.model_dir and not args.server:
        raise RedteamUsageError("give --model_dir RUN (in-process) or --server URL")
    for name in ("max_tokens", "batch_size", "limit"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise RedteamUsageError(f"--{name}={value}: must be >= 1")
    if args.server and not args.server.startswith(("http://", "https://")):
        raise RedteamUsageError(f"--server {args.server}: must be an http:// or https:// URL")
    try:
        cases = redteam.load_suite(args.suite)
    except redteam.SuiteError as e:
        raise RedteamUsageError(str(e)) from None
    cases = cases[: args.limit] if args.limit else cases
    guardrails = guardrails_from(args.guardrails_config)
    if args.server:
        try:
            target = redteam.ServerTarget(args.server, args.model)
        except Exception as e:  # noqa: BLE001 -- connection and API errors, reported as one line
            raise RedteamUsageError(f"--server {args.server}: {type(e).__name__}: {e}") from None
    else:
        model = load_model(args)
        name = f"{os.path.basename(os.path.normpath(args.model_dir))}@step{model.step}"
        target = redteam.LoadedModelTarget(model, name, args.batch_size)
    modes = {"on": ("on",), "off": ("off",), "both": ("off", "on")}[args.guardrails]
    report = redteam.redteam(cases, target, modes, guardrails, args.max_tokens, args.suite)
    text = redteam.write_report(report, args.output) if args.output else redteam.markdown(report)
    sys.stdout.write(text)
    return 0 if report.get("gate", {"passed": True})["passed"] else 1
