"""``quark eval --tasks ...``: the harness on one or several checkpoints of a run, the report and the gate.

:func:`eval_tasks_main` is what the CLI calls; it returns the exit status (0 fine, 1 a regression against the
baseline) and raises ``ValueError`` with a one-line message for a user's mistake (unknown task, missing file,
bad YAML or JSONL, bad baseline), which the CLI prints and turns into exit status 2.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence


def default_output(model_dir: str) -> str:
    """Where the report goes unless ``--output`` says: ``MODEL_DIR/eval`` for a local run directory, else
    ``./eval_<run name>``."""
    if "://" in model_dir:
        return os.path.join(os.getcwd(), "eval_" + (model_dir.rstrip("/").rsplit("/", 1)[-1] or "run"))
    return os.path.join(model_dir, "eval")


def eval_tasks_main(model_dir: str, tasks: str, output: str | None = None, batch_size: int = 16,
                    limit: int | None = None, steps: Sequence[int] | None = None, baseline: str | None = None,
                    write_baseline: str | None = None, seed: int = 0, progress: bool = True) -> int:
    """Evaluates ``model_dir`` (its newest checkpoint, or each of ``steps``) on ``tasks`` (a
    :func:`~quark_jax.evaluation.tasks.find_tasks` spec), writes the report under ``output``, prints its
    Markdown table, writes ``write_baseline`` if asked, and checks ``baseline``: returns 1 when a metric
    regressed (the table of regressions printed), else 0."""
    import quark_jax
    from quark_jax.evaluation import harness, regression, report
    from quark_jax.evaluation import tasks as task_lib

    if batch_size < 1:
        raise ValueError(f"--batch_size={batch_size}: must be >= 1")
    if limit is not None and limit < 1:
        raise ValueError(f"--limit={limit}: must be >= 1")
    selected = task_lib.find_tasks(tasks)
    for task in selected:  # bad data fails before any checkpoint is loaded
        task_lib.load_examples(task, limit)
    stored = regression.read_baseline(baseline) if baseline else None
    output = output or default_output(model_dir)

    results = []
    for step in (list(steps) if steps else [None]):
        model = quark_jax.load(model_dir, step=step)
        result = harness.evaluate(model, selected, batch_size=batch_size, limit=limit, progress=progress, seed=seed,
                                  model_dir=model_dir)
        results.append(result)
        del model
    written = report.write_report(results, output)
    print(report.markdown_table(results), end="")
    print(f"report: {written['report.md']} ({written['report.html']})")
    if write_baseline:
        regression.write_baseline(results, write_baseline)
        print(f"baseline written: {write_baseline}")
    _record_in_lineage(model_dir, results, limit, seed, tasks, baseline, stored)
    if stored is not None:
        regressions = regression.compare(results, stored)
        print(regression.format_regressions(regressions), end="", file=sys.stdout)
        if regressions:
            return 1
    return 0


def _record_in_lineage(model_dir: str, results: list[dict], limit: int | None, seed: int, task_spec: str,
                       baseline: str | None, stored: dict | None) -> None:
    """Appends each evaluated checkpoint's figures (and the gate's verdict, with a baseline) to the run's
    ``lineage.json`` (:mod:`quark_jax.lineage`)."""
    from quark_jax import lineage
    from quark_jax.data.fingerprint import file_sha256
    from quark_jax.evaluation import regression

    for result in results:
        record = {"step": result["step"], "source": "quark eval", "tasks": lineage.task_figures(result),
                  "limit": limit, "seed": seed, "task_spec": task_spec}
        if stored is not None:
            found = regression.compare(result, stored)
            record["gate"] = {"baseline": os.path.abspath(baseline), "baseline_sha256": file_sha256(baseline),
                              "passed": not found,
                              "regressions": [r.as_dict() for r in found]}
        try:
            lineage.append_evaluation(model_dir, record)
        except OSError as e:  # a read-only run directory: the report is still written where --output says
            print(f"note: could not record the results in {model_dir}'s lineage.json ({e.strerror or e})",
                  file=sys.stderr)


def pairwise_main(run_a: str, run_b: str, task_spec: str, output: str, limit: int | None = 50, seed: int = 0,
                  batch_size: int = 16) -> int:
    """``quark eval pairwise --a RUN --b RUN --task T --output DIR``: both runs answer the same prompts of one
    generation task (the task's own decoding settings, seed ``seed``), and a blind side-by-side sheet is written
    for people to rate (:mod:`quark_jax.evaluation.pairwise`); ``--read DIR --ratings FILE`` scores it."""
    import quark_jax
    from quark_jax.evaluation import harness, pairwise
    from quark_jax.evaluation import tasks as task_lib

    selected = task_lib.find_tasks(task_spec)
    if len(selected) != 1 or selected[0].output_type != "generate_until":
        raise ValueError(f"--task {task_spec}: pairwise rating needs one generation task (output_type "
                         "generate_until), e.g. --task stdlib_qa")
    task = selected[0]
    prompts = [task_lib.render_prompt(task, e) for e in task_lib.load_examples(task, limit)]
    answers = []
    for run in (run_a, run_b):
        model = quark_jax.load(run)
        answers.append(harness.generate_texts(
            model.generator, prompts, [seed] * len(prompts), task.max_tokens, task.temperature, task.until,
            harness.context_length(model), batch_size))
        del model
    return pairwise.pairwise_write_main(prompts, answers[0], answers[1], output, a_name=run_a, b_name=run_b,
                                        seed=seed, title=f"{task.name}: which answer is better?")
