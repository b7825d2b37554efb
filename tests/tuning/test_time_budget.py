"""quark tune --time_budget_s: the budget decides each trial's length. Each trial measures its own step time and
trains the steps that fit (schedule completed, final evaluation included): a costlier shape gets fewer steps, and
its learning rate at the last step is the schedule's end value. Also: derived search-space entries
(warm-up as a fraction of the derived steps) and the plan's arithmetic."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

optuna = pytest.importorskip("optuna")

from conftest import REPO, RUN_CONFIG, tiny_overrides  # noqa: E402
from quark_jax.tuning import budget, search, space as space_lib  # noqa: E402

LR = 3e-3
# Two shapes of very different cost per step (about 20x the FLOPs per token and 8x the tokens).
CHEAP = {"quark_jax.ModelConfig.d_model": 32, "quark_jax.ModelConfig.num_layers": 1,
         "TASK_FEATURE_LENGTHS": "{'targets': 32}"}
COSTLY = {"quark_jax.ModelConfig.d_model": 128, "quark_jax.ModelConfig.num_layers": 2,
          "TASK_FEATURE_LENGTHS": "{'targets': 128}"}
SPACE = {
    "quark_jax.ModelConfig.d_model": {"type": "categorical", "choices": [32, 128]},
    "quark_jax.ModelConfig.num_layers": {"type": "int", "low": 1, "high": 2},
    "TASK_FEATURE_LENGTHS": {"type": "categorical", "raw": True, "choices": ["{'targets': 32}", "{'targets': 128}"]},
    "quark_jax.ModelConfig.num_heads": {"derive": "d_model // 16"},
    "quark_jax.ModelConfig.num_kv_heads": {"derive": "num_heads // 2"},
    "quark_jax.ModelConfig.mlp_dim": {"derive": "2 * d_model"},
    "warmup_fraction": {"type": "float", "low": 0.1, "high": 0.3, "bind": False},
    "quark_jax.OptimizerConfig.warmup_steps": {"derive": "max(1, round(warmup_fraction * TRAIN_STEPS))"},
}


def test_plan_fits_the_budget_and_ends_on_an_evaluation():
    timings = budget.StepTimings(setup_s=2.0, compile_s=3.0, step_s=0.05, eval_s=0.5, eval_compile_s=1.0,
                                 checkpoint_s=0.25)
    plan = budget.plan(60.0, timings, spent_s=7.0, evaluations=4, reserve_fraction=0.05)
    fixed = 2.0 + 3.0 + 1.0 + 5 * 0.5 + 4 * 0.25  # 9.5 s
    assert plan.steps == int((57.0 - 7.0 - fixed) / 0.05) // 4 * 4 == 808
    assert (plan.eval_every, plan.checkpoint_period) == (202, 202)
    assert plan.planned_s == pytest.approx(7.0 + fixed + 808 * 0.05) and plan.planned_s <= 57.0
    assert plan.bindings() == ["TRAIN_STEPS=808", "quark_jax.TrainConfig.eval_every=202", "CHECKPOINT_PERIOD=202"]
    assert plan.bindings(macros=()) == ["quark_jax.TrainConfig.steps=808", "quark_jax.TrainConfig.eval_every=202",
                                        "quark_jax.CheckpointConfig.period=202"]
    slower = budget.plan(60.0, budget.StepTimings(2.0, 3.0, 0.2, 0.5, 1.0, 0.25), spent_s=7.0, reserve_fraction=0.05)
    assert slower.steps == 200 < plan.steps
    with pytest.raises(budget.BudgetTooSmallError, match="a time budget of 10 s leaves -7.5 s for training"):
        budget.plan(10.0, timings, spent_s=7.0)


def test_a_saved_plan_is_what_a_retried_trial_reads_back(tmp_path):
    plan = budget.plan(60.0, budget.StepTimings(2.0, 3.0, 0.05, 0.5, 1.0, 0.25), spent_s=7.0)
    assert budget.load_plan(str(tmp_path)) is None
    budget.save_plan(str(tmp_path), plan)
    assert budget.load_plan(str(tmp_path)) == plan
    assert os.listdir(tmp_path) == ["budget.json"]  # written through a temporary file, nothing left beside it


def test_a_budgeted_study_needs_no_train_steps_from_the_runs_files(tmp_path):
    """configs/runs/pretrain.gin leaves TRAIN_STEPS required: under a time budget the probe gets a placeholder
    (the plan sets the real count); without one the missing TRAIN_STEPS is the usual one-line error."""
    from quark_jax import gin_utils

    files = (os.path.join(REPO, "configs", "runs", "pretrain.gin"), os.path.join(REPO, "configs", "models", "tiny.gin"))
    spec = search.StudySpec(study_dir=str(tmp_path), space=space_lib.parse_space(SPACE), gin_files=files,
                            time_budget_s=100.0)
    config, macros = search._configured(spec, str(tmp_path / "trials" / "0"))
    assert config.steps == search.PLACEHOLDER_STEPS and "TRAIN_STEPS" in macros
    with pytest.raises(gin_utils.GinConfigError, match="TRAIN_STEPS is not set"):
        search._configured(dataclasses.replace(spec, time_budget_s=None), str(tmp_path / "trials" / "0"))


def test_quark_tune_refuses_a_budget_that_is_not_positive(tmp_path, capsys):
    from quark_jax import cli

    space_file = tmp_path / "space.yaml"
    space_file.write_text("quark_jax.OptimizerConfig.learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2}\n")
    assert cli.main(["tune", f"--study_dir={tmp_path / 'study'}", f"--space={space_file}", f"--gin_file={RUN_CONFIG}",
                     "--time_budget_s=0"]) == 2
    assert capsys.readouterr().err == "quark tune: --time_budget_s=0: must be > 0 (seconds per trial)\n"


def test_derived_entries_compute_from_the_sampled_values_and_the_steps():
    space = space_lib.parse_space(SPACE)
    assert [d.binding for d in space.sampled] == ["quark_jax.ModelConfig.d_model", "quark_jax.ModelConfig.num_layers",
                                                  "TASK_FEATURE_LENGTHS", "warmup_fraction"]
    params = {"quark_jax.ModelConfig.d_model": 128, "quark_jax.ModelConfig.num_layers": 2,
              "TASK_FEATURE_LENGTHS": "{'targets': 128}", "warmup_fraction": 0.25}
    assert space.bindings(params, {"TRAIN_STEPS": 90}) == [
        "quark_jax.ModelConfig.d_model=128", "quark_jax.ModelConfig.num_layers=2", "TASK_FEATURE_LENGTHS={'targets': 128}",
        "quark_jax.ModelConfig.num_heads=8", "quark_jax.ModelConfig.num_kv_heads=4", "quark_jax.ModelConfig.mlp_dim=256",
        "quark_jax.OptimizerConfig.warmup_steps=22"]  # round(22.5) = 22 (half to even)
    assert space_lib.parse_space(space.to_json()) == space
    with pytest.raises(space_lib.SearchSpaceError) as e:
        space_lib.parse_space({"a.x": {"derive": "y * 2"}, "b.y": {"type": "int", "low": 1, "high": 3}}, "s.yaml")
    assert str(e.value) == ("s.yaml: a.x: y is not an entry above it (nor TRAIN_STEPS); derived entries read "
                            "entries defined earlier")
    with pytest.raises(space_lib.SearchSpaceError) as e:
        space_lib.parse_space({"a.x": {"derive": "__import__('os')"}}, "s.yaml")
    assert str(e.value).startswith("s.yaml: a.x: \"__import__('os')\": __import__('os') is not allowed")


# Two whole trials (each a probe and a Trainer run, the time budget each) take minutes on the shared 2-core
# machine: far over the suite's budget, so this runs only with QUARK_SLOW_TESTS=1 (measured figures in
# docs/tuning.md); the probe and the schedule of a derived plan are tested below within the suite's budget.
slow = pytest.mark.skipif(not os.environ.get("QUARK_SLOW_TESTS"), reason="two budgeted trials: QUARK_SLOW_TESTS=1")


@slow
def test_each_trial_trains_the_steps_its_measured_step_time_fits(tmp_path):
    """Two trials, a cheap and a costly shape, each with the same small budget: each measures its step time and
    trains to the step count that fits; the costly one gets fewer steps; each run's schedule ends at its derived
    step (the learning rate at the last step is the schedule's end value, 0.1 x peak) and warm-up is the sampled
    fraction of the derived steps."""
    overrides = tiny_overrides("unused", 1, **{"quark_jax.ModelConfig.head_dim": 16, "BATCH_SIZE": 4,
                                               "quark_jax.TrainConfig.eval_batches": 1,
                                               "quark_jax.OptimizerConfig.learning_rate": LR})
    overrides = [b for b in overrides if not b.startswith(("MODEL_DIR=", "TRAIN_STEPS=",
                                                           "quark_jax.OptimizerConfig.warmup_steps="))]
    spec = search.StudySpec(study_dir=str(tmp_path / "study"), space=space_lib.parse_space(SPACE),
                            gin_files=(RUN_CONFIG,), overrides=tuple(overrides), trials=2, sampler="random",
                            pruner="none", seed=0, time_budget_s=BUDGET_S, evaluations=2)
    study = search.open_study(spec)
    for shape in (CHEAP, COSTLY):
        study.enqueue_trial({**shape, "warmup_fraction": 0.2})
    assert search.run_worker(spec) == 2
    trials = search.open_study(spec).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    cheap, costly = trials
    assert cheap.user_attrs["step_time_s"] < costly.user_attrs["step_time_s"]
    assert cheap.user_attrs["train_steps"] > costly.user_attrs["train_steps"] >= 2
    for t in trials:
        steps = t.user_attrs["train_steps"]
        run_dir = tmp_path / "study" / "trials" / str(t.number)
        plan = json.loads((run_dir / "budget.json").read_text())
        assert plan["steps"] == steps and plan["timings"]["step_s"] == t.user_attrs["step_time_s"]
        assert t.user_attrs["final_step"] == steps
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        last = [r for r in records if "learning_rate" in r and r["step"] == steps]
        assert last, "the last step's metrics are logged"
        # The logged rate is the schedule at the update's count (steps - 1): within 1% of the end value 0.1 x LR
        # only if the cosine decay spans exactly the derived steps (cut short, it would still be far above).
        assert last[0]["learning_rate"] == pytest.approx(0.1 * LR, rel=0.01)
        assert sorted(t.intermediate_values) == [1]  # reported at evaluation 1 of 2 (the 2nd is the final one)
        config = (run_dir / "config.gin").read_text()
        assert f"warmup_steps = {max(1, round(0.2 * steps))}" in config
        assert f"eval_every = {steps // 2}" in config
    summary = search.finalize(spec)
    best = (tmp_path / "study" / "best.gin").read_text()
    winner = trials[summary["best_trial"]]
    assert f"-> TRAIN_STEPS = {winner.user_attrs['train_steps']}," in best
    assert f"TRAIN_STEPS = {winner.user_attrs['train_steps']}" in best.splitlines()[-1]
    # The whole trial, probe included, stays near its budget (the load of a shared machine can change between the
    # probe and the run: measured once at 120 s, 105 s and 156 s with other jobs starting meanwhile).
    assert all(t.user_attrs["wall_s"] < 1.5 * BUDGET_S for t in trials)


BUDGET_S = float(os.environ.get("QUARK_TUNE_TEST_BUDGET_S", "90"))


def test_probe_measures_the_trials_run_and_its_plan_ends_the_schedule_at_the_derived_step(tmp_path):
    """A real probe of a tiny shape (set-up, compile, steps, evaluation, checkpoint: all measured, all positive),
    a plan from its timings, and the run the plan's bindings configure: TRAIN_STEPS is the derived count, the
    evaluation and checkpoint periods divide it, warm-up is the sampled fraction of it, and the optimizer's
    schedule reaches its end value (0.1 x peak) exactly at the derived step."""
    from quark_jax import gin_utils
    from quark_jax.training.optim import make_schedule

    space = space_lib.parse_space(SPACE)
    params = {**CHEAP, "warmup_fraction": 0.2}
    overrides = tiny_overrides(str(tmp_path / "run"), 10, **{"quark_jax.ModelConfig.head_dim": 16, "BATCH_SIZE": 4,
                                                             "quark_jax.TrainConfig.eval_batches": 1,
                                                             "quark_jax.OptimizerConfig.learning_rate": LR})
    gin_utils.parse([RUN_CONFIG], [*overrides, *space.bindings(params, {"TRAIN_STEPS": 10})])
    timings = budget.measure(gin_utils.build_train_config(), str(tmp_path / "probe"), probe_steps=3,
                             min_probe_s=1.0)
    assert min(timings.setup_s, timings.compile_s, timings.step_s, timings.eval_s, timings.checkpoint_s) > 0
    assert not (tmp_path / "probe").exists() and not (tmp_path / "run").exists()  # nothing left, nothing written
    fixed = (timings.setup_s + timings.compile_s + timings.eval_compile_s + 5 * timings.eval_s
             + 4 * timings.checkpoint_s)
    budget_s = (fixed + 100.5 * timings.step_s) / 0.9  # room for 100 steps, not 101 (10% kept in reserve)
    plan = budget.plan(budget_s, timings, spent_s=0.0, evaluations=4)
    assert plan.steps == 100 and plan.eval_every == 25
    slower = budget.plan(budget_s, dataclasses.replace(timings, step_s=2 * timings.step_s), evaluations=4)
    assert slower.steps == 48  # twice the step time: half the steps, down to a multiple of 4

    gin_utils.parse([RUN_CONFIG], [*overrides, *space.bindings(params, {"TRAIN_STEPS": plan.steps}), *plan.bindings()])
    config = gin_utils.build_train_config()
    assert (config.steps, config.eval_every, config.checkpoint.period) == (100, 25, 25)
    assert config.optimizer.warmup_steps == 20
    schedule = make_schedule(config.optimizer, config.steps)
    assert float(schedule(config.optimizer.warmup_steps)) == pytest.approx(LR)
    assert float(schedule(plan.steps)) == pytest.approx(0.1 * LR)
    assert float(schedule(plan.steps // 2)) > 0.5 * LR


def test_the_demo_shape_space_gives_valid_models_for_every_width():
    """configs/tune/demo_shape.yaml: every width, depth and MLP ratio at its range's ends builds a valid
    ModelConfig (heads x 64 = d_model, key/value heads dividing the heads, MLP width a multiple of 32), and
    warm-up is the sampled fraction of the trial's steps."""
    from quark_jax.models.config import ModelConfig

    space = space_lib.load_space(os.path.join(REPO, "configs", "tune", "demo_shape.yaml"))
    model = "quark_jax.ModelConfig."
    for d_model in space[model + "d_model"].choices:
        for layers in (2, 6):
            for ratio in (2.0, 4.0):
                params = {model + "d_model": d_model, model + "num_layers": layers, "mlp_ratio": ratio,
                          "BATCH_SIZE": 4,
                          "quark_jax.OptimizerConfig.learning_rate": 1e-3, "warmup_fraction": 0.1}
                values = space.values(params, {"TRAIN_STEPS": 250})
                config = ModelConfig(**{k[len(model):]: v for k, v in values.items() if k.startswith(model)},
                                     head_dim=64)
                assert config.num_heads * config.head_dim == d_model
                assert config.num_heads % config.num_kv_heads == 0 and config.mlp_dim % 32 == 0
                assert abs(config.mlp_dim - ratio * d_model) <= 16
                assert values["quark_jax.OptimizerConfig.warmup_steps"] == 25
    assert "mlp_ratio" not in " ".join(space.bindings(params, {"TRAIN_STEPS": 250}))  # a variable, not a binding
