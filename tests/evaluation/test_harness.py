"""The evaluation harness (quark_jax.evaluation): tasks, batched scoring and generation, report, regression gate.

Each figure is checked against an independent computation on the shared tiny run (``trained_run``): the
model's own ``score`` / ``generate`` / a full ``score_tokens`` forward."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

import quark_jax as qj
from quark_jax.evaluation import harness, regression, report, tasks

MC_ITEMS = [
    {"question": "What is two plus three?", "choices": ["four", "five", "six"], "answer": 1},
    {"question": "Which keyword defines a function?", "choices": ["def", "class", "lambda", "import"], "answer": 0},
    {"question": "What does len return?", "choices": ["a length", "a list"], "answer": "a length"},
    {"question": "Which number comes after seven?", "choices": ["six", "eight", "nine"], "answer": 1},
    {"question": "Which module handles paths?", "choices": ["os.path", "math", "json"], "answer": 0},
    {"question": "What is ten minus four?", "choices": ["six", "five", "seven", "four"], "answer": 0},
]


def write_task(directory, name: str, spec: dict, examples: list[dict] | None = None) -> str:
    """A task YAML (``spec`` plus ``task``) with its JSONL next to it; returns the YAML path."""
    import yaml

    directory = str(directory)
    if examples is not None:
        with open(os.path.join(directory, f"{name}.jsonl"), "w") as f:
            f.writelines(json.dumps(e) + "\n" for e in examples)
    spec = {"task": name, "data": f"{name}.jsonl", **spec}
    path = os.path.join(directory, f"{name}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(spec, f)
    return path


MC_SPEC = {"output_type": "multiple_choice", "prompt": "Question: {question}\nAnswer:", "target": "answer",
           "choices": "choices", "metrics": ["acc", "acc_norm"]}


@pytest.fixture(scope="module")
def model(trained_run):
    return qj.load(trained_run["model_dir"])


@pytest.fixture(scope="module")
def mc_task(tmp_path_factory):
    return tasks.load_task(write_task(tmp_path_factory.mktemp("mc"), "mc", MC_SPEC, MC_ITEMS))


def test_multiple_choice_matches_independent_scoring(model, mc_task):
    result = harness.evaluate(model, [mc_task], batch_size=4, progress=False)
    task = result["tasks"]["mc"]
    assert task["n"] == len(MC_ITEMS) and task["output_type"] == "multiple_choice"
    acc, acc_norm = [], []
    for item, record in zip(MC_ITEMS, task["samples"]):
        context = f"Question: {item['question']}\nAnswer:"
        scored = model.score([context] * len(item["choices"]), [" " + c for c in item["choices"]])
        lls = np.array([s["logprob"] for s in scored])
        np.testing.assert_allclose(record["loglikelihoods"], lls, atol=1e-4)
        gold = item["answer"] if isinstance(item["answer"], int) else item["choices"].index(item["answer"])
        acc.append(float(np.argmax(lls) == gold))
        acc_norm.append(float(np.argmax(lls / np.array([len(c) for c in item["choices"]])) == gold))
    figures = task["metrics"]
    assert figures["acc"]["value"] == pytest.approx(np.mean(acc))
    assert figures["acc_norm"]["value"] == pytest.approx(np.mean(acc_norm))
    for f in figures.values():
        assert 0.0 <= f["ci_low"] <= f["value"] <= f["ci_high"] <= 1.0
    assert result["step"] == model.step and result["config"]["batch_size"] == 4
    # Deterministic: the same call gives the same results (intervals included); limit takes the first items.
    again = harness.evaluate(model, [mc_task], batch_size=3, limit=2, progress=False)
    assert again["tasks"]["mc"]["samples"] == task["samples"][:2]


def test_lm_eval_split_moves_trailing_whitespace(model):
    generator = model.generator
    ctx, cont = harness.encode_pair(generator, "Answer: ", "five")
    assert ctx == generator._encode("Answer:", start=True)
    assert ctx + cont == generator._encode("Answer: five", start=True)
    assert harness.encode_pair(generator, "", "five") == ([generator.eos_id], generator._encode("five"))


def test_rolling_perplexity_matches_a_full_forward(model, tmp_path):
    texts = [{"text": "def add(a, b):\n    return a + b\n"},
             {"text": "import os\nprint(os.path.join('a', 'b'))\n", "kind": "code"}]
    path = write_task(tmp_path, "ppl", {"output_type": "loglikelihood_rolling", "text": "text", "domain": "code",
                                        "metrics": ["perplexity", "bits_per_byte"]}, texts)
    result = harness.evaluate(model, path, batch_size=2, progress=False)["tasks"]["ppl"]
    ids = [model.generator._encode(t["text"]) for t in texts]
    scores = model.generator.score_tokens([[model.generator.eos_id]] * 2, ids)
    nll = -sum(sum(s) for s in scores)
    tokens = sum(len(i) for i in ids)
    nbytes = sum(len(t["text"].encode()) for t in texts)
    assert result["metrics"]["perplexity"]["value"] == pytest.approx(math.exp(nll / tokens), rel=1e-5)
    assert result["metrics"]["bits_per_byte"]["value"] == pytest.approx(nll / (math.log(2) * nbytes), rel=1e-5)
    assert result["domain"] == "code" and [r["tokens"] for r in result["samples"]] == [len(i) for i in ids]


def test_rolling_windows_predict_every_token_once_within_the_context():
    tokens = list(range(100, 137))
    windows = harness.rolling_windows(tokens, [1], 16)
    assert [t for _, predicted in windows for t in predicted] == tokens
    assert windows[0] == ([1], tokens[:15])
    for context, predicted in windows[1:]:
        assert len(context) + len(predicted) <= 16 and len(context) >= 8
        start = tokens.index(predicted[0])
        assert context == tokens[start - len(context): start]  # conditioned on the tokens just before


def test_generation_exact_match_against_independent_generation(model, tmp_path):
    prompts = ["def ", "import ", "class ", "return "]
    expected = model.generate(prompts, max_new_tokens=6, stop=["\n"])
    # Two targets are the model's own greedy completions, two are not: exact match is 0.5 exactly.
    items = [{"p": p, "t": e if i < 2 else e + " nope"} for i, (p, e) in enumerate(zip(prompts, expected))]
    path = write_task(tmp_path, "gen", {"output_type": "generate_until", "prompt": "{p}", "target": "t",
                                        "until": ["\n"], "max_tokens": 6, "metrics": ["exact_match", "rouge"]}, items)
    result = harness.evaluate(model, path, batch_size=3, progress=False)["tasks"]["gen"]
    assert [r["predictions"] for r in result["samples"]] == [[e] for e in expected]
    assert [r["metrics"]["exact_match"] for r in result["samples"]] == [1.0, 1.0, 0.0, 0.0]
    assert result["metrics"]["exact_match"]["value"] == 0.5
    assert {"rouge1", "rouge2", "rougeL", "rougeLsum"} <= set(result["metrics"])


def test_code_task_through_the_sandbox(model, tmp_path):
    # The prompt is a whole program ending in a comment opener: the completion (cut at the first newline)
    # stays inside the comment, so the tests' outcome is fixed by the prompt: one example passes, one fails.
    items = [{"code": "def f():\n    return 1\n\n# ", "tests": "assert f() == 1\n"},
             {"code": "def f():\n    return 1\n\n# ", "tests": "assert f() == 2\n"}]
    path = write_task(tmp_path, "code", {"output_type": "generate_until", "prompt": "{code}", "tests": "tests",
                                         "until": ["\n"], "max_tokens": 4, "samples": 2, "temperature": 1.0,
                                         "metrics": ["pass@1", "pass@2"]}, items)
    first = harness.evaluate(model, path, batch_size=4, progress=False, seed=3)["tasks"]["code"]
    assert [r["tests_passed"] for r in first["samples"]] == [[True, True], [False, False]]
    assert first["metrics"]["pass@1"]["value"] == 0.5 and first["metrics"]["pass@2"]["value"] == 0.5
    again = harness.evaluate(model, path, batch_size=1, progress=False, seed=3)["tasks"]["code"]
    assert [r["predictions"] for r in again["samples"]] == [r["predictions"] for r in first["samples"]]


def test_pass_at_k_from_fixed_predictions(tmp_path):
    items = [{"code": "def add(a, b):\n", "tests": "assert add(1, 2) == 3\n"},
             {"code": "def add(a, b):\n", "tests": "assert add(2, 2) == 4\n"}]
    task = tasks.load_task(write_task(tmp_path, "add", {
        "output_type": "generate_until", "prompt": "{code}", "tests": "tests", "samples": 2, "temperature": 0.8,
        "metrics": ["pass@1", "pass@2"]}, items))
    right, wrong = "    return a + b\n", "    return a - b\n"
    out = harness.score_generations(task, tasks.load_examples(task), [[right, wrong], [right, right]])
    assert out["metrics"]["pass@1"]["value"] == pytest.approx(0.75)  # (1/2 + 2/2) / 2
    assert out["metrics"]["pass@2"]["value"] == pytest.approx(1.0)
    assert [r["tests_passed"] for r in out["samples"]] == [[True, False], [True, True]]


def _one_line_error(call, *needles):
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, (needle, message)
    return message


def test_bad_input_is_one_line_naming_file_and_line(tmp_path):
    _one_line_error(lambda: tasks.find_tasks("no_such_task"), "no_such_task", "built-in tasks are")
    # A missing data file names the YAML and the data path.
    path = write_task(tmp_path, "nodata", MC_SPEC)
    _one_line_error(lambda: tasks.load_task(path), path, "nodata.jsonl", "not found")
    # A malformed JSONL line: FILE:LINE.
    path = write_task(tmp_path, "broken", MC_SPEC, MC_ITEMS[:2])
    with open(os.path.join(tmp_path, "broken.jsonl"), "a") as f:
        f.write('{"question": "oops", \n')
    task = tasks.load_task(path)
    _one_line_error(lambda: tasks.load_examples(task), f"{tmp_path}/broken.jsonl:3", "not valid JSON")
    # A template naming a field the example lacks: FILE:LINE and the field.
    path = write_task(tmp_path, "field", {**MC_SPEC, "prompt": "Q: {question} ({topic})"}, MC_ITEMS[:2])
    _one_line_error(lambda: tasks.load_examples(tasks.load_task(path)), "field.jsonl:1", "'topic'")
    # A metric the output type does not allow, an unknown key, a bad output type, bad YAML.
    path = write_task(tmp_path, "badmetric", {**MC_SPEC, "metrics": ["bleu"]}, MC_ITEMS[:1])
    _one_line_error(lambda: tasks.load_task(path), path, "'bleu'")
    path = write_task(tmp_path, "badkey", {**MC_SPEC, "promt": "x"}, MC_ITEMS[:1])
    _one_line_error(lambda: tasks.load_task(path), path, "unknown key 'promt'")
    path = write_task(tmp_path, "badtype", {**MC_SPEC, "output_type": "loglikelihood"}, MC_ITEMS[:1])
    _one_line_error(lambda: tasks.load_task(path), path, "output_type")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("task: x\ndata: [unclosed\n")
    _one_line_error(lambda: tasks.load_task(bad_yaml), str(bad_yaml), "not valid YAML")
    path = write_task(tmp_path, "noref", {"output_type": "generate_until", "prompt": "{question}",
                                          "metrics": ["exact_match"], "tests": "question"}, MC_ITEMS[:1])
    _one_line_error(lambda: tasks.load_task(path), path, "'exact_match'", "'target'")
    path = write_task(tmp_path, "gold", MC_SPEC, [{**MC_ITEMS[0], "answer": 7}])
    _one_line_error(lambda: tasks.load_examples(tasks.load_task(path)), "gold.jsonl:1", "not an index")


def test_report_and_curves_over_two_checkpoints(trained_run, mc_task, tmp_path):
    results = []
    for step in (20, 40):
        loaded = qj.load(trained_run["model_dir"], step=step)
        results.append(harness.evaluate(loaded, [mc_task], batch_size=8, limit=4, progress=False,
                                        model_dir=trained_run["model_dir"]))
    assert [r["step"] for r in results] == [20, 40]
    out = tmp_path / "report"
    written = report.write_report(results, str(out))
    md = (out / "report.md").read_text()
    assert "| mc | acc | 4 |" in md and "| mc | acc_norm | 4 |" in md and "step 20" in md and "step 40" in md
    assert "loglikelihoods" not in md  # samples stay out of the tables
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3  # the bars and one curve per metric
    assert (out / "curve_mc_acc.png").read_bytes()[:4] == b"\x89PNG" and (out / "bars_mc.png").is_file()
    saved = json.loads((out / "results.json").read_text())
    assert [c["step"] for c in saved["checkpoints"]] == [20, 40]
    assert "samples" not in saved["checkpoints"][0]["tasks"]["mc"]
    assert len((out / "samples_step40_mc.jsonl").read_text().splitlines()) == 4
    assert set(written) >= {"results", "report.md", "report.html", "bars_mc.png"}
    single = tmp_path / "single"
    report.write_report(results[-1], str(single))
    assert "value [CI]" in (single / "report.md").read_text() and (single / "samples_mc.jsonl").is_file()


def test_regression_gate(tmp_path):
    result = {"model_dir": "run", "step": 40, "config": {}, "tasks": {
        "mc": {"n": 6, "metrics": {"acc": {"value": 0.5, "ci_low": 0.2, "ci_high": 0.8},
                                   "acc_norm": {"value": 0.33, "ci_low": 0.1, "ci_high": 0.6}}},
        "ppl": {"n": 2, "metrics": {"perplexity": {"value": 40.0, "ci_low": 30.0, "ci_high": 50.0}}}}}
    path = tmp_path / "base.json"
    baseline = regression.write_baseline(result, str(path))
    assert regression.read_baseline(str(path)) == baseline
    assert baseline["tasks"]["ppl"]["perplexity"] == {"value": 40.0, "tolerance": 2.0, "higher_is_better": False}
    assert regression.compare(result, baseline) == []
    # acc 0.1 higher than now: beyond the 0.05 tolerance; acc_norm 0.03 higher: within it.
    baseline["tasks"]["mc"]["acc"]["value"] = 0.6
    baseline["tasks"]["mc"]["acc_norm"]["value"] = 0.36
    baseline["tasks"]["ppl"]["perplexity"]["value"] = 38.5  # 40 <= 38.5 + 2: passes
    found = regression.compare(result, baseline)
    assert found == [regression.Regression("mc", "acc", 0.6, 0.5, 0.05, True)]
    table = regression.format_regressions(found)
    assert "| mc | acc | 0.6 | 0.5 | >= 0.55 |" in table
    baseline["tasks"]["ppl"]["perplexity"]["value"] = 37.0  # 40 > 37 + 2 (the stored tolerance)
    assert [(r.task, r.metric) for r in regression.compare(result, baseline)] == [("mc", "acc"), ("ppl", "perplexity")]
    _one_line_error(lambda: regression.read_baseline(str(tmp_path / "none.json")), "none.json", "not found")


def test_cli_main_report_gate_and_usage_errors(trained_run, mc_task, tmp_path, capsys):
    from quark_jax.evaluation.cli_main import eval_tasks_main

    out = tmp_path / "out"
    base = tmp_path / "base.json"
    code = eval_tasks_main(trained_run["model_dir"], mc_task.path, str(out), batch_size=8, limit=3,
                           write_baseline=str(base), progress=False)
    printed = capsys.readouterr().out
    assert code == 0 and "| mc | acc | 3 |" in printed and (out / "report.html").is_file()
    stored = json.loads(base.read_text())
    stored["tasks"]["mc"]["acc"]["value"] += 0.5
    base.write_text(json.dumps(stored))
    assert eval_tasks_main(trained_run["model_dir"], mc_task.path, str(out), batch_size=8, limit=3,
                           baseline=str(base), progress=False) == 1
    assert "| mc | acc |" in capsys.readouterr().out.split("regression(s):")[1]
    _one_line_error(lambda: eval_tasks_main(trained_run["model_dir"], "nope", str(out)), "unknown task 'nope'")


def test_builtin_suites_load_and_reference_solutions_pass():
    found = tasks.find_tasks("all")
    names = {t.task for t in found}
    assert {"stdlib_mc", "code_doctest", "stdlib_qa"} <= names
    assert [t.task for t in tasks.find_tasks("stdlib_mc,code_doctest")] == ["stdlib_mc", "code_doctest"]
    code = next(t for t in found if t.task == "code_doctest")
    examples = tasks.load_examples(code, limit=3)
    # The reference solutions pass their doctest-derived tests in the sandbox; a wrong body does not.
    out = harness.score_generations(code, examples, [[ex["solution"], "    return None\n"] for ex in examples])
    assert [r["tests_passed"] for r in out["samples"]] == [[True, False]] * 3
    assert out["metrics"]["pass@1"]["value"] == pytest.approx(0.5)
    assert out["metrics"]["pass@2"]["value"] == pytest.approx(1.0)


RETRIEVAL_PASSAGES = [
    {"id": "json.dumps", "text": "json.dumps\nSerialize obj to a JSON formatted str."},
    {"id": "json.loads", "text": "json.loads\nDeserialize s (a str, bytes or bytearray) to a Python object."},
    {"id": "os.path.join", "text": "os.path.join\nJoin two or more pathname components."},
    {"id": "math.sqrt", "text": "math.sqrt\nReturn the square root of x."},
    {"id": "shutil.copy", "text": "shutil.copy\nCopy data and mode bits."},
    {"id": "re.compile", "text": "re.compile\nCompile a regular expression pattern, returning a Pattern object."},
]
RETRIEVAL_QUERIES = [
    {"query": "What does json.dumps do?", "relevant": ["json.dumps"]},
    {"query": "How do I join paths?", "relevant": ["os.path.join"]},
    {"query": "square root", "relevant": ["math.sqrt", "re.compile"]},
    {"query": "Compile a regular expression pattern, returning a Pattern object.", "relevant": "re.compile"},
]


def test_retrieval_task_ranks_the_pool_with_the_models_embeddings(model, tmp_path):
    """The figures equal the textbook definitions over a ranking computed here from the embedder's vectors
    (queries with the query prefix, passages with the passage prefix, inner product)."""
    from quark_jax.retrieval.embedder import Embedder

    with open(tmp_path / "pool.jsonl", "w") as f:
        f.writelines(json.dumps(p) + "\n" for p in RETRIEVAL_PASSAGES)
    spec = {"output_type": "retrieval", "prompt": "{query}", "target": "relevant", "passages": "pool.jsonl"}
    task = tasks.load_task(write_task(tmp_path, "ret", spec, RETRIEVAL_QUERIES))
    assert task.metrics == ("recall@1", "recall@10", "mrr", "ndcg@10")
    result = harness.evaluate(model, [task], batch_size=4, progress=False)["tasks"]["ret"]

    embedder = Embedder(model)
    passages = embedder.embed([p["text"] for p in RETRIEVAL_PASSAGES], kind="passage")
    queries = embedder.embed([q["query"] for q in RETRIEVAL_QUERIES], kind="query")
    order = np.argsort(-(queries @ passages.T), axis=1, kind="stable")
    reciprocal, first = [], []
    for q, ranking in zip(RETRIEVAL_QUERIES, order):
        relevant = {q["relevant"]} if isinstance(q["relevant"], str) else set(q["relevant"])
        ranks = [r + 1 for r, i in enumerate(ranking) if RETRIEVAL_PASSAGES[i]["id"] in relevant]
        reciprocal.append(1 / min(ranks))
        first.append(sum(1 for r in ranks if r == 1) / len(relevant))
    figures = result["metrics"]
    assert figures["mrr"]["value"] == pytest.approx(np.mean(reciprocal), abs=1e-6)
    assert figures["recall@1"]["value"] == pytest.approx(np.mean(first), abs=1e-6)
    assert figures["recall@10"]["value"] == 1.0  # six passages: everything is in the top 10
    assert 0 < figures["ndcg@10"]["value"] <= 1
    assert [s["top"] for s in result["samples"]] == [[RETRIEVAL_PASSAGES[i]["id"] for i in row] for row in order]
    assert result["passages"] == 6 and '"pooling": "mean"' in result["embedder"]


def test_retrieval_task_errors_name_the_file_and_line(model, tmp_path):
    with open(tmp_path / "pool.jsonl", "w") as f:
        f.writelines(json.dumps(p) + "\n" for p in RETRIEVAL_PASSAGES[:2])
    spec = {"output_type": "retrieval", "prompt": "{query}", "target": "relevant", "passages": "pool.jsonl"}
    task = tasks.load_task(write_task(tmp_path, "ret", spec, RETRIEVAL_QUERIES[:2]))
    with pytest.raises(ValueError, match=r"ret.jsonl:2: relevant passage 'os.path.join' is not in .*pool.jsonl"):
        harness.evaluate(model, [task], progress=False)
    with pytest.raises(ValueError, match=r"passages file 'missing.jsonl' not found"):
        tasks.load_task(write_task(tmp_path, "ret2", {**spec, "passages": "missing.jsonl"}, RETRIEVAL_QUERIES))
    with pytest.raises(ValueError, match=r"missing required key 'passages' \(output_type retrieval needs it\)"):
        tasks.load_task(write_task(tmp_path, "ret3", {k: v for k, v in spec.items() if k != "passages"}, []))


def test_the_shipped_retrieval_suite_is_well_posed():
    task = tasks.find_tasks("stdlib_retrieval")[0]
    pool = {p["id"] for p in harness.read_passages(task.passages)}
    examples = tasks.load_examples(task)
    assert len(examples) == 100 and len(pool) == 1000
    assert all(set(e["relevant"]) <= pool for e in examples)
