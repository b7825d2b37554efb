"""Agent benchmark: many tool-using sessions sharing one in-process continuous-batching engine, as ONE JSON line.

    python bench/agents.py                      # ~1-2 minutes on 2 CPU cores
    python bench/agents.py --sessions 64        # more sessions per setting

Model: ``configs/models/<--model>.gin`` (default ``tiny``) with random weights (seed 0) and the shipped tokenizer,
in an :class:`~quark_jax.serving.engine.Engine` of ``--slots`` decode slots of ``--max_seq_len`` tokens, behind
:class:`~quark_jax.agents.backends.EngineBackend` — requests built by the server's own code, awaited on one
asyncio loop, so all sessions share the engine's decode steps.

Session: one user question ("What is A * B?"), the calculator offered and forced (``tool_choice`` names it: the
prompt opens the call and the model writes the arguments, which random weights make nonsense, so the calculator
answers ``error: …`` and the model tries again), sampled at temperature 1 with the session's own seed, until
``--max_steps`` generations of at most ``--max_new_tokens`` tokens (or a repeated call, or the context is full).
So a session is a few turns: generate -> calculator -> observation -> generate ...

Settings: closed loops of concurrency 1, 8 and 32 (each worker starts its next session when its last one ended),
``--sessions`` sessions at concurrency 32, half as many at 8, an eighth at 1. Per setting: ``sessions_per_s`` (sessions / wall time),
``latency_ms`` p50/p99 (a session's start to its end), ``generations_per_session``, ``tool_calls_per_session``,
``tokens_per_s`` (generated tokens / wall time), ``peak_busy_slots`` (the most slots decoding in one engine step)
and the stop reasons. ``warm_up_s``: an untimed pass (every prompt bucket the settings need compiles there).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter
from typing import Any

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

CONCURRENCY = (1, 8, 32)
FORCED = {"type": "function", "function": {"name": "calculator"}}


def build_backend(model: str, slots: int, max_seq_len: int):
    """An EngineBackend over ``configs/models/<model>.gin`` with random weights (seed 0), started."""
    import gin
    from flax import nnx

    from quark_jax import gin_utils
    from quark_jax.agents.backends import EngineBackend
    from quark_jax.data.tokenizer import get_vocabulary
    from quark_jax.models.transformer import Transformer
    from quark_jax.serving.engine import Engine

    gin_utils.parse([os.path.join(REPO, "configs", "models", f"{model}.gin")])
    config = gin.get_configurable("quark_jax.ModelConfig")()
    graphdef, params = nnx.split(Transformer(config, rngs=nnx.Rngs(params=0)))
    vocabulary = get_vocabulary()
    engine = Engine(graphdef, params, vocabulary, config, eos_id=vocabulary.eos_id, max_slots=slots,
                    max_seq_len=max_seq_len, max_queue=4 * slots).start()
    return EngineBackend(engine, vocabulary, f"{model}-random"), config


def make_agent(backend, args, seed: int):
    from quark_jax.agents.loop import Agent, Limits
    from quark_jax.agents.tools import calculator

    limits = Limits(max_steps=args.max_steps, max_new_tokens=args.max_new_tokens, max_tokens=4096, timeout_s=600)
    return Agent(backend, [calculator()], limits, tool_choice=FORCED, temperature=1.0, seed=seed)


async def closed_loop(backend, args, concurrency: int, sessions: int, first_seed: int) -> dict[str, Any]:
    """``sessions`` sessions run by ``concurrency`` workers, each starting its next when its last ended."""
    queue = list(range(first_seed, first_seed + sessions))
    results: list[tuple[float, Any]] = []
    busy: list[int] = []
    backend.engine.on_step = lambda engine: busy.append(engine.busy_slots)

    async def worker():
        while queue:
            seed = queue.pop(0)
            started = time.monotonic()
            result = await make_agent(backend, args, seed).run(f"What is {seed % 97} * {seed % 89 + 3}?")
            results.append((time.monotonic() - started, result))

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.monotonic() - started
    backend.engine.on_step = None
    latencies = np.asarray([r[0] for r in results])
    steps = [r[1].steps for r in results]
    tokens = sum(s.data["completion_tokens"] for run in steps for s in run if s.kind == "generate")
    p50, p99 = np.percentile(latencies, [50, 99])
    return {
        "sessions": len(results), "wall_s": round(wall, 2), "sessions_per_s": round(len(results) / wall, 3),
        "latency_ms": {"p50": round(float(p50) * 1e3, 1), "p99": round(float(p99) * 1e3, 1)},
        "generations_per_session": round(float(np.mean([sum(s.kind == "generate" for s in run) for run in steps])), 2),
        "tool_calls_per_session": round(float(np.mean([sum(s.kind == "tool" for s in run) for run in steps])), 2),
        "tokens_per_s": round(tokens / wall, 1), "peak_busy_slots": max(busy, default=0),
        "stop_reasons": dict(Counter(r[1].stop_reason for r in results)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="configs/models/<model>.gin, random weights")
    parser.add_argument("--sessions", type=int, default=32,
                        help="sessions at concurrency 32 (c8: half as many, c1: an eighth)")
    parser.add_argument("--slots", type=int, default=32, help="engine decode slots")
    parser.add_argument("--max_seq_len", type=int, default=512)
    parser.add_argument("--max_steps", type=int, default=4, help="generations per session")
    parser.add_argument("--max_new_tokens", type=int, default=16, help="tokens per generation")
    args = parser.parse_args()

    import jax

    from quark_jax.inference.generate import enable_compilation_cache

    cache_dir = enable_compilation_cache()
    started = time.monotonic()
    backend, config = build_backend(args.model, args.slots, args.max_seq_len)
    result: dict[str, Any] = {
        "bench": "agents", "model": args.model, "params_M": round(config.num_params() / 1e6, 2),
        "device": jax.devices()[0].device_kind, "cpu_count": os.cpu_count(), "slots": args.slots,
        "max_seq_len": args.max_seq_len, "max_steps": args.max_steps, "max_new_tokens": args.max_new_tokens,
        "compilation_cache": cache_dir is not None,
    }
    try:
        asyncio.run(closed_loop(backend, args, max(CONCURRENCY), max(CONCURRENCY), 10_000))  # compiles
        asyncio.run(closed_loop(backend, args, 1, 2, 20_000))
        result["warm_up_s"] = round(time.monotonic() - started, 1)
        for concurrency in CONCURRENCY:
            sessions = {1: max(2, args.sessions // 8), 8: max(8, args.sessions // 2)}.get(concurrency, args.sessions)
            sessions = max(sessions, concurrency)
            result[f"c{concurrency}"] = asyncio.run(closed_loop(backend, args, concurrency, sessions, concurrency))
    finally:
        backend.close()
    result["c32_vs_c1_sessions_per_s"] = round(result["c32"]["sessions_per_s"] / result["c1"]["sessions_per_s"], 2)
    result["total_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
