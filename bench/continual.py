"""Forgetting vs gain of continual training with replay, as one JSON line (and a Markdown table on stderr).

    python bench/continual.py [--pretrain_steps 150] [--continue_steps 80] [--work /tmp/quark_continual]

Data: two versions made by ``quark data refresh`` over the standard library's code. Version 1 ("old") is
every module outside NEW_PACKAGES; version 2 is a refresh over the whole library, which keeps only the
NEW_PACKAGES files (everything else is an exact duplicate of version 1). A tiny model is pre-trained on
version 1, then continued on version 2 for the same number of steps with replay fractions 0, 0.1 and 0.3
(``quark_jax.data.replay_mixture``) from the same pre-trained parameters. Reported: validation loss on each
version's held-out documents (old-val, new-val), before and after, and the differences (forgetting = old-val
after - before; gain = new-val before - after).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_CONFIG = os.path.join(REPO, "configs", "runs", "tiny_base.gin")
NEW_PACKAGES = ("asyncio", "email", "xml", "json", "http", "urllib", "multiprocessing", "logging", "sqlite3",
                "concurrent", "importlib", "tomllib", "zoneinfo", "wsgiref", "dbm", "html", "curses")
SEQ = 128
BATCH = 8


def make_versions(root: str) -> tuple[str, str]:
    from quark_jax.data import corpus, refresh, sources

    excluded = tuple(sorted(corpus._EXCLUDED_DIRS))

    def mixture(extra_exclude):
        return sources.source_mixture("continual_stdlib", {"code": sources.CodeRepoSource(
            corpus.stdlib_root(), extensions=(".py",), exclude=excluded + extra_exclude,
            max_file_bytes=corpus.MAX_FILE_BYTES)})

    old = refresh.refresh(mixture(NEW_PACKAGES), root, name="continual", progress=False, num_shards=2)
    new = refresh.refresh(mixture(()), root, name="continual", progress=False, num_shards=2)
    return old, new


def overrides(model_dir: str, steps: int, mixture_binding: list[str], **extra) -> list[str]:
    bindings = {
        "MODEL_DIR": repr(model_dir), "TRAIN_STEPS": steps, "TASK_FEATURE_LENGTHS": f"{{'targets': {SEQ}}}",
        "BATCH_SIZE": BATCH, "CHECKPOINT_PERIOD": steps,
        "quark_jax.OptimizerConfig.warmup_steps": 10, "quark_jax.TrainConfig.log_every": 10,
        "quark_jax.TrainConfig.eval_every": 0, "quark_jax.TrainConfig.eval_batches": 0,
        "quark_jax.TrainConfig.sample_prompts": "()", "quark_jax.TrainConfig.peak_flops_per_s": 1e11,
        "quark_jax.TrainConfig.progress_bar": False,
    }
    bindings.update(extra)
    return [f"{k}={v}" for k, v in bindings.items()] + mixture_binding


def validation_loss(model_dir: str, mixture: str, max_batches: int) -> float:
    import jax

    import quark_jax as qj
    from quark_jax.data import pipeline
    from quark_jax.training.losses import evaluate_lm, make_eval_step

    loaded = qj.load(model_dir)
    step = jax.jit(make_eval_step(loaded.graphdef))
    batches = pipeline.batch_iterator(mixture, {"targets": SEQ}, BATCH, split="validation", shuffle=False,
                                      repeat=False)
    return round(evaluate_lm(step, loaded.params, batches, max_batches)["loss"], 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pretrain_steps", type=int, default=150)
    parser.add_argument("--continue_steps", type=int, default=80)
    parser.add_argument("--eval_batches", type=int, default=8)
    parser.add_argument("--fractions", default="0,0.1,0.3")
    parser.add_argument("--work", default="/tmp/quark_continual")
    args = parser.parse_args()

    import gin

    import quark_jax as qj
    from quark_jax.data.replay import version_rates

    start = time.perf_counter()
    shutil.rmtree(args.work, ignore_errors=True)
    root = os.path.join(args.work, "data")
    old, new = make_versions(root)
    old_mixture, new_mixture = "continual_v1", "continual_v2"
    from quark_jax.data import tasks

    tasks.register_mixture(old_mixture, version_rates(old["path"]))
    tasks.register_mixture(new_mixture, version_rates(new["path"]))
    data_seconds = time.perf_counter() - start

    base = os.path.join(args.work, "pretrain")
    qj.Trainer.from_gin(RUN_CONFIG, overrides(base, args.pretrain_steps, [f"MIXTURE_OR_TASK_NAME={old_mixture!r}"])).run()
    gin.clear_config()
    before = {"old_val": validation_loss(base, old_mixture, args.eval_batches),
              "new_val": validation_loss(base, new_mixture, args.eval_batches)}
    rows = []
    for fraction in [float(f) for f in args.fractions.split(",")]:
        model_dir = os.path.join(args.work, f"replay_{fraction}")
        bindings = overrides(model_dir, args.continue_steps, [
            "MIXTURE_OR_TASK_NAME=@quark_jax.data.replay_mixture()",
            f"quark_jax.data.replay_mixture.data_root={root!r}",
            f"quark_jax.data.replay_mixture.replay_fraction={fraction}",
            f"quark_jax.TrainConfig.init_from={base!r}"])
        import quark_jax.data.replay  # noqa: F401 -- registers the gin configurable

        qj.Trainer.from_gin(RUN_CONFIG, bindings).run()
        gin.clear_config()
        after = {"old_val": validation_loss(model_dir, old_mixture, args.eval_batches),
                 "new_val": validation_loss(model_dir, new_mixture, args.eval_batches)}
        rows.append({"replay": fraction, "old_val_after": after["old_val"], "new_val_after": after["new_val"],
                     "forgetting": round(after["old_val"] - before["old_val"], 4),
                     "gain": round(before["new_val"] - after["new_val"], 4)})
    result = {
        "bench": "continual", "seq": SEQ, "batch": BATCH, "pretrain_steps": args.pretrain_steps,
        "continue_steps": args.continue_steps, "eval_batches": args.eval_batches,
        "v1_documents": old["totals"].get("output_documents"), "v2_documents": new["totals"].get("output_documents"),
        "v2_removed_exact": new["totals"].get("removed/exact_duplicate"),
        "v2_removed_near": new["totals"].get("removed/near_duplicate", 0),
        "v1_hash": old["content_hash"][:19], "v2_hash": new["content_hash"][:19],
        "old_val_before": before["old_val"], "new_val_before": before["new_val"], "rows": rows,
        "data_seconds": round(data_seconds, 1), "seconds": round(time.perf_counter() - start, 1),
    }
    print("| replay | old-val before | old-val after | forgetting | new-val before | new-val after | gain |",
          file=sys.stderr)
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |", file=sys.stderr)
    for r in rows:
        print(f"| {r['replay']} | {before['old_val']} | {r['old_val_after']} | {r['forgetting']:+.4f} | "
              f"{before['new_val']} | {r['new_val_after']} | {r['gain']:+.4f} |", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
