"""Speculative decoding against plain decoding of the same target, one JSON line per (batch, γ) and a summary.

    python bench/speculative.py --target /tmp/cmp/tiny_900 --draft /tmp/spec/draft

The draft is a student distilled from the target (``configs/runs/distill.gin`` with ``TEACHER_DIR`` = the
target). Prompts are the first lines of functions of the standard-library corpus' validation split; greedy
decoding of ``--max_new_tokens`` tokens (the end-of-sequence id still ends a row, as in real use).
Per line: c (the draft's time per token over the target's, both decoding plainly), α (accepted drafts / drafts judged), tokens per target call measured and predicted by
(1 − α^(γ+1)) / (1 − α), and the speed-up = plain time / speculative time, both compiled and warm, timed
interleaved in this one process (the fastest of ``--repeats``: the machine is shared, and the minimum is the least disturbed), and the speed-up the cost model predicts,
tokens per call / (γ·c + 1).
"""

from __future__ import annotations

import argparse
import json
import time

import quark_jax as qj
from quark_jax.inference.generate import Completion, Request
from quark_jax.inference.speculative import acceptance_rate, expected_tokens_per_call

PROMPTS = [
    "def fib(n):\n", "import os\n\n\ndef ", "class Queue:\n    def __init__(self", "    for i in range(",
    "def read_file(path):\n    with open(", "    if not isinstance(", "def __repr__(self):\n    return ",
    "    raise ValueError(",
]


def speculation_figures(completions: list[Completion], gamma: int) -> dict:
    """α (accepted drafts / drafts judged) and tokens per target call, measured over speculative completions and
    predicted from α by (1 − α^(γ+1)) / (1 − α); the end-of-sequence token counts as emitted."""
    accepted = sum(c.speculation["accepted"] for c in completions)
    examined = sum(c.speculation["examined"] for c in completions)
    calls = sum(c.speculation["target_calls"] for c in completions)
    tokens = sum(len(c.tokens) + (c.finish_reason == "eos") for c in completions)
    alpha = acceptance_rate(accepted, examined)
    return {"alpha": round(alpha, 3), "tokens_per_target_call": round(tokens / calls, 3),
            "predicted_tokens_per_call": round(expected_tokens_per_call(alpha, gamma), 3),
            "accepted": accepted, "examined": examined, "target_calls": calls, "tokens": tokens}


def _timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True)
    parser.add_argument("--draft", required=True)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--gammas", default="2,3,4,5,6,8")
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    target = qj.load(args.target)
    summary = json.load(open(f"{args.target}/summary.json")) if args.target else {}
    draft_summary = json.load(open(f"{args.draft}/summary.json"))
    gen = target.generator
    results = []
    for batch in [int(b) for b in args.batches.split(",")]:
        prompts = [gen._encode(PROMPTS[i % len(PROMPTS)], start=True) for i in range(batch)]
        requests = [Request(p, args.max_new_tokens) for p in prompts]
        plain_fn = lambda: gen.generate_requests(requests)  # noqa: E731
        plain_fn()  # compile
        draft_model = target._drafts.get(args.draft) or qj.load(args.draft)
        draft_plain = lambda: draft_model.generator.generate_requests(requests)  # noqa: E731
        draft_plain()  # compile
        # c: the draft's cost per decoded token relative to the target's (plain decoding of both, interleaved).
        pairs = [(_timed(plain_fn)[0], _timed(draft_plain)[0]) for _ in range(args.repeats)]
        cost_ratio = min(d for _, d in pairs) / min(t for t, _ in pairs)
        for gamma in [int(g) for g in args.gammas.split(",")]:
            draft = target.draft(args.draft, gamma)
            spec_fn = lambda: gen.generate_requests(requests, draft=draft)  # noqa: E731
            out = spec_fn()  # compile
            plain_times, spec_times = [], []
            for _ in range(args.repeats):  # interleaved, so load changes hit both alike
                plain_times.append(_timed(plain_fn)[0])
                spec_times.append(_timed(spec_fn)[0])
            reference = plain_fn()
            figures = speculation_figures(out, gamma)
            tokens, calls = figures["tokens"], figures["target_calls"]
            line = {
                "batch": batch, "gamma": gamma,
                **{k: figures[k] for k in ("alpha", "tokens_per_target_call", "predicted_tokens_per_call")},
                "plain_s": round(min(plain_times), 4),
                "speculative_s": round(min(spec_times), 4),
                "speedup": round(min(plain_times) / min(spec_times), 3),
                "same_output": [c.tokens for c in out] == [c.tokens for c in reference],
                # Leviathan et al.'s speed-up model: tokens per call / (γ c + 1), c measured above.
                "draft_cost_ratio": round(cost_ratio, 3),
                "modelled_speedup": round(tokens / calls / (gamma * cost_ratio + 1), 3),
            }
            results.append(line)
            print(json.dumps(line), flush=True)
    best = {b: max((r for r in results if r["batch"] == b), key=lambda r: r["speedup"]) for b in {r["batch"] for r in results}}
    print(json.dumps({
        "bench": "speculative", "target": args.target, "target_val_loss": summary.get("val_loss"),
        "target_params": target.config.num_params() if hasattr(target.config, "num_params") else None,
        "draft": args.draft, "draft_val_loss": draft_summary.get("val_loss"), "max_new_tokens": args.max_new_tokens,
        "best_speedup": {str(b): {"gamma": r["gamma"], "speedup": r["speedup"]} for b, r in sorted(best.items())},
        "lines": results,
    }))


if __name__ == "__main__":
    main()
