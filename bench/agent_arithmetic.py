"""Arithmetic with and without the calculator: a tiny model fine-tuned on tool-call traces, run by the agent loop.

    python bench/agent_arithmetic.py [--init_from RUN | --pretrain_steps 900] [--sft_steps 500] [--questions 200]

1. A base model: ``--init_from`` a run directory, else the tiny model pre-trained here for ``--pretrain_steps``
   (configs/runs/tiny_base.gin).
2. The traces (:mod:`quark_jax.agents.traces`): every train-split problem of the arithmetic set (sums and
   differences of 0..99, products of 0..12) and of the harder set (three-digit sums and differences, two-digit
   products) as a calculator trace (the system turn lists the real ``calculator`` tool of
   :mod:`quark_jax.agents.tools`, the model calls it, the observation comes back, the model answers) and as a
   plain question and answer; fine-tuned with configs/runs/sft.gin for ``--sft_steps``.
3. ``--questions`` held-out problems (validation split: never trained on), answered greedily by
   :class:`quark_jax.agents.loop.Agent` on one in-process continuous-batching engine, all sessions at once:
   once offering the calculator, once offering no tool.

Prints ONE JSON line: exact match (the last ``= N`` of the answer equals the result) per set and condition,
how often the calculator was called and with the question's own expression, stop reasons, sizes and timings.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import chat_runs  # noqa: E402  (bench/chat_runs.py, beside this script)

TASK = "tool_traces"
SEQUENCE = 256
_RESULT = re.compile(r"=\s*(-?\d+)")


def final_number(text: str | None) -> int | None:
    """The last ``= N`` of an answer (``"37 + 48 = 85."`` -> 85), or None."""
    found = _RESULT.findall(text or "")
    return int(found[-1]) if found else None


async def _answer_all(agent, records):
    return await asyncio.gather(*(agent.run(r["prompt"], request_id=f"q{i}") for i, r in enumerate(records)))


def measure(backend, records, with_calculator: bool) -> dict:
    """Exact match per set, calls made, stop reasons: every record answered by one agent, all concurrently."""
    from quark_jax.agents import tools, traces
    from quark_jax.agents.loop import Agent, Limits

    agent = Agent(backend, [tools.calculator()] if with_calculator else [],
                  Limits(max_steps=3, max_tokens=256, timeout_s=600.0, max_new_tokens=48))
    started = time.perf_counter()
    results = asyncio.run(_answer_all(agent, records))
    seconds = time.perf_counter() - started
    by_set, stops, called, own_expression = collections.defaultdict(list), collections.Counter(), 0, 0
    for record, result in zip(records, results):
        by_set[record["source"]].append(final_number(result.answer) == traces.answer(record))
        stops[result.stop_reason] += 1
        calls = [s.data for s in result.steps if s.kind == "tool"]
        called += bool(calls)
        own_expression += any(json.loads(c.get("arguments") or "{}").get("expression") == traces.expression(record)
                              for c in calls if isinstance(c.get("arguments"), str))
    return {"exact_match": {k: round(sum(v) / len(v), 3) for k, v in sorted(by_set.items())},
            "exact_match_all": round(sum(sum(v) for v in by_set.values()) / len(records), 3),
            "called_calculator": round(called / len(records), 3),
            "called_with_question_expression": round(own_expression / len(records), 3),
            "stop_reasons": dict(stops), "seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--init_from", default=None, help="a pre-trained run (default: pre-train one here)")
    parser.add_argument("--pretrain_steps", type=int, default=900)
    parser.add_argument("--sft_steps", type=int, default=500)
    parser.add_argument("--sft_dir", default=None, help="reuse this fine-tuned run (skips steps 1-2)")
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--work_dir", default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import quark_jax as qj
    from quark_jax.agents import tools, traces
    from quark_jax.agents.backends import EngineBackend
    from quark_jax.data import chat_tasks

    started = time.perf_counter()
    work = args.work_dir or tempfile.mkdtemp(prefix="agent_arith_")
    timings = {}
    sft_dir = args.sft_dir
    if sft_dir is None:
        paths = traces.build(os.path.join(work, "traces"), tools.calculator().spec(), seed=args.seed)
        chat_tasks.register_chat_task(TASK, paths)
        sft_dir = chat_runs.pretrain_then_sft(work, args.init_from, args.pretrain_steps, args.sft_steps, TASK,
                                              SEQUENCE, timings)

    held_out = traces.problems(seed=args.seed)["validation"]
    random.Random(args.seed).shuffle(held_out)
    held_out = held_out[: args.questions]
    backend = EngineBackend.from_model(qj.load(sft_dir), f"{sft_dir}", max_slots=32, max_seq_len=512)
    try:
        with_calculator = measure(backend, held_out, with_calculator=True)
        without = measure(backend, held_out, with_calculator=False)
    finally:
        backend.close()
    print(json.dumps({
        "benchmark": "agent_arithmetic",
        "base": None if args.sft_dir else args.init_from or f"tiny_base {args.pretrain_steps} steps",
        "sft_steps": args.sft_steps if args.sft_dir is None else None,
        "sft_dir": sft_dir,
        "held_out_questions": len(held_out),
        "held_out_by_set": dict(collections.Counter(r["source"] for r in held_out)),
        "with_calculator": with_calculator,
        "without_calculator": without,
        **timings,
        "total_s": round(time.perf_counter() - started, 1),
    }))


if __name__ == "__main__":
    main()
