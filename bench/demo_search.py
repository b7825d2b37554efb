"""The demo's shape search at the demo's own wall clock: ``configs/tune/demo_shape.yaml`` over
``configs/runs/tiny_base.gin``, every trial given ``--budget_s`` (what the old demo's ``quark train`` takes on
the 2-core machine), TPE with the median pruner. The first two trials are queued: the old demo's own shape and
schedule (so it is measured in the same study, at the same budget) and the winner of the earlier 300-s search;
the sampler proposes the rest (``quark tune --enqueue`` does the same from a file). Writes the study (``best.gin``,
plots) to ``--study_dir`` and prints one JSON line per finished trial and the summary.

    PYTHONPATH=. python bench/demo_search.py [--budget_s 150] [--trials 10] [--study_dir /tmp/demo_search]

Run it alone on the machine: each trial times its own steps to decide how many fit its budget.
"""

from __future__ import annotations

import argparse
import json
import os

from quark_jax.tuning import search
from quark_jax.tuning import space as space_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
D_MODEL, LAYERS, BATCH = "quark_jax.ModelConfig.d_model", "quark_jax.ModelConfig.num_layers", "BATCH_SIZE"
LR = "quark_jax.OptimizerConfig.learning_rate"
QUEUED = (
    # tiny_base.gin, the demo before the search: 256 x 4 (MLP 704), batch 8, peak 1.5e-3, 30 of 300 steps warm-up.
    {D_MODEL: 256, LAYERS: 4, "mlp_ratio": 2.75, BATCH: 8, LR: 1.5e-3, "warmup_fraction": 0.1},
    # The 300-s search's winner (its trial 7): 128 x 2 (MLP 288), batch 4, peak 4.0e-3.
    {D_MODEL: 128, LAYERS: 2, "mlp_ratio": 2.15, BATCH: 4, LR: 4.018e-3, "warmup_fraction": 0.0356},
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget_s", type=float, default=150.0)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--study_dir", default="/tmp/demo_search")
    args = parser.parse_args()
    spec = search.StudySpec(
        study_dir=os.path.abspath(args.study_dir),
        space=space_lib.load_space(os.path.join(REPO, "configs", "tune", "demo_shape.yaml")),
        gin_files=(os.path.join(REPO, "configs", "runs", "tiny_base.gin"),), trials=args.trials, sampler="tpe",
        pruner="median", seed=args.seed, time_budget_s=args.budget_s, evaluations=4)
    search.save_spec(spec)
    search.enqueue_points(spec, [space_lib.check_point(spec.space, point, f"queued point {i}")
                                 for i, point in enumerate(QUEUED)])
    search.run_worker(spec)
    for t in search.open_study(spec).get_trials():
        print(json.dumps({"trial": t.number, "state": t.state.name, "value": t.value, "params": t.params,
                          "train_steps": t.user_attrs.get("train_steps"), "wall_s": t.user_attrs.get("wall_s")}))
    print(json.dumps(search.finalize(spec), default=str))


if __name__ == "__main__":
    main()
