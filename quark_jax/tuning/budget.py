"""A trial's time budget decides its length: measure the trial's own step time, then choose ``TRAIN_STEPS``
(and the evaluation and checkpoint periods) so that the whole run -- its learning-rate schedule completed and
its final evaluation done -- fits the budget.

:func:`measure` builds the trial's exact run (model, optimizer, data pipeline, mesh) in this process, times its
set-up and compile, steps for a few seconds after a warm-up step (the batch fetch included, as the trainer does it), one
evaluation (and the first, compiling one) and one checkpoint save, and releases it all. :func:`plan` is
arithmetic on those timings::

    fixed  = setup + compile + eval compile + (evaluations + 1) x eval + evaluations x checkpoint save
    steps  = floor((budget x (1 - reserve) - already spent - fixed) / step time), down to a multiple of evaluations

so a fast shape gets more steps than a slow one, and every trial's schedule decays fully within its time. The
trainer's evaluations then fall at 1/E, 2/E, ... of the run, which is what a pruner compares across trials.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
import shutil
import time
from collections.abc import Collection
from typing import Any

PLAN_FILE = "budget.json"


class BudgetTooSmallError(ValueError):
    """The time budget leaves too little time for this trial's shape to train at all."""


@dataclasses.dataclass(frozen=True)
class StepTimings:
    """What a probe of the trial's run measured, in seconds."""

    setup_s: float  # model and optimizer built, parameters initialised, data pipeline made, first batch read
    compile_s: float  # the train step lowered and compiled
    step_s: float  # one training step after warm-up, next batch fetched and metrics read
    eval_s: float  # one evaluation (compiled)
    eval_compile_s: float  # the first evaluation's extra time (its compile)
    checkpoint_s: float  # one checkpoint written and committed


@dataclasses.dataclass(frozen=True)
class BudgetPlan:
    """The steps a trial trains and the periods derived from them."""

    budget_s: float
    steps: int
    eval_every: int
    checkpoint_period: int
    evaluations: int
    planned_s: float  # what the plan expects the trial to take in all, the probe included
    timings: StepTimings

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> BudgetPlan:
        return cls(**{**data, "timings": StepTimings(**data["timings"])})

    def bindings(self, macros: Collection[str] = ("TRAIN_STEPS", "CHECKPOINT_PERIOD")) -> list[str]:
        """The gin bindings that make the run this plan: its steps and periods, through the ``TRAIN_STEPS`` and
        ``CHECKPOINT_PERIOD`` macros where the run's files use them (``macros``: those they reference; binding
        the parameter instead would leave a user's binding of the macro unused), else the parameters."""
        steps = "TRAIN_STEPS" if "TRAIN_STEPS" in macros else "quark_jax.TrainConfig.steps"
        period = "CHECKPOINT_PERIOD" if "CHECKPOINT_PERIOD" in macros else "quark_jax.CheckpointConfig.period"
        return [f"{steps}={self.steps}", f"quark_jax.TrainConfig.eval_every={self.eval_every}",
                f"{period}={self.checkpoint_period}"]

    def note(self) -> str:
        """One line for best.gin's comments."""
        t = self.timings
        return (f"time budget {self.budget_s:g} s per trial: measured step time {t.step_s:.4f} s (compile "
                f"{t.compile_s:.1f} s, evaluation {t.eval_s:.2f} s) -> TRAIN_STEPS = {self.steps}, evaluated every "
                f"{self.eval_every} steps")


def plan(budget_s: float, timings: StepTimings, spent_s: float = 0.0, evaluations: int = 4,
         reserve_fraction: float = 0.1) -> BudgetPlan:
    """The longest run that fits ``budget_s`` after ``spent_s`` (the probe) and ``reserve_fraction`` of the budget
    kept for what the probe cannot see (run files, summary, the loss-curve plot). Raises
    :class:`BudgetTooSmallError` when not even ``evaluations`` steps fit."""
    if evaluations < 1:
        raise ValueError(f"evaluations={evaluations} must be >= 1")
    if timings.step_s <= 0:
        raise ValueError(f"a step time of {timings.step_s} s cannot be planned with")
    fixed = (timings.setup_s + timings.compile_s + timings.eval_compile_s + (evaluations + 1) * timings.eval_s
             + evaluations * timings.checkpoint_s)
    available = budget_s * (1.0 - reserve_fraction) - spent_s - fixed
    steps = int(math.floor(max(available, 0.0) / timings.step_s)) // evaluations * evaluations
    if steps < evaluations:
        raise BudgetTooSmallError(
            f"a time budget of {budget_s:g} s leaves {available:.1f} s for training after {spent_s:.1f} s of probing "
            f"and {fixed:.1f} s of set-up, compile, evaluations and checkpoints: not {evaluations} steps of "
            f"{timings.step_s:.3f} s; raise --time_budget_s or shrink the space's largest shapes")
    every = steps // evaluations
    planned = spent_s + fixed + steps * timings.step_s
    return BudgetPlan(budget_s=float(budget_s), steps=steps, eval_every=every, checkpoint_period=every,
                      evaluations=evaluations, planned_s=planned, timings=timings)


