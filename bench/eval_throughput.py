"""Evaluation throughput: multiple-choice scoring through the harness against a plain forward pass, and
generation-task examples/s. Prints ONE JSON line.

    python bench/eval_throughput.py                    # configs/models/small.gin, random weights
    python bench/eval_throughput.py --model tiny --batch_size 32 --limit 40

* ``mc``: every (context, " " + choice) pair of the built-in ``stdlib_mc`` suite, tokenized as the harness
  does (``harness.encode_pair``), scored through the harness path (``harness.score_pairs``: sorted by length,
  batches of ``batch_size``, each one ``Generator.score_tokens`` call — padding, the compiled forward pass,
  log-softmax, the copy back and the per-row slicing all included). The reference is a plain jitted forward pass
  (logits only) over the very same padded token arrays, in the same process, arrays already built.
  ``tokens_per_s`` counts real (unpadded) tokens; ``ratio`` = harness / forward (the issue's goal: >= 0.8).
  Both are timed warm (compiled), median of ``--repeats``.
* ``generation``: the ``stdlib_qa`` prompts through ``harness.generate_texts`` (greedy, the task's
  ``max_tokens`` and stop strings), warm; examples/s. Random weights rarely emit the stop string, so most rows
  run to ``max_tokens``: a worst case for a trained model.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from quark_jax.api import LoadedModel
from quark_jax.data.tokenizer import get_vocabulary
from quark_jax.evaluation import harness, tasks
from quark_jax.inference.decode import bucket_length
from quark_jax.models.config import ModelConfig
from quark_jax.models.transformer import Transformer, abstract_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def model_config(name: str, **overrides) -> ModelConfig:
    """ModelConfig of configs/models/NAME.gin, through gin as a run would build it."""
    import gin

    from quark_jax import gin_utils

    gin_utils.parse([os.path.join(REPO, "configs", "models", f"{name}.gin")])
    return dataclasses.replace(gin.get_configurable("quark_jax.ModelConfig")(), **overrides)


def random_model(name: str, max_length: int) -> LoadedModel:
    config = model_config(name)
    params = nnx.to_pure_dict(nnx.state(Transformer(config, rngs=nnx.Rngs(params=0)), nnx.Param))
    return LoadedModel(config, params, get_vocabulary(), step=0, trained_context=max_length)


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def padded_batches(generator, pairs, batch_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (tokens, lengths) arrays ``harness.score_pairs`` -> ``Generator.score_tokens`` builds: same order,
    same batches, same buckets."""
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    out = []
    for start in range(0, len(order), batch_size):
        full = [list(pairs[i][0]) + list(pairs[i][1]) for i in order[start: start + batch_size]]
        rows = bucket_length(len(full), generator.min_batch_bucket)
        cols = bucket_length(max(len(f) for f in full), generator.min_prompt_bucket)
        tokens = np.full((rows, cols), generator.pad_id, np.int32)
        lengths = np.ones(rows, np.int32)
        for r, f in enumerate(full):
            tokens[r, : len(f)], lengths[r] = f, len(f)
        out.append((tokens, lengths))
    return out


def bench_mc(model: LoadedModel, batch_size: int, limit: int | None, repeats: int) -> dict:
    task = tasks.find_tasks("stdlib_mc")[0]
    examples = tasks.load_examples(task, limit)
    generator, max_length = model.generator, model.trained_context
    pairs = []
    for example in examples:
        context = tasks.render_prompt(task, example)
        for choice in example[task.choices]:
            ctx, cont = harness.encode_pair(generator, context, task.target_delimiter + choice)
            pairs.append((ctx[-(max_length - len(cont)):], cont))
    real_tokens = sum(len(c) + len(x) for c, x in pairs)

    run_harness = lambda: harness.score_pairs(generator, pairs, batch_size)  # noqa: E731
    run_harness()  # compile every bucket
    harness_s = _median_time(run_harness, repeats)

    graphdef = nnx.graphdef(abstract_model(model.config))

    @jax.jit
    def forward(params, tokens, lengths):
        steps = jnp.arange(tokens.shape[1], dtype=jnp.int32)[None, :]
        segments = (steps < lengths[:, None]).astype(jnp.int32)
        logits, _ = nnx.merge(graphdef, params)(tokens, jnp.broadcast_to(steps, tokens.shape), segments)
        return logits

    batches = padded_batches(generator, pairs, batch_size)

    def run_forward():
        for tokens, lengths in batches:
            forward(model.params, tokens, lengths).block_until_ready()

    run_forward()
    forward_s = _median_time(run_forward, repeats)
    padded_tokens = sum(t.size for t, _ in batches)
    return {
        "task": "stdlib_mc", "examples": len(examples), "pairs": len(pairs), "tokens": real_tokens,
        "padded_tokens": padded_tokens, "batch_size": batch_size, "batches": len(batches),
        "harness_s": round(harness_s, 4), "forward_s": round(forward_s, 4),
        "harness_tokens_per_s": round(real_tokens / harness_s, 1),
        "forward_tokens_per_s": round(real_tokens / forward_s, 1),
        "ratio": round(forward_s / harness_s, 3), "goal_ratio": 0.8, "meets_goal": forward_s / harness_s >= 0.8,
    }


def bench_generation(model: LoadedModel, batch_size: int, limit: int | None, repeats: int) -> dict:
    task = tasks.find_tasks("stdlib_qa")[0]
    examples = tasks.load_examples(task, limit)
    prompts = [tasks.render_prompt(task, e) for e in examples]
    run = lambda: harness.generate_texts(  # noqa: E731
        model.generator, prompts, list(range(len(prompts))), task.max_tokens, 0.0, task.until,
        model.trained_context, batch_size)
    texts = run()  # compile
    seconds = _median_time(run, repeats)
    return {"task": "stdlib_qa", "examples": len(prompts), "max_tokens": task.max_tokens, "batch_size": batch_size,
            "seconds": round(seconds, 3), "examples_per_s": round(len(prompts) / seconds, 2),
            "mean_chars": round(sum(map(len, texts)) / len(texts), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="small", choices=("small", "tiny"), help="configs/models/NAME.gin")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_length", type=int, default=512, help="context in tokens (prompts are cut to it)")
    parser.add_argument("--limit", type=int, default=None, help="examples per task (default: all)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    load_start = os.getloadavg()[0]
    model = random_model(args.model, args.max_length)
    result = {
        "bench": "eval_throughput", "model": args.model, "random_weights": True,
        "parameters": int(sum(np.size(x) for x in jax.tree_util.tree_leaves(model.params))),
        "mc": bench_mc(model, args.batch_size, args.limit, args.repeats),
        "generation": bench_generation(model, args.batch_size, args.limit, max(1, args.repeats - 1)),
        "device": jax.devices()[0].device_kind, "devices": jax.device_count(),
        "load_average": [round(load_start, 2), round(os.getloadavg()[0], 2)],
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
