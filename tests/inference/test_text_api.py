"""The text API (`qj.load(...).generate/complete/score`) and `quark generate` on the tiny trained run."""

from __future__ import annotations

import json

import pytest

from conftest import assert_greedy_completion, run_quark


@pytest.fixture(scope="module")
def model(trained_run):
    import quark_jax as qj

    return qj.load(trained_run["model_dir"])


def test_text_generation_options(model):
    prompts = ["def add(a, b):", "import os\n"]
    base = model.complete(prompts, max_new_tokens=12)
    # Greedy completions are the arg-max continuations of a plain full forward pass, with its log-probabilities.
    for prompt, completion in zip(prompts, base):
        assert_greedy_completion(model, prompt, completion, 12)
    # A stop string taken from the greedy output ends the text just before it.
    text = base[0].text
    stop = next((text[i:i + 2] for i in range(1, len(text) - 1) if text[i:i + 2].strip()), None)
    assert stop is not None, f"greedy output {text!r} has no two-character non-blank stop string"
    cut = model.complete(prompts[:1], max_new_tokens=12, stop=[stop])[0]
    assert cut.text == text[: text.find(stop)] and cut.finish_reason == "stop"
    # Shared prefix, prefilled once: same text as writing it into every prompt.
    system = "# utilities\n"
    assert model.generate(["x = 1\n"], 8, prefix=system) == model.generate([system + "x = 1\n"], 8)
    # Beam search: the returned text is the best beam, whose reported score is its length-normalised
    # log-probability as the scoring function computes it (EOS included when the beam ended on it).
    generator = model.generator
    limit = 6
    (beam_tokens, beam_score), = generator.beam_search([list(model.tokenizer.encode(prompts[0]))], 3, limit)
    assert model.generate(prompts[:1], limit, num_beams=3) == [model.tokenizer.decode(beam_tokens)]
    scored = beam_tokens + ([generator.eos_id] if len(beam_tokens) < limit else [])
    logprob = sum(generator.score_tokens([list(model.tokenizer.encode(prompts[0]))], [scored])[0])
    assert beam_score == pytest.approx(logprob / len(scored), abs=1e-4)
    # Seeds make sampling reproducible, and different seeds give different samples.
    sampled = model.generate(prompts, 8, temperature=1.0, seed=5)
    assert sampled == model.generate(prompts, 8, temperature=1.0, seed=5)
    assert any(model.generate(prompts, 8, temperature=1.0, seed=s) != sampled for s in (6, 7, 8))


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