def save_plan(run_dir: str, budget_plan: BudgetPlan) -> None:
    """Writes ``run_dir/budget.json`` atomically (a retry of a killed trial reuses it: same steps, same schedule)."""
    path = os.path.join(run_dir, PLAN_FILE)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(budget_plan.to_json(), f, indent=2)
    os.replace(tmp, path)


def load_plan(run_dir: str) -> BudgetPlan | None:
    """The plan a trial directory holds, or None."""
    path = os.path.join(run_dir, PLAN_FILE)
    if os.path.islink(path) or not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return BudgetPlan.from_json(json.load(f))


_PEAK_FLOPS: list[float] = []


def peak_flops_per_s() -> float:
    """The matmul FLOP/s the trainer measures for MFU at start-up, measured once per process: trials bind it,
    so that no trial spends its budget measuring it again."""
    if not _PEAK_FLOPS:
        from quark_jax.training import metrics

        _PEAK_FLOPS.append(metrics.measure_matmul_flops())
    return _PEAK_FLOPS[0]


def measure(config: Any, scratch_dir: str, probe_steps: int = 4, min_probe_s: float = 5.0,
            max_probe_steps: int = 200) -> StepTimings:
    """Times the run ``config`` (a :class:`~quark_jax.training.config.TrainConfig`) describes, in this process:
    set-up, compile, ``probe_steps`` steps or more (for ``min_probe_s``, at most ``max_probe_steps``) after one
    warm-up step, an evaluation, a checkpoint save (to
    ``scratch_dir``, removed afterwards). Nothing is written to the run directory."""
    import jax

    from quark_jax import sharding as sh
    from quark_jax.data.tokenizer import get_vocabulary
    from quark_jax.training import checkpoint as ckpt
    from quark_jax.training import sharded

    # Once per process, not per run, so not timed: the data pipeline's imports (TensorFlow, seqio), the tokenizer
    # and JAX's backend. The run that follows the probe in this process finds them loaded.
    importlib.import_module("quark_jax.data.pipeline")

    vocabulary = get_vocabulary()
    mesh = sh.make_mesh(config.mesh_shape)
    start = time.perf_counter()
    training = sharded.build(config, mesh, vocabulary)
    objective, frozen = training.objective, training.frozen
    with sh.activate(mesh):
        state = training.init(jax.random.key(config.seed))
    batches = objective.batches("train", 0, config.data.shuffle)

    def next_batch(step: int):
        with sh.activate(mesh):
            return training.device_batch(objective.prepare(state.params, frozen, next(batches), step))

    batch = next_batch(1)
    jax.block_until_ready(state)
    setup_s = time.perf_counter() - start

    start = time.perf_counter()
    with sh.activate(mesh):
        train_step = training.jitted_step(batch).lower(state, frozen, batch).compile()
    compile_s = time.perf_counter() - start

    state, metrics = train_step(state, frozen, batch)  # warm-up: first-run allocations
    batch = next_batch(2)
    jax.device_get(metrics)
    # At least probe_steps steps and min_probe_s seconds (at most max_probe_steps): the data pipeline prefetched
    # a few batches while the step compiled, and only steps past those pay for making their batches, as every
    # step of the run does.
    start, steps = time.perf_counter(), 0
    while steps < probe_steps or (time.perf_counter() - start < min_probe_s and steps < max_probe_steps):
        state, metrics = train_step(state, frozen, batch)
        batch = next_batch(steps + 3)
        jax.device_get(metrics)
        steps += 1
    step_s = (time.perf_counter() - start) / steps

    eval_s = eval_compile_s = 0.0
    if config.eval_batches > 0:
        with sh.activate(mesh):
            start = time.perf_counter()
            objective.evaluate(state.params, frozen)
            first = time.perf_counter() - start
            start = time.perf_counter()
            objective.evaluate(state.params, frozen)
            eval_s = time.perf_counter() - start
        eval_compile_s = max(first - eval_s, 0.0)

    shutil.rmtree(scratch_dir, ignore_errors=True)
    start = time.perf_counter()
    checkpointer = ckpt.Checkpointer(scratch_dir, max_to_keep=1, async_save=config.checkpoint.async_save)
    try:
        checkpointer.save(1, state.params, state.opt_state, {"step": 1, "data_position": 1}, force=True)
        checkpointer.wait()
    finally:
        checkpointer.close()
        shutil.rmtree(scratch_dir, ignore_errors=True)
    checkpoint_s = time.perf_counter() - start
    return StepTimings(setup_s=setup_s, compile_s=compile_s, step_s=step_s, eval_s=eval_s,
                       eval_compile_s=eval_compile_s, checkpoint_s=checkpoint_s)
