"""Hyper-parameter search: workers that ask the study for trials, run each as a Trainer run in its own
directory (reporting validation loss at every evaluation to the pruner), and tell the result; then
``best.gin`` and the PNG plots.

Several workers (``quark tune --workers N``, or the same command on other machines) share one study: each
asks for a trial, so no two run the same trial, and TPE's ``constant_liar`` keeps them off the same point.
A killed search resumes when run again: finished trials stay in the study, and a trial a dead worker left
running is queued again and resumes from its checkpoints (:func:`study.recover_orphans`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from typing import Any

from quark_jax.tuning import space as space_lib
from quark_jax.tuning import study as study_lib

log = logging.getLogger(__name__)

STUDY_FILE = "study.json"
BEST_GIN = "best.gin"
OBJECTIVES = ("train", "quadratic")
# Bindings every trial gets before the user's (who may override them): no greedy samples at evaluations.
TRIAL_DEFAULTS = ("quark_jax.TrainConfig.sample_prompts=()", "quark_jax.TrainConfig.progress_bar=False")


@dataclasses.dataclass(frozen=True)
class StudySpec:
    """What a study searches and how (``study.json`` in the study directory)."""

    study_dir: str
    space: space_lib.SearchSpace
    gin_files: tuple[str, ...] = ()
    overrides: tuple[str, ...] = ()
    trials: int = 8
    sampler: str = "tpe"
    pruner: str = "median"
    seed: int | None = None
    storage: str | None = None
    objective: str = "train"  # "quadratic": a known function of the parameters (tests the study plumbing)
    metric: str = "val_loss"
    time_budget_s: float | None = None  # per trial: the wall clock a trial may take; decides its TRAIN_STEPS
    evaluations: int = 4  # with a time budget: evaluations per trial (at 1/E, 2/E, ... of its steps)
    study_name: str = ""
    sleep_s: float = 0.0  # quadratic objective only: how long each trial "trains"
    quadratic_reports: int = 1  # quadratic objective: > 1 reports a falling curve ending at the value, and prunes
    startup_trials: int = 4  # TPE: random trials before the model of good and bad points takes over
    # Trainer steps for the whole study: no trial starts once its finished trials' steps reach it, so a trial the
    # pruner stops early leaves its unused steps to further trials (``trials`` is then a cap). Equal compute.
    step_budget: int | None = None

    @property
    def name(self) -> str:
        return self.study_name or os.path.basename(os.path.normpath(self.study_dir))

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["space"] = self.space.to_json()
        return out


def quadratic(space: space_lib.SearchSpace, params: dict[str, Any]) -> float:
    """The known test objective: the squared distance of the parameters' unit positions from 0.3 (minimum 0
    at 30% of every range, on the log scale for log dimensions)."""
    return float(sum((d.unit(params[d.binding]) - 0.3) ** 2 for d in space.sampled))


def _train_config(spec: StudySpec, run_dir: str, extra: Sequence[str]):
    """Parses the study's gin files and bindings, then ``extra`` and the trial's MODEL_DIR; the TrainConfig."""
    from quark_jax import gin_utils

    gin_utils.parse(list(spec.gin_files), [*spec.overrides, *extra, f"MODEL_DIR={run_dir!r}"],
                    defaults=TRIAL_DEFAULTS)
    return gin_utils.build_train_config()


PLACEHOLDER_STEPS = 1000  # the probe's TRAIN_STEPS when the run's files leave it unset (the budget sets it)


def _configured(spec: StudySpec, run_dir: str) -> tuple[Any, set[str]]:
    """The run's own TrainConfig (without the space's bindings) and the macros its files reference; under a time
    budget, TRAIN_STEPS may be left unset (``%gin.REQUIRED``): the probe then gets a placeholder."""
    from quark_jax import gin_utils

    try:
        return _train_config(spec, run_dir, []), gin_utils.referenced_macros()
    except gin_utils.GinConfigError as e:
        macros = gin_utils.referenced_macros()
        if spec.time_budget_s is None or "TRAIN_STEPS" not in macros or "TRAIN_STEPS" not in str(e):
            raise
    return _train_config(spec, run_dir, [f"TRAIN_STEPS={PLACEHOLDER_STEPS}"]), macros


def _budget_plan(spec: StudySpec, trial: Any, run_dir: str, params: dict[str, Any], started: float,
                 configured: Any, macros: set[str]) -> Any:
    """The trial's plan under the time budget: measured on its exact run (or, for a retry of a killed trial, the
    plan the killed one saved), recorded in the trial's user attributes. ``configured``: the run's own config,
    whose TRAIN_STEPS stands in for the probe's."""
    from quark_jax.tuning import budget

    plan = budget.load_plan(run_dir)
    if plan is None:
        placeholder = [f"TRAIN_STEPS={configured.steps}"] if "TRAIN_STEPS" in macros else []
        config = _train_config(spec, run_dir, [*placeholder,
                                               *spec.space.bindings(params, {"TRAIN_STEPS": configured.steps})])
        if config.eval_batches <= 0:
            raise ValueError("a time-budgeted trial needs evaluations: bind quark_jax.TrainConfig.eval_batches > 0")
        timings = budget.measure(config, os.path.join(run_dir, ".budget_probe"))
        for name, value in dataclasses.asdict(timings).items():  # kept also when the budget is too small
            trial.set_user_attr(f"probe_{name}", value)
        plan = budget.plan(spec.time_budget_s, timings, time.monotonic() - started, spec.evaluations)
        budget.save_plan(run_dir, plan)
    t = plan.timings
    for name, value in (("budget_s", plan.budget_s), ("step_time_s", t.step_s), ("compile_s", t.compile_s),
                        ("eval_s", t.eval_s), ("train_steps", plan.steps), ("eval_every", plan.eval_every),
                        ("planned_s", plan.planned_s)):
        trial.set_user_attr(name, value)
    log.info("trial %d: %s", trial.number, plan.note())
    return plan


