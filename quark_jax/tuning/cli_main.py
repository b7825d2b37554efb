"""``quark tune``: the arguments and what they run (hyper-parameter search, or ``--pbt``)."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence

from quark_jax.tuning import space as space_lib


class TuneUsageError(ValueError):
    """A bad ``quark tune`` argument; one line naming it and the fix."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--study_dir", required=True, help="where the study, trials/<n>/, best.gin and plots go")
    parser.add_argument("--space", required=True, help="search space, YAML or JSON (docs/tuning.md)")
    parser.add_argument("--gin_file", action="append", default=[], help="the run's gin file; repeatable")
    parser.add_argument("--trials", type=int, default=8, help="trials in the whole study (all workers together)")
    parser.add_argument("--step_budget", type=int, default=None,
                        help="trainer steps for the whole study: trials start until the finished ones' steps reach "
                             "it (a pruned trial leaves its unused steps to others); --trials is then a cap")
    parser.add_argument("--enqueue", default=None,
                        help="a YAML/JSON list of known points ({entry: value}) to try before the sampler's own, "
                             "e.g. today's settings as a baseline in the same study")
    parser.add_argument("--workers", type=int, default=1, help="worker processes on this machine")
    parser.add_argument("--sampler", default="tpe", choices=("tpe", "random"))
    parser.add_argument("--pruner", default="median", choices=("median", "hyperband", "none"))
    parser.add_argument("--storage", default=None, help="an RDB URL (postgresql://...) instead of the journal file")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--time_budget_s", type=float, default=None,
                        help="per trial: wall-clock seconds; each trial measures its step time and trains the steps "
                             "that fit (schedule and final evaluation included), overriding TRAIN_STEPS")
    parser.add_argument("--evaluations", type=int, default=4,
                        help="--time_budget_s: evaluations per trial (every TRAIN_STEPS / N steps), for the pruner")
    parser.add_argument("--objective", default="train", choices=("train", "quadratic"),
                        help="quadratic: a known function of the parameters, to check a study's set-up")
    parser.add_argument("--pbt", action="store_true", help="population-based training instead of a search")
    parser.add_argument("--members", type=int, default=4, help="--pbt: population size")
    parser.add_argument("--rounds", type=int, default=4, help="--pbt: rounds")
    parser.add_argument("--steps_per_round", type=int, default=50, help="--pbt: training steps per round")


def run(args: argparse.Namespace, bindings: Sequence[str]) -> int:
    """Runs the search (or PBT) and prints its summary as one JSON line."""
    from quark_jax.tuning import pbt, search

    for name in ("trials", "workers", "members", "rounds", "steps_per_round", "evaluations"):
        if getattr(args, name) < 1:
            raise TuneUsageError(f"--{name}={getattr(args, name)}: must be >= 1")
    if args.step_budget is not None and args.step_budget < 1:
        raise TuneUsageError(f"--step_budget={args.step_budget}: must be >= 1 (trainer steps for the whole study)")
    if args.objective == "train" and not args.gin_file:
        raise TuneUsageError("--gin_file is required to train trials, e.g. --gin_file=configs/runs/pretrain_tiny.gin")
    try:
        space = space_lib.load_space(args.space)
        points = space_lib.load_points(args.enqueue, space) if args.enqueue else []
    except space_lib.SearchSpaceError as e:
        raise TuneUsageError(str(e)) from None
    if points and args.pbt:
        raise TuneUsageError("--enqueue queues trials of a search; PBT members are sampled (leave out --pbt)")
    if args.time_budget_s is not None and args.time_budget_s <= 0:
        raise TuneUsageError(f"--time_budget_s={args.time_budget_s:g}: must be > 0 (seconds per trial)")
    if any(b.split("=", 1)[0].strip() == "MODEL_DIR" for b in bindings):
        raise TuneUsageError("--gin.MODEL_DIR is set per trial (study_dir/trials/<n>); leave it out")
    study_dir = os.path.abspath(args.study_dir)
    if args.pbt:
        result = pbt.run_pbt(pbt.PBTSpec(pbt_dir=study_dir, space=space, gin_files=tuple(args.gin_file),
                                         overrides=tuple(bindings), members=args.members, rounds=args.rounds,
                                         steps_per_round=args.steps_per_round, seed=args.seed or 0))
        print(json.dumps(result))
        return 0
    spec = search.StudySpec(study_dir=study_dir, space=space, gin_files=tuple(args.gin_file), overrides=tuple(bindings),
                            trials=args.trials, sampler=args.sampler, pruner=args.pruner, seed=args.seed,
                            storage=args.storage, objective=args.objective, time_budget_s=args.time_budget_s,
                            evaluations=args.evaluations, step_budget=args.step_budget)
    search.save_spec(spec)
    if points:
        search.enqueue_points(spec, points)
    search.run_workers(spec, args.workers)
    print(json.dumps(search.finalize(spec), default=str))
    return 0
