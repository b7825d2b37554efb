"""``quark runs list|show|diff|register|promote|verify`` and ``quark improve``.

    quark runs list     [--registry FILE]                 one line per registered run: kind, stages, last event
    quark runs show     RUN [--registry FILE]             lineage.json and the run's ledger events (JSON)
    quark runs diff     RUN_A RUN_B                       gin bindings and lineage that differ
    quark runs register RUN [--registry FILE]             enter a run into the ledger
    quark runs promote  RUN --stage production --baseline FILE [--tasks T] [--limit N]
    quark runs verify   [--registry FILE]                 check the ledger's hash chain; prints the head hash
    quark improve --feedback FILE --base RUN --out DIR --baseline FILE [--stage S] [--steps N] [--gin.X=Y]

The ledger is ``--registry``, else ``$QUARK_REGISTRY``, else ``~/.cache/quark_jax/registry.jsonl``. A refused
promotion, a tampered ledger or a bad argument is one line on stderr and exit status 2
(:class:`RegistryUsageError`, which the ``quark`` command prints).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any


class RegistryUsageError(Exception):
    """A refused promotion, a tampered ledger, a bad run directory or argument: one line, exit status 2."""


def add_subparsers(sub: Any, common: argparse.ArgumentParser, parser_class: type) -> None:
    """Registers ``runs`` (with its sub-commands) and ``improve`` on the ``quark`` parser's sub-parsers."""
    registry = argparse.ArgumentParser(add_help=False)
    registry.add_argument("--registry", default=None,
                          help="the ledger file (default $QUARK_REGISTRY or ~/.cache/quark_jax/registry.jsonl)")
    runs = sub.add_parser("runs", help="the model registry: lineage, comparisons, gated promotion",
                          description=__doc__.split("\n\n")[0])
    runs_sub = runs.add_subparsers(dest="runs_command", required=True, parser_class=parser_class)
    runs_sub.add_parser("list", parents=[common, registry], help="registered runs")
    show = runs_sub.add_parser("show", parents=[common, registry], help="a run's lineage and ledger events")
    show.add_argument("run")
    diff = runs_sub.add_parser("diff", parents=[common], help="config bindings and lineage differences")
    diff.add_argument("run_a")
    diff.add_argument("run_b")
    diff.add_argument("--json", action="store_true", help="one JSON object instead of lines")
    reg = runs_sub.add_parser("register", parents=[common, registry], help="enter a run into the ledger")
    reg.add_argument("run")
    runs_sub.add_parser("verify", parents=[common, registry], help="check the ledger's hash chain")
    gate = argparse.ArgumentParser(add_help=False)
    gate.add_argument("--stage", default="production", help="the stage to promote to (default production)")
    gate.add_argument("--baseline", required=True, help="regression baseline (evals/baselines/*.json)")
    gate.add_argument("--tasks", default=None, help="tasks to evaluate (default: the baseline's)")
    gate.add_argument("--limit", type=int, default=None, help="first N examples of each task")
    gate.add_argument("--seed", type=int, default=0)
    gate.add_argument("--batch_size", type=int, default=16)
    promote = runs_sub.add_parser("promote", parents=[common, registry, gate],
                                  help="promote a run to a stage, only past the regression gate")
    promote.add_argument("run")
    improve = sub.add_parser("improve", parents=[common, registry, gate],
                             help="feedback -> preference pairs -> DPO run -> regression gate -> promote")
    improve.add_argument("--feedback", required=True, help="the server's LOG_DIR/feedback.jsonl")
    improve.add_argument("--base", required=True, help="the run to improve (policy start and DPO reference)")
    improve.add_argument("--out", required=True, help="directory for pairs/ and dpo/")
    improve.add_argument("--steps", type=int, default=20, help="DPO steps")
    improve.add_argument("--validation_fraction", type=float, default=0.1)


def _ledger(args: argparse.Namespace):
    from quark_jax.registry.ledger import Ledger

    return Ledger(args.registry)


