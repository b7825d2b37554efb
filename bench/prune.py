"""Validation perplexity against sparsity: magnitude pruning (layer-wise and global) and 2:4, one-shot and after a
short recovery fine-tune with the zeros held at zero.

    python bench/prune.py [--model_dir /tmp/cmp/tiny_900] [--recover_steps 50] [--png bench_prune.png]

1. The run (default ``/tmp/cmp/tiny_900``, the tiny model pre-trained 900 steps) is read with ``runs.load``.
2. For each sparsity in 0/10/30/50/70/90% (magnitude, ``layer`` and ``global`` scope) and 2:4 at 50%, the
   block weights are pruned (:func:`quark_jax.inference.prune.prune_params`) and the validation perplexity of
   the stdlib split is measured on ``--eval_batches`` fixed batches (the same for every row).
3. Recovery: ``--recover_steps`` steps of the train step the Trainer runs (``make_sharded_training``, AdamW
   with ``keep_zero_weights``: every update multiplied by ``weight != 0``) on the same training batches for
   every row, warm-started from the pruned weights; the sparsity is measured again after it (it must not drop)
   and the perplexity re-measured. The 0% row with recovery shows what the extra fine-tuning alone gives.

Prints a table, writes a PNG (perplexity against sparsity, one line per method, dashed after recovery), and
prints ONE JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SPARSITIES = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9)


def _batches(name: str, length: int, batch_size: int, split: str, count: int, shuffle: bool) -> list[dict]:
    from quark_jax.data import pipeline

    iterator = pipeline.batch_iterator(name, {"targets": length}, batch_size, split=split, shuffle=shuffle,
                                       repeat=split == "train")
    out = []
    for batch in iterator:
        out.append(batch)
        if len(out) == count:
            break
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", default="/tmp/cmp/tiny_900")
    parser.add_argument("--recover_steps", type=int, default=50)
    parser.add_argument("--learning_rate", type=float, default=3e-4)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--eval_batches", type=int, default=8)
    parser.add_argument("--mixture_or_task_name", default="stdlib")
    parser.add_argument("--png", default="bench_prune.png")
    args = parser.parse_args()

    import jax
    import jax.numpy as jnp

    from quark_jax import runs
    from quark_jax import sharding as sh
    from quark_jax.inference import prune
    from quark_jax.models.transformer import abstract_model
    from quark_jax.training.config import OptimizerConfig
    from quark_jax.training.losses import evaluate_lm, make_eval_step
    from quark_jax.training.sharded import make_sharded_training
    from quark_jax.training.state import TrainState
    from flax import nnx

    start = time.perf_counter()
    cpu_start = time.process_time()
    model = runs.load(args.model_dir)
    length = int(model.trained_context or 256)
    graphdef = nnx.graphdef(abstract_model(model.config))
    eval_batches = _batches(args.mixture_or_task_name, length, args.batch_size, "validation", args.eval_batches, False)
    train_batches = _batches(args.mixture_or_task_name, length, args.batch_size, "train", args.recover_steps, True)
    eval_step = jax.jit(make_eval_step(graphdef))

    def perplexity(params) -> float:
        return evaluate_lm(eval_step, params, eval_batches)["perplexity"]

    mesh = sh.make_mesh("data=-1")
    optimizer = OptimizerConfig(learning_rate=args.learning_rate, warmup_steps=max(1, args.recover_steps // 10),
                                keep_zero_weights=True)
    training = make_sharded_training(model.config, mesh, optimizer, total_steps=args.recover_steps)

    def recover(params):
        params = jax.tree.map(jnp.copy, params)  # the step donates its state; the loaded model's arrays stay
        state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=training.tx.init(params))
        state = jax.device_put(state, training.state_shardings)
        with sh.activate(mesh):
            for batch in train_batches:
                state, _ = training.step(state, training.device_batch(batch))
        return jax.tree.map(jnp.asarray, state.params)

    rows = []
    configs = [("magnitude", "layer", s) for s in SPARSITIES] + [("magnitude", "global", s) for s in SPARSITIES[1:]]
    configs.append(("2:4", "layer", 0.5))
    for method, scope, sparsity in configs:
        t0 = time.perf_counter()
        pruned = prune.prune_params(model.params, sparsity, method, scope)
        before = prune.sparsity_of(pruned)["total"]
        one_shot = perplexity(pruned)
        recovered_params = recover(pruned) if args.recover_steps else pruned
        after = prune.sparsity_of(recovered_params)["total"]
        if after + 1e-9 < before:
            raise RuntimeError(f"{method}/{scope} {sparsity}: recovery lost zeros ({before} -> {after})")
        rows.append({"method": method if method == "2:4" else f"magnitude-{scope}", "sparsity": sparsity,
                     "measured_sparsity": round(before, 6), "sparsity_after_recovery": round(after, 6),
                     "ppl_one_shot": round(one_shot, 3), "ppl_recovered": round(perplexity(recovered_params), 3),
                     "seconds": round(time.perf_counter() - t0, 1)})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    dense = rows[0]["ppl_one_shot"]
    rows.insert(len(SPARSITIES), {**rows[0], "method": "magnitude-global"})  # 0%: the same model for both scopes

    print(f"\n{'method':<18}{'sparsity':>9}{'ppl one-shot':>14}{'ppl +' + str(args.recover_steps) + ' steps':>16}")
    for row in rows:
        print(f"{row['method']:<18}{row['sparsity']:>9.0%}{row['ppl_one_shot']:>14.2f}{row['ppl_recovered']:>16.2f}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (name, color) in (("magnitude-layer", "C0"), ("magnitude-global", "C1"), ("2:4", "C2")):
        points = [r for r in rows if r["method"] == name]
        xs = [100 * r["sparsity"] for r in points]
        style = "o" if name == "2:4" else "o-"
        ax.plot(xs, [r["ppl_one_shot"] for r in points], style, color=color, label=f"{name}, one-shot")
        ax.plot(xs, [r["ppl_recovered"] for r in points], style.replace("-", "--") if name != "2:4" else "s",
                color=color, label=f"{name}, +{args.recover_steps} recovery steps")
    ax.set_yscale("log")
    ax.axhline(dense, color="gray", lw=0.8, ls=":")
    ax.set_xlabel("sparsity of the block weights (%)")
    ax.set_ylabel("validation perplexity (log)")
    ax.set_title(f"pruning {os.path.basename(args.model_dir.rstrip('/'))} (dense {dense:.2f})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.png, dpi=120)

    print(json.dumps({
        "bench": "prune", "model_dir": args.model_dir, "step": model.step, "recover_steps": args.recover_steps,
        "learning_rate": args.learning_rate, "batch_size": args.batch_size, "sequence_length": length,
        "eval_tokens": sum(int(b["decoder_loss_weights"].sum()) for b in eval_batches),
        "dense_perplexity": dense, "rows": rows, "png": os.path.abspath(args.png),
        "wall_s": round(time.perf_counter() - start, 1), "cpu_s": round(time.process_time() - cpu_start, 1),
        "finite": all(math.isfinite(r["ppl_one_shot"]) and math.isfinite(r["ppl_recovered"]) for r in rows),
    }))


if __name__ == "__main__":
    main()
