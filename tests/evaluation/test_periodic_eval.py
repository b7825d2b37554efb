"""Evaluation suites during training: ``TrainConfig.eval_tasks`` every ``eval_tasks_every`` steps go to
metrics.jsonl (and TensorBoard) as ``eval/<task>/<metric>``."""

from __future__ import annotations

import json

import pytest

import quark_jax as qj
from conftest import RUN_CONFIG, read_metrics, tiny_overrides


def test_trainer_runs_the_task_suites_every_n_steps(tmp_path):
    task_dir = tmp_path / "tasks"
    task_dir.mkdir()
    (task_dir / "mc.jsonl").write_text("".join(json.dumps(item) + "\n" for item in [
        {"question": "What is two plus three?", "choices": ["four", "five"], "answer": 1},
        {"question": "Which keyword defines a function?", "choices": ["def", "class"], "answer": 0},
        {"question": "Which module handles paths?", "choices": ["os.path", "math"], "answer": 0},
    ]))
    (task_dir / "mc.yaml").write_text(
        'task: mc\ndata: mc.jsonl\noutput_type: multiple_choice\nprompt: "Question: {question}\\nAnswer:"\n'
        "target: answer\nchoices: choices\nmetrics: [acc, acc_norm]\n")
    model_dir = tmp_path / "run"
    trainer = qj.Trainer.from_gin(RUN_CONFIG, tiny_overrides(model_dir, 4, **{
        "CHECKPOINT_PERIOD": 4, "quark_jax.TrainConfig.eval_batches": 0,
        "quark_jax.TrainConfig.eval_tasks": repr(str(task_dir / "mc.yaml")),
        "quark_jax.TrainConfig.eval_tasks_every": 2, "quark_jax.TrainConfig.eval_tasks_limit": 2}))
    assert trainer.config.eval_tasks == (str(task_dir / "mc.yaml"),)
    trainer.run()
    records = [r for r in read_metrics(model_dir) if "eval/mc/acc" in r]
    assert [r["step"] for r in records] == [2, 4]
    assert all(set(r) == {"step", "eval/mc/acc", "eval/mc/acc_norm"} for r in records)
    assert all(r["eval/mc/acc"] in (0.0, 0.5, 1.0) for r in records)  # two examples
    assert trainer.last_task_results["tasks"]["mc"]["n"] == 2 and trainer.last_task_results["step"] == 4


def test_a_bad_task_name_fails_before_training(tmp_path):
    trainer = qj.Trainer.from_gin(RUN_CONFIG, tiny_overrides(tmp_path / "run", 4, **{
        "quark_jax.TrainConfig.eval_tasks": "'no_such_task'", "quark_jax.TrainConfig.eval_tasks_every": 2}))
    with pytest.raises(ValueError, match="unknown task 'no_such_task'"):
        trainer.run()
    assert not (tmp_path / "run" / "checkpoints").exists()
