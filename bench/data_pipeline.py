"""Data pipeline throughput vs the tiny model's training consumption, as one JSON line.

    python bench/data_pipeline.py [--data_dir /tmp/quark_demo_data] [--batches 60] [--train_steps 12]

* ``pipeline_tokens_per_s``: real (non-pad) tokens per second out of ``pipeline.batch_iterator`` — read,
  tokenize, chunk, shuffle, mix, pack — at the tiny run's shape (sequence 256, batch 8), after one warm-up
  batch. With ``--data_dir`` it reads the shards of ``quark data build`` (registered as in training);
  otherwise the raw ``quark_demo`` mixture (sources read in memory, tokenized on the fly).
* ``packing_efficiency``: non-pad fraction of those batches.
* ``train_tokens_per_s``: the tiny model (configs/runs/tiny_base.gin) trained for ``--train_steps`` steps
  in this process through ``qj.Trainer``; the median of its logged ``tokens_per_s`` after the first
  (compiling) step. ``0`` skips it.
* ``ratio``: pipeline over training; the issue asks for at least 10.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def pipeline_rate(name: str, batches: int) -> tuple[float, float]:
    import numpy as np

    from quark_jax.data import pipeline

    it = pipeline.batch_iterator(name, {"targets": 256}, 8, seed=0)
    next(it)  # warm-up: fills the shuffle buffers
    tokens, eff = 0, []
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(it)
        tokens += int((batch["decoder_loss_weights"] > 0).sum())
        eff.append(pipeline.packing_efficiency(batch))
    return tokens / (time.perf_counter() - start), float(np.mean(eff))


def train_rate(steps: int) -> float:
    import quark_jax as qj

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory() as model_dir:
        trainer = qj.Trainer.from_gin(os.path.join(repo, "configs/runs/tiny_base.gin"), [
            f"MODEL_DIR={model_dir!r}", f"TRAIN_STEPS={steps}", "quark_jax.TrainConfig.log_every=1",
            "quark_jax.TrainConfig.eval_every=0", "quark_jax.TrainConfig.eval_batches=0",
            "quark_jax.TrainConfig.sample_max_new_tokens=0", "quark_jax.TrainConfig.peak_flops_per_s=1e11",
            "quark_jax.TrainConfig.progress_bar=False", "CHECKPOINT_PERIOD=100000",
        ])
        trainer.run()
        with open(os.path.join(model_dir, "metrics.jsonl")) as f:
            rates = [r["tokens_per_s"] for r in map(json.loads, f) if "tokens_per_s" in r and r.get("step", 0) > 1]
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=None, help="output of `quark data build` (default: raw quark_demo)")
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--train_steps", type=int, default=12)
    args = parser.parse_args()
    from quark_jax.data import built_tasks

    name = built_tasks.register_built(args.data_dir) if args.data_dir else "quark_demo"
    rate, eff = pipeline_rate(name, args.batches)
    train = train_rate(args.train_steps) if args.train_steps else 0.0
    print(json.dumps({
        "bench": "data_pipeline", "mixture": name, "sequence_length": 256, "batch_size": 8,
        "pipeline_tokens_per_s": round(rate), "packing_efficiency": round(eff, 4),
        "train_tokens_per_s": round(train), "ratio": round(rate / train, 1) if train else None,
    }))


if __name__ == "__main__":
    main()
