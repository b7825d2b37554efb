"""The text API (`qj.load(...).generate/complete/score`) and `quark generate` on the tiny trained run."""

from __future__ import annotations

import json

import pytest

from conftest import run_quark


@pytest.fixture(scope="module")
def model(trained_run):
    import quark_jax as qj

    return qj.load(trained_run["model_dir"])


def test_text_generation_options(model):
    prompts = ["def add(a, b):", "import os\n"]
    base = model.complete(prompts, max_new_tokens=12)
    assert [c.text for c in base] == model.generate(prompts, max_new_tokens=12)
    assert all(c.finish_reason in ("eos", "length", "stop") for c in base)
    assert all(len(c.logprobs) == len(c.tokens) for c in base)
    # A stop string taken from the greedy output ends the text just before it.
    text = base[0].text
    stop = text[3:5] if len(text) >= 5 else None
    if stop and stop.strip():
        cut = model.complete(prompts[:1], max_new_tokens=12, stop=[stop])[0]
        assert cut.text == text[: text.find(stop)] and cut.finish_reason == "stop"
    # Shared prefix, prefilled once: same text as writing it into every prompt.
    system = "# utilities\n"
    assert model.generate(["x = 1\n"], 8, prefix=system) == model.generate([system + "x = 1\n"], 8)
    # Beam search returns text; seeds make sampling reproducible.
    assert isinstance(model.generate(prompts, 6, num_beams=3)[0], str)
    assert model.generate(prompts, 8, temperature=1.0, seed=5) == model.generate(prompts, 8, temperature=1.0, seed=5)


def test_score_ranks_the_models_own_continuation_higher(model):
    prompt = "def add(a, b):"
    own = model.generate([prompt], max_new_tokens=6)[0]
    scores = model.score([prompt, prompt], [own, "zzzz qqqq"])
    assert scores[0]["num_tokens"] > 0
    assert scores[0]["logprob"] / scores[0]["num_tokens"] > scores[1]["logprob"] / scores[1]["num_tokens"]


def test_quark_generate_jsonl_quantized(trained_run, tmp_path):
    requests = tmp_path / "requests.jsonl"
    requests.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": "def add(a, b):", "max_new_tokens": 4}, {"prompt": "import ", "seed": 3}, {"prompt": "class "},
    ]))
    result = run_quark("generate", f"--model_dir={trained_run['model_dir']}", f"--input_jsonl={requests}",
                       "--batch_size=2", "--quantize=int8", "--logprobs", "--max_new_tokens=6", "--temperature=0.8")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [line["prompt"] for line in lines] == ["def add(a, b):", "import ", "class "]
    assert all(len(line["logprobs"]) <= 6 for line in lines) and len(lines[0]["logprobs"]) <= 4
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no prompt"}\n')
    result = run_quark("generate", f"--model_dir={trained_run['model_dir']}", f"--input_jsonl={bad}")
    assert result.returncode == 2 and "need a string" in result.stderr


def test_quark_quantize_writes_a_loadable_checkpoint(trained_run, tmp_path):
    out = tmp_path / "int4"
    result = run_quark("quantize", f"--model_dir={trained_run['model_dir']}", f"--out_dir={out}", "--mode=int4")
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_quark("generate", f"--model_dir={out}", "--prompt", "def add(a, b):", "--max_new_tokens=4")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("def add(a, b):")