def _stages(events: Sequence[dict]) -> list[str]:
    return sorted({e["stage"] for e in events if e["event"] == "promoted"})


def _list(args: argparse.Namespace) -> int:
    ledger = _ledger(args)
    grouped = ledger.runs()
    current = {stage: ledger.current(stage) for stage in {e.get("stage") for es in grouped.values() for e in es
                                                          if e["event"] == "promoted"}}
    for run, events in grouped.items():
        registered = [e for e in events if e["event"] == "registered"]
        kind = registered[-1].get("kind") if registered else "?"
        serving = sorted(s for s, e in current.items() if e and e["run"] == run)
        last = events[-1]
        print(f"{run}  kind={kind}  serving={','.join(serving) or '-'}  last={last['event']}"
              f"{'(' + last['stage'] + ')' if last.get('stage') else ''}  events={len(events)}")
    if not grouped:
        print(f"no runs registered in {ledger.path}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from quark_jax import lineage
    from quark_jax.registry import promote

    run = promote.run_dir_of(args.run)
    events = _ledger(args).events_of(run)
    print(json.dumps({"run": run, "lineage": lineage.read_lineage(run), "ledger": events}, indent=2))
    return 0


def _diff(args: argparse.Namespace) -> int:
    from quark_jax.registry import diff, promote

    a, b = promote.run_dir_of(args.run_a), promote.run_dir_of(args.run_b)
    found = diff.diff_runs(a, b)
    print(json.dumps(found, indent=2) if args.json else diff.format_diff(found, a, b), end="\n" if args.json else "")
    return 0


def _promote(args: argparse.Namespace) -> int:
    from quark_jax.registry import promote

    event = promote.promote(args.run, args.stage, _ledger(args), args.baseline, args.tasks, args.limit, args.seed,
                            args.batch_size)
    print(f"promoted {event['run']} (step {event['step']}) to {event['stage']}; ledger head {event['hash']}")
    return 0


def _improve(args: argparse.Namespace, bindings: Sequence[str]) -> int:
    from quark_jax.registry import improve

    done = improve.improve(args.feedback, args.base, args.out, args.baseline, _ledger(args), args.stage, args.steps,
                           bindings, args.tasks, args.limit, args.validation_fraction, args.seed, args.batch_size)
    event = done["promoted"]
    print(f"promoted {event['run']} (step {event['step']}) to {event['stage']}; ledger head {event['hash']}")
    return 0


def run(args: argparse.Namespace, bindings: Sequence[str] = ()) -> int:
    """Runs ``quark runs ...`` or ``quark improve``; every expected failure becomes a :class:`RegistryUsageError`."""
    from quark_jax.registry.ledger import LedgerTamperedError
    from quark_jax.registry.promote import PromotionRefused
    from quark_jax.run_paths import RunDirError

    if args.command == "runs" and bindings:
        raise RegistryUsageError("--gin.* flags apply to `quark improve` only (the DPO run)")
    commands = {"list": _list, "show": _show, "diff": _diff, "promote": _promote,
                "register": lambda a: _register(a), "verify": _verify}
    try:
        if args.command == "improve":
            return _improve(args, bindings)
        return commands[args.runs_command](args)
    except (PromotionRefused, LedgerTamperedError, RunDirError, ValueError) as e:
        raise RegistryUsageError(str(e).splitlines()[0] if str(e) else type(e).__name__) from None


def _register(args: argparse.Namespace) -> int:
    from quark_jax.registry import promote

    event = promote.register(args.run, _ledger(args))
    print(f"registered {event['run']} as {event['run_id']}" if event else f"{args.run} is registered already")
    return 0


def _verify(args: argparse.Namespace) -> int:
    ledger = _ledger(args)
    head = ledger.verify()
    print(f"{ledger.path}: {len(ledger.records())} events, chain intact; head {head}")
    return 0