def train_objective(spec: StudySpec, trial: Any, run_dir: str) -> float:
    """Trains the trial's bindings in ``run_dir``; reports ``spec.metric`` at each evaluation and stops when the
    pruner says so (``optuna.TrialPruned``). Returns the final validation loss.

    With ``spec.time_budget_s`` the trial first measures its own step time and trains the number of steps that
    fits the budget (:mod:`quark_jax.tuning.budget`), its schedule and final evaluation included; it then
    reports at evaluation 1, 2, ... (each at the same fraction of every trial's run) instead of at a step."""
    import optuna

    from quark_jax import gin_utils
    from quark_jax.training.trainer import Trainer
    from quark_jax.tuning import budget

    started = time.monotonic()
    params = spec.space.suggest(trial)
    extra: list[str] = []
    plan = None
    if spec.time_budget_s is not None:
        configured, macros = _configured(spec, run_dir)
        if configured.peak_flops_per_s is None:  # measured once per worker (before the plan: it takes time)
            extra.append(f"quark_jax.TrainConfig.peak_flops_per_s={budget.peak_flops_per_s()!r}")
        plan = _budget_plan(spec, trial, run_dir, params, started, configured, macros)
        extra = [*plan.bindings(macros), *extra]
        steps = plan.steps
    else:
        steps = _train_config(spec, run_dir, []).steps if spec.space.uses_train_steps() else None
    space_bindings = spec.space.bindings(params, {"TRAIN_STEPS": steps} if steps is not None else {})
    trial.set_user_attr("bindings", space_bindings + ([f"TRAIN_STEPS={plan.steps}"] if plan else []))
    config = _train_config(spec, run_dir, [*space_bindings, *extra])
    trainer = Trainer(config, gin_utils.config_text())
    pruned_at: list[int] = []

    def on_eval(step: int, values: dict[str, float]) -> bool:
        value = values.get(spec.metric)
        if value is None or not math.isfinite(value):
            return False
        trial.report(value, step // plan.eval_every if plan else step)
        if trial.should_prune():
            pruned_at.append(step)
            return True
        return False

    trainer.on_eval = on_eval
    summary = trainer.run()
    trial.set_user_attr("wall_s", time.monotonic() - started)
    trial.set_user_attr("final_step", int(summary.get("final_step", 0)))
    if pruned_at:
        raise optuna.TrialPruned(f"pruned at step {pruned_at[0]}")
    value = summary.get(spec.metric)
    if value is None:
        raise ValueError(f"the run reported no {spec.metric}: bind quark_jax.TrainConfig.eval_batches > 0")
    return float(value)


def quadratic_objective(spec: StudySpec, trial: Any, run_dir: str) -> float:
    """The known objective as a trial: one report of the value, or (``quadratic_reports`` = R > 1) a learning
    curve ``value + (R - r) / R`` at r = 1..R, asking the pruner after each report, as a training trial does."""
    import optuna

    params = spec.space.suggest(trial)
    time.sleep(spec.sleep_s)
    value = quadratic(spec.space, params)
    reports = max(spec.quadratic_reports, 1)
    for r in range(1, reports + 1):
        trial.report(value + (reports - r) / reports, r)
        trial.set_user_attr("final_step", r)  # one report = one "step" of this objective's budget
        if reports > 1 and trial.should_prune():
            raise optuna.TrialPruned(f"pruned at report {r}")
    with open(os.path.join(run_dir, "value.json"), "w", encoding="utf-8") as f:
        json.dump({"params": params, "value": value}, f)
    return value


def open_study(spec: StudySpec, worker_index: int = 0) -> Any:
    """Creates or loads the study (the sampler seeded per worker, so that workers' random start-up points
    differ)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seed = None if spec.seed is None else spec.seed + 1009 * worker_index
    storage = study_lib.open_storage(spec.study_dir, spec.storage)
    for attempt in range(3):
        try:
            return optuna.create_study(
                study_name=spec.name, storage=storage, sampler=study_lib.make_sampler(spec.sampler, seed, spec.startup_trials),
                pruner=study_lib.make_pruner(spec.pruner), direction="minimize", load_if_exists=True,
            )
        except optuna.exceptions.DuplicatedStudyError:  # another worker created it in between: load it
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def enqueue_points(spec: StudySpec, points: Sequence[dict[str, Any]]) -> None:
    """Queues known points (:func:`quark_jax.tuning.space.check_point`) to run before the sampler's own, e.g. the
    run's current settings as a baseline measured in the same study; a point already in the study (a resumed
    search) is not queued again."""
    study = open_study(spec)
    for point in points:
        study.enqueue_trial(dict(point), skip_if_exists=True)


def _claim_dir(spec: StudySpec, trial: Any) -> str:
    """The trial's run directory; a retry takes over the killed trial's directory (and so its checkpoints)."""
    run_dir = study_lib.trial_dir(spec.study_dir, trial.number)
    retry_of = trial.user_attrs.get("retry_of")
    if retry_of is not None and not os.path.exists(run_dir):
        old = study_lib.trial_dir(spec.study_dir, int(retry_of))
        if os.path.isdir(old):
            os.replace(old, run_dir)  # atomic: the checkpoints move with it
    os.makedirs(run_dir, exist_ok=True)
    return run_dir


def run_worker(spec: StudySpec, worker_index: int = 0) -> int:
    """Runs trials until the study's budget (``spec.trials``) is used; returns how many this worker ran."""
    import optuna

    study = open_study(spec, worker_index)
    study_lib.recover_orphans(study, spec.study_dir)
    objective = {"train": train_objective, "quadratic": quadratic_objective}[spec.objective]
    ran = 0
    while study_lib.budget_used(study) < spec.trials and not (
            spec.step_budget is not None and study_lib.steps_spent(study) >= spec.step_budget):
        trial = study.ask()
        run_dir = _claim_dir(spec, trial)
        lease = study_lib.worker_lease(spec.study_dir, trial.number).acquire()
        trial.set_user_attr("worker", f"{os.uname().nodename}:{os.getpid()}")
        trial.set_user_attr("run_dir", os.path.relpath(run_dir, spec.study_dir))
        try:
            value = objective(spec, trial, run_dir)
        except optuna.TrialPruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            log.info("trial %d pruned", trial.number)
        except Exception as e:
            from quark_jax.gin_utils import GinConfigError

            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            if isinstance(e, GinConfigError):  # every trial would fail the same way: stop now
                raise
            log.warning("trial %d failed: %s", trial.number, str(e).splitlines()[0] if str(e) else type(e).__name__)
            if not isinstance(e, (ValueError, ArithmeticError, RuntimeError)):
                raise
        else:
            study.tell(trial, value)
            log.info("trial %d: %s %.4f", trial.number, spec.metric, value)
        finally:
            lease.release()
        ran += 1
    return ran


