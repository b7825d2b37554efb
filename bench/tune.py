"""Random search vs TPE vs population-based training at equal compute on the tiny model: the same number of
trainer steps in total (``--trials`` x ``--steps`` = members x rounds x steps per round); prints one JSON line
with each method's best final validation loss.

    PYTHONPATH=. python bench/tune.py [--trials 8] [--steps 40] [--members 4] [--seeds 0,1,2] [--out /tmp/tune_bench]

The searches run with ``StudySpec.step_budget`` (``quark tune --step_budget``): trials start until their steps are
spent, so a trial the pruner stops early leaves its unused steps to further trials (that is what pruning buys) and
random search and TPE may run more than ``--trials`` trials; the last one may overrun the budget by less than one
trial (steps used are reported). One search's best is a noisy statistic, so every method runs once per seed (the
sampler's, and PBT's exploration) and the line reports each seed's best, their mean, and each method's wins over
the seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time

from quark_jax.tuning import pbt, search
from quark_jax.tuning import study as study_lib
from quark_jax.tuning import space as space_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_CONFIG = os.path.join(REPO, "configs", "runs", "tiny_base.gin")
SPACE = {
    "quark_jax.OptimizerConfig.learning_rate": {"type": "float", "low": 3e-4, "high": 1e-2, "log": True},
    "quark_jax.OptimizerConfig.weight_decay": {"type": "float", "low": 0.01, "high": 0.3},
}


def overrides(steps_eval: int) -> list[str]:
    return ["TASK_FEATURE_LENGTHS={'targets': 64}", "BATCH_SIZE=8", "CHECKPOINT_PERIOD=1000",
            "quark_jax.OptimizerConfig.warmup_steps=5", "quark_jax.TrainConfig.log_every=10",
            f"quark_jax.TrainConfig.eval_every={steps_eval}", "quark_jax.TrainConfig.eval_batches=4",
            "quark_jax.TrainConfig.peak_flops_per_s=1e11"]


def _summary(runs: list[dict]) -> dict:
    """Each seed's result and the mean best validation loss over the seeds."""
    best = [r["best_val_loss"] for r in runs]
    return {"mean_best_val_loss": round(sum(best) / len(best), 4), "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default="/tmp/tune_bench")
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    space = space_lib.parse_space(SPACE)
    seeds = [int(s) for s in args.seeds.split(",")]
    rounds = args.trials // args.members
    budget = args.trials * args.steps
    result = {"bench": "tune", "model": "tiny (tiny_base.gin, 64-token sequences, batch 8)",
              "trial_steps": args.steps, "step_budget": budget, "seeds": seeds,
              "pbt": {"members": args.members, "rounds": rounds, "steps_per_round": args.steps}}
    for sampler in ("random", "tpe"):
        runs = []
        for seed in seeds:
            start = time.perf_counter()
            spec = search.StudySpec(
                study_dir=os.path.join(args.out, f"{sampler}_{seed}"), space=space, gin_files=(RUN_CONFIG,),
                overrides=(*overrides(args.steps // 4), f"TRAIN_STEPS={args.steps}"),
                trials=budget // max(1, args.steps // 4), step_budget=budget, sampler=sampler, pruner="median",
                seed=seed, startup_trials=2)
            search.run_worker(spec)
            study = search.open_study(spec)
            trials = study.get_trials()
            run = {"best_val_loss": round(min(t.value for t in trials if t.value is not None), 4),
                   "steps": study_lib.steps_spent(study), "trials": len(trials),
                   "pruned": sum(t.state.name == "PRUNED" for t in trials)}
            runs.append({**run, "wall_s": round(time.perf_counter() - start, 1)})
        result[sampler] = _summary(runs)
    runs = []
    for seed in seeds:
        start = time.perf_counter()
        out = pbt.run_pbt(pbt.PBTSpec(
            pbt_dir=os.path.join(args.out, f"pbt_{seed}"), space=space, gin_files=(RUN_CONFIG,),
            overrides=tuple(overrides(0)), members=args.members, rounds=rounds, steps_per_round=args.steps,
            seed=seed))
        runs.append({"best_val_loss": round(out["best_val_loss"], 4), "steps": args.members * rounds * args.steps,
                     "wall_s": round(time.perf_counter() - start, 1)})
    result["pbt"].update(_summary(runs))
    methods = ("random", "tpe", "pbt")
    wins = {m: 0 for m in methods}
    for i in range(len(seeds)):
        wins[min(methods, key=lambda m: result[m]["runs"][i]["best_val_loss"])] += 1
    result["wins"] = wins
    print(json.dumps(result))


if __name__ == "__main__":
    main()
