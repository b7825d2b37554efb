"""The serving engine with and without a speculative draft, in one process, as ONE JSON line.

    python bench/serve_speculative.py --target RUN --draft DRAFT_RUN [--gamma 4]
    python bench/serve_speculative.py --random      # random weights: only checks that everything runs

Two continuous-batching engines (:class:`quark_jax.serving.engine.Engine`, ``--max_slots`` slots of
``--max_seq_len`` tokens, the settings ``quark serve`` uses) over the same target: plain, and with the draft
(``quark serve --draft_dir``). Both are compiled (``warm_up``) before anything is timed. Workload: the code
prompts below, greedy, ``--max_tokens`` new tokens (EOS still ends a request, as in real use), ``--requests``
per setting, sent by closed-loop clients (each sends its next request when its last one is answered):
concurrency 1 and 8. The two engines alternate setting by setting, so a busy machine slows both alike.

Per engine and concurrency: ``output_tokens_per_s`` (tokens answered / wall time), ``e2e_ms`` and ``ttft_ms``
(p50/p99 of submit -> last / first token), ``ms_per_token`` (p50 over requests of e2e / tokens). The speculative
side adds ``acceptance_rate`` (accepted / examined drafts), ``tokens_per_target_call`` and ``target_calls``
counted by the engine over that setting. ``speedup`` = speculative tokens/s / plain tokens/s per concurrency;
``greedy_equal`` whether every request got the same tokens from both engines (it must: speculation is exact;
float rounding between a one-token step and a (γ+1)-token verification could flip a near-tie on real weights).
``--random`` builds a random target (4 layers, d_model 256) and a random smaller draft (1 layer, d_model 128) over
the shipped tokenizer: the figures then mean nothing (two random models with tied embeddings mostly agree on
repeating the last token, so acceptance is high and the text is junk); only the mechanics are checked.
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import numpy as np

PROMPTS = [
    "def fib(n):\n", "import os\n\n\ndef ", "class Queue:\n    def __init__(self", "    for i in range(",
    "def read_file(path):\n    with open(", "    if not isinstance(", "def __repr__(self):\n    return ",
    "    raise ValueError(",
]


def _random_models(gamma: int):
    """(target LoadedModel-like namespace, Draft) with random weights over the shipped tokenizer."""
    import types

    from flax import nnx

    from quark_jax.data import tokenizer
    from quark_jax.data.hf_tokenizer import SentencePieceTokenizer
    from quark_jax.inference.speculative import Draft
    from quark_jax.models.config import ModelConfig
    from quark_jax.models.transformer import Transformer

    vocabulary = SentencePieceTokenizer(str(tokenizer.DEFAULT_SPM_PATH), eos_id=tokenizer.EOS_ID, add_bos=False)

    def build(**fields):
        config = ModelConfig(vocab_size=vocabulary.vocab_size, num_heads=4, num_kv_heads=2, **fields)
        graphdef, params = nnx.split(Transformer(config, rngs=nnx.Rngs(params=0)), nnx.Param)
        return config, graphdef, nnx.to_pure_dict(params)

    config, graphdef, params = build(d_model=256, num_layers=4, head_dim=64, mlp_dim=1024)
    _, draft_graphdef, draft_params = build(d_model=128, num_layers=1, head_dim=32, mlp_dim=512)
    target = types.SimpleNamespace(graphdef=graphdef, params=params, config=config, tokenizer=vocabulary)
    return target, Draft(draft_graphdef, draft_params, gamma), "random", "random"


def _percentiles(values: list[float], scale: float = 1e3) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None}
    p50, p99 = np.percentile(np.asarray(values, np.float64), [50, 99])
    return {"p50": round(float(p50) * scale, 2), "p99": round(float(p99) * scale, 2)}


def run_setting(engine, prompts: list[list[int]], max_tokens: int, requests: int, concurrency: int) -> dict:
    """``requests`` greedy requests from ``concurrency`` closed-loop clients; figures and every answer's tokens."""
    from quark_jax.serving.engine import EngineRequest

    lock, records, answers = threading.Lock(), [], {}
    next_request = iter(range(requests))
    before = dict(vars(engine.speculation))

    def client():
        while True:
            with lock:
                i = next(next_request, None)
            if i is None:
                return
            sent = time.perf_counter()
            first, tokens = None, []
            for out in engine.submit(EngineRequest(prompts[i % len(prompts)], max_tokens)):
                if out.token_ids and first is None:
                    first = time.perf_counter()
                tokens += out.token_ids
            ended = time.perf_counter()
            with lock:
                records.append((first - sent, ended - sent, len(tokens)))
                answers[i] = tokens

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    tokens = sum(r[2] for r in records)
    figures = {"requests": len(records), "output_tokens": tokens, "wall_s": round(wall, 3),
               "output_tokens_per_s": round(tokens / wall, 1), "e2e_ms": _percentiles([r[1] for r in records]),
               "ttft_ms": _percentiles([r[0] for r in records]),
               "ms_per_token": _percentiles([r[1] / r[2] for r in records if r[2]])}
    if engine.draft is not None:
        done = {k: v - before[k] for k, v in vars(engine.speculation).items()}
        figures.update(target_calls=done["target_calls"],
                       acceptance_rate=round(done["accepted"] / done["examined"], 4) if done["examined"] else None,
                       tokens_per_target_call=round(done["emitted"] / done["target_calls"], 3)
                       if done["target_calls"] else None)
    return {"figures": figures, "answers": answers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", help="the served run directory")
    parser.add_argument("--draft", help="the draft run directory (same tokenizer)")
    parser.add_argument("--random", action="store_true", help="random target and draft: a mechanics check only")
    parser.add_argument("--gamma", type=int, default=4)
    parser.add_argument("--max_tokens", type=int, default=64)
    parser.add_argument("--requests", type=int, default=16, help="requests per engine and concurrency")
    parser.add_argument("--max_slots", type=int, default=8)
    parser.add_argument("--max_seq_len", type=int, default=256)
    parser.add_argument("--decode_block", type=int, default=8)
    args = parser.parse_args()
    if args.random == bool(args.target or args.draft) or (args.target is None) != (args.draft is None):
        parser.error("give --target and --draft, or --random")

    from quark_jax.serving.server import build_engine

    if args.random:
        target, draft, target_name, draft_name = _random_models(args.gamma)
    else:
        import quark_jax as qj

        target = qj.load(args.target)
        draft, target_name, draft_name = target.draft(args.draft, args.gamma), args.target, args.draft
    engines = {}
    compile_s = {}
    for name, d in (("plain", None), ("speculative", draft)):
        started = time.perf_counter()
        engine = build_engine(target, args.max_slots, args.max_seq_len, 256, args.decode_block, d)
        engine.warm_up()
        engines[name] = engine.start()
        compile_s[name] = round(time.perf_counter() - started, 1)
    prompts = [list(target.tokenizer.encode(p)) for p in PROMPTS]
    results: dict[str, dict] = {"plain": {}, "speculative": {}}
    equal = True
    for concurrency in (1, 8):
        answers = {}
        for name in ("plain", "speculative"):
            out = run_setting(engines[name], prompts, args.max_tokens, args.requests, concurrency)
            results[name][f"c{concurrency}"] = out["figures"]
            answers[name] = out["answers"]
        equal = equal and answers["plain"] == answers["speculative"]
    for engine in engines.values():
        engine.stop()
    speedup = {c: round(results["speculative"][c]["output_tokens_per_s"] / results["plain"][c]["output_tokens_per_s"],
                        3) for c in ("c1", "c8")}
    print(json.dumps({"bench": "serve_speculative", "target": target_name, "draft": draft_name, "gamma": args.gamma,
                      "max_tokens": args.max_tokens, "max_slots": args.max_slots, "max_seq_len": args.max_seq_len,
                      "decode_block": args.decode_block, "compile_s": compile_s, "speedup": speedup,
                      "greedy_equal": equal, **results}))


if __name__ == "__main__":
    main()