def _worker_entry(spec_json: dict, worker_index: int) -> None:
    run_worker(spec_from_json(spec_json), worker_index)


def run_workers(spec: StudySpec, workers: int = 1) -> None:
    """Runs ``workers`` worker processes on the study (one: in this process) and waits for them."""
    if workers <= 1:
        run_worker(spec, 0)
        return
    open_study(spec)  # created once, before the workers load it
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_worker_entry, args=(spec.to_json(), i)) for i in range(workers)]
    for p in processes:
        p.start()
    for p in processes:
        p.join()
    failed = [i for i, p in enumerate(processes) if p.exitcode != 0]
    if failed:
        raise RuntimeError(f"tuning worker(s) {failed} exited with status "
                           f"{[processes[i].exitcode for i in failed]}; run the command again to resume")


def spec_from_json(data: dict) -> StudySpec:
    fields = {f.name for f in dataclasses.fields(StudySpec)}
    values = {k: v for k, v in data.items() if k in fields}
    values["space"] = space_lib.parse_space(data["space"], "study.json")
    values["gin_files"] = tuple(values.get("gin_files", ()))
    values["overrides"] = tuple(values.get("overrides", ()))
    return StudySpec(**values)


def save_spec(spec: StudySpec) -> None:
    """Writes ``study.json`` (atomically), so the study directory says what it searched."""
    os.makedirs(spec.study_dir, exist_ok=True)
    space_lib.write_atomic(os.path.join(spec.study_dir, STUDY_FILE), json.dumps(spec.to_json(), indent=2) + "\n")


