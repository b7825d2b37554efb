"""The built-in suites (``evals/tasks``): the shipped files are exactly what the builder makes, nothing in them
comes from a document the model trained on, every task loads, and code_doctest's tests test something."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import pathlib
import sys

import pytest

from quark_jax.data import corpus
from quark_jax.data.splits import split_of
from quark_jax.evaluation import suites

TASKS_DIR = pathlib.Path(suites.REPO) / "evals" / "tasks"
MANIFEST = json.loads((TASKS_DIR / "data" / "MANIFEST.json").read_text())
CORPUS_TASKS = ("stdlib_qa", "stdlib_summarize", "stdlib_mc", "perplexity_code", "perplexity_prose")


def examples(name: str) -> list[dict]:
    with open(TASKS_DIR / "data" / f"{name}.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_every_suite_is_shipped_and_small():
    assert sorted(p.stem for p in TASKS_DIR.glob("*.yaml")) == sorted(suites.TASKS)
    total = sum(p.stat().st_size for p in (TASKS_DIR / "data").iterdir())
    assert total < 1_000_000
    for name in suites.TASKS:
        assert 30 <= len(examples(name)) <= 100, name
        assert MANIFEST["examples"][name] == len(examples(name))


@pytest.mark.skipif(".".join(map(str, sys.version_info[:3])) != MANIFEST["python"],
                    reason=f"the suites are built from the stdlib of Python {MANIFEST['python']}")
def test_shipped_files_equal_a_fresh_build(tmp_path):
    suites.build(tmp_path)
    built = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    shipped = sorted(p.relative_to(TASKS_DIR) for p in TASKS_DIR.rglob("*") if p.is_file())
    assert built == shipped
    for rel in built:
        assert (tmp_path / rel).read_bytes() == (TASKS_DIR / rel).read_bytes(), f"{rel} differs: rebuild with " \
            "python -m quark_jax.evaluation.suites --output evals/tasks"


@pytest.mark.parametrize("name", CORPUS_TASKS)
def test_corpus_examples_come_from_validation_documents(name):
    validation = {f.relpath for f in corpus.stdlib_files("validation")}
    for example in examples(name):
        assert split_of(example["source"]) == "validation", example
        assert example["source"] in validation, example


def test_chat_examples_are_held_out_instructions():
    validation = {f.relpath for f in corpus.stdlib_files("validation")}
    for example in examples("perplexity_chat"):
        key = example["source"]
        if key.startswith("arithmetic:"):
            # quark_jax.data.instructions splits generated sums by a hash of the question: 1 in 10 held out.
            question = key[len("arithmetic:"):]
            assert int(hashlib.sha256(question.encode()).hexdigest(), 16) % 10 == 0, key
            assert question in example["text"]
        else:
            assert split_of(key) == "validation" and key in validation, example
    with open(suites.INSTRUCTIONS_VALIDATION, encoding="utf-8") as f:
        held_out = {json.loads(line)["prompt"] for line in f}
    for example in examples("perplexity_chat"):
        prompt = example["text"].split("<|user|>")[1].split("<|end|>")[0]
        assert prompt in held_out


def test_questions_are_well_formed():
    for example in examples("stdlib_mc"):
        assert len(example["choices"]) == 4 and len(set(example["choices"])) == 4
        assert 0 <= example["answer"] < 4
    qa = examples("stdlib_qa")
    assert {e["kind"] for e in qa} == {"module", "docstring"}
    for example in qa:
        assert example["answer"] and "\n" not in example["answer"] and len(example["answer"]) <= 60
        assert example["answer"] not in example["question"]
    for example in examples("stdlib_summarize"):
        assert example["summary"] not in example["code"] and "\n" not in example["summary"]


def test_every_task_loads_with_the_harness_loader():
    from quark_jax.evaluation import tasks

    for path in sorted(TASKS_DIR.glob("*.yaml")):
        task = tasks.load_task(path)
        assert task.task == path.stem and pathlib.Path(task.data).is_file()
        loaded = tasks.load_examples(task)
        assert len(loaded) == MANIFEST["examples"][task.task]
        if task.output_type != "loglikelihood_rolling":
            tasks.render_prompt(task, loaded[0])


def test_code_doctest_solutions_pass_and_empty_bodies_fail():
    from quark_jax.evaluation.sandbox import run_tests

    items = examples("code_doctest")
    assert len({e["entry_point"] for e in items}) == len(items) >= 30
    jobs = [(e["prompt"] + e["solution"], e["tests"]) for e in items]
    jobs += [(e["prompt"] + "    pass\n", e["tests"]) for e in items]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda job: run_tests(*job, timeout_s=20.0), jobs))
    solved, empty = results[: len(items)], results[len(items):]
    for e, r in zip(items, solved):
        assert r.passed, (e["entry_point"], r.status, r.stderr[-500:])
    for e, r in zip(items, empty):
        assert not r.passed and r.status == "failed", (e["entry_point"], r.status)