def finalize(spec: StudySpec) -> dict[str, Any]:
    """Writes ``best.gin`` and the plots (``history.png``, ``importances.png``, ``intermediate.png``) and returns
    the study's summary: counts by state, the best value, trial and bindings."""
    import optuna

    study = open_study(spec)
    trials = study.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    summary: dict[str, Any] = {"study": spec.name, "trials": counts}
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if complete:
        best = min(complete, key=lambda t: t.value)
        bindings = best.user_attrs.get("bindings") or spec.space.bindings(best.params)
        notes = []
        if "train_steps" in best.user_attrs:
            from quark_jax.tuning import budget

            plan = budget.load_plan(study_lib.trial_dir(spec.study_dir, best.number))
            notes.append(plan.note() if plan else f"time budget: TRAIN_STEPS = {best.user_attrs['train_steps']}")
            if "wall_s" in best.user_attrs:
                notes.append(f"the trial took {best.user_attrs['wall_s']:.1f} s (planned "
                             f"{best.user_attrs['planned_s']:.1f} s)")
        space_lib.write_atomic(os.path.join(spec.study_dir, BEST_GIN),
                               space_lib.best_gin_text(bindings, best.value, best.number, spec.name, notes))
        summary.update(best_value=best.value, best_trial=best.number, best_bindings=bindings,
                       best_gin=os.path.join(spec.study_dir, BEST_GIN))
    summary["plots"] = write_plots(study, spec.study_dir)
    return summary


def write_plots(study: Any, out_dir: str) -> list[str]:
    """PNG plots of the optimisation history, the parameter importances and the intermediate validation losses
    (those that the study has enough trials for)."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    written = []
    plots = {"history.png": ovm.plot_optimization_history, "importances.png": ovm.plot_param_importances,
             "intermediate.png": ovm.plot_intermediate_values}
    for name, plot in plots.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the matplotlib backend is marked experimental
            try:
                axes = plot(study)
            except (ValueError, RuntimeError, ZeroDivisionError) as e:  # too few complete trials for it
                log.info("no %s: %s", name, e)
                continue
        figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
        figure.set_size_inches(8, 5)
        figure.tight_layout()
        path = os.path.join(out_dir, name)
        tmp = os.path.join(out_dir, f".{name}.{os.getpid()}.tmp.png")
        figure.savefig(tmp, dpi=100)
        os.replace(tmp, path)
        plt.close(figure)
        written.append(path)
    return written
