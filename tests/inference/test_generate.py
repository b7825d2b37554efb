"""The generation engine on a tiny random model: batching, stop conditions, seeds, logprobs and scoring,
compile-once buckets, prefix caching, beam search and the persistent compilation cache."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import numpy as np
import pytest

from inference_helpers import EOS, tiny_config, tiny_model
from quark_jax.inference.generate import Generator, Request

PROMPTS = [[5, 6, 7], [9, 10, 11, 12, 13, 14, 15, 16, 17, 18], [20], [30, 31, 32, 33, 34]]


@pytest.fixture(scope="module")
def generator():
    graphdef, params = tiny_model()
    return Generator(graphdef, params, eos_id=EOS)


def greedy(gen, prompts, n=12, **kw):
    return gen.generate_requests([Request(p, n, **kw) for p in prompts])


def test_batched_equals_one_at_a_time(generator):
    batched = greedy(generator, PROMPTS)
    for prompt, together in zip(PROMPTS, batched):
        alone = greedy(generator, [prompt])[0]
        assert alone.tokens == together.tokens
        np.testing.assert_allclose(alone.logprobs, together.logprobs, atol=1e-4)


def test_per_request_max_tokens_and_finish_reasons(generator):
    out = generator.generate_requests([Request(p, n) for p, n in zip(PROMPTS, [1, 3, 7, 12])])
    full = greedy(generator, PROMPTS)
    for c, f, n in zip(out, full, [1, 3, 7, 12]):
        if f.finish_reason == "length" or len(f.tokens) >= n:
            assert c.tokens == f.tokens[:n] and c.finish_reason == "length"
        else:  # the full run ended on EOS before this row's limit: so does this row
            assert f.finish_reason == "eos" and c.tokens == f.tokens and c.finish_reason == "eos"


def test_eos_and_stop_sequences_end_a_row():
    graphdef, params = tiny_model()
    reference = Generator(graphdef, params, eos_id=EOS).generate_requests([Request(PROMPTS[1], 12)])[0]
    tokens = reference.tokens
    assert reference.finish_reason == "length" and len(tokens) == 12, "pick a prompt whose greedy run has no EOS"
    # Make the 6th generated token the end-of-sequence id: the row ends just before it.
    eos_gen = Generator(graphdef, params, eos_id=tokens[5])
    first = tokens.index(tokens[5])
    out = eos_gen.generate_requests([Request(PROMPTS[1], 12)])[0]
    assert out.tokens == tokens[:first] and out.finish_reason == "eos"
    # A stop sequence (tokens 3..4) ends the row after it, stop tokens included at token level.
    stop = tokens[3:5]
    out = Generator(graphdef, params, eos_id=EOS).generate_requests([Request(PROMPTS[1], 12, stop=[[99999], stop])])[0]
    end = next(i + len(stop) for i in range(len(tokens)) if tokens[i:i + len(stop)] == stop)
    assert out.tokens == tokens[:end] and out.finish_reason == "stop"


def test_seeds_are_per_request_and_reproducible(generator):
    sample = dict(temperature=1.0)
    alone = generator.generate_requests([Request(PROMPTS[0], 10, seed=7, **sample)])[0].tokens
    crowd = generator.generate_requests(
        [Request(PROMPTS[2], 10, seed=1, **sample), Request(PROMPTS[0], 10, seed=7, **sample),
         Request(PROMPTS[1], 10, seed=3, **sample)]
    )
    assert crowd[1].tokens == alone
    others = {tuple(generator.generate_requests([Request(PROMPTS[0], 10, seed=s, **sample)])[0].tokens)
              for s in range(4)}
    assert len(others) > 1, "different seeds should sample different continuations"


def test_top_k_one_and_tiny_top_p_are_greedy(generator):
    base = [c.tokens for c in greedy(generator, PROMPTS)]
    for kw in (dict(temperature=1.5, top_k=1), dict(temperature=1.5, top_p=1e-6)):
        assert [c.tokens for c in greedy(generator, PROMPTS, seed=3, **kw)] == base, kw


def test_top_k_samples_only_from_the_top_k(generator):
    # With top_k=2, every sampled token must be one of the two most likely under the model.
    out = generator.generate_requests([Request(PROMPTS[0], 8, temperature=2.0, top_k=2, seed=s) for s in range(4)])
    for c in out:
        prefix = list(PROMPTS[0])
        for token in c.tokens:
            candidates = generator.score_tokens([prefix] * 97, [[v] for v in range(97)])
            best_two = np.argsort([-c[0] for c in candidates])[:2]
            assert token in best_two
            prefix.append(token)
        break  # one row is enough (each token costs a scoring call)


def test_logprobs_of_generated_tokens_equal_scoring(generator):
    out = generator.generate_requests([Request(p, 10, temperature=1.0, seed=i) for i, p in enumerate(PROMPTS)])
    scored = generator.score_tokens(PROMPTS, [c.tokens for c in out])
    for c, s in zip(out, scored):
        np.testing.assert_allclose(c.logprobs, s, atol=1e-4)


def test_no_recompiles_inside_a_bucket(generator):
    requests = lambda lengths, **kw: [Request(list(range(5, 5 + n)), 9, **kw) for n in lengths]  # noqa: E731
    # Warm-up of one bucket (batch 2, prompt 16, 16 new tokens): its greedy-only and its sampling variant.
    generator.generate_requests(requests([3, 7]))
    generator.generate_requests(requests([3, 7], temperature=1.0))
    traces, compiled = generator.trace_count[0], generator.num_compiled()
    generator.generate_requests(requests([16, 1]))
    generator.generate_requests(requests([2, 9], temperature=0.7, seed=11))
    generator.generate_requests([Request([5, 6], 16, seed=2), Request([7], 10, temperature=1.0)])
    assert generator.trace_count[0] == traces and generator.num_compiled() == compiled
    generator.generate_requests(requests([17, 1]))  # a new prompt bucket compiles once
    assert generator.trace_count[0] == traces + 1


def test_prefix_cache_gives_identical_outputs(generator):
    system = list(range(40, 59))  # 19 tokens: a prefix bucket of 32
    prefix = generator.prefill_prefix(system)
    with_prefix = generator.generate_requests([Request(p, 10) for p in PROMPTS], prefix=prefix)
    without = generator.generate_requests([Request(system + p, 10) for p in PROMPTS])
    for a, b in zip(with_prefix, without):
        assert a.tokens == b.tokens
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-4)
    sampled = lambda **kw: [c.tokens for c in generator.generate_requests(  # noqa: E731
        [Request(p, 10, temperature=1.0, seed=i) for i, p in enumerate(PROMPTS)], **kw)]
    assert sampled(prefix=prefix) == [c.tokens for c in generator.generate_requests(
        [Request(system + p, 10, temperature=1.0, seed=i) for i, p in enumerate(PROMPTS)])]


def test_beam_search_is_exact_when_beams_cover_every_sequence():
    # Vocabulary 6, 3 new tokens: 80 beams keep every hypothesis, so beam search must find the best of all
    # sequences (ended by EOS at any step, or 3 tokens long) under the length-normalised score.
    graphdef, params = tiny_model(tiny_config(vocab_size=6, init_std=0.5), seed=1)
    gen = Generator(graphdef, params, eos_id=EOS)
    prompt, steps = [2, 3, 4], 3
    for alpha in (0.0, 1.0):
        candidates = [list(s) for n in range(1, steps + 1) for s in itertools.product(range(6), repeat=n)
                      if (EOS not in s[:-1]) and (s[-1] == EOS or n == steps)]
        scores = [sum(x) for x in gen.score_tokens([prompt] * len(candidates), candidates)]
        normalised = [s / len(c) ** alpha for s, c in zip(scores, candidates)]
        best = candidates[int(np.argmax(normalised))]
        tokens, score = gen.beam_search([prompt], num_beams=80, max_new_tokens=steps, length_penalty=alpha)[0]
        assert tokens == [t for t in best if t != EOS], alpha
        assert abs(score - max(normalised)) < 1e-4


def test_one_beam_is_greedy():
    # With an end-of-sequence id the model never produces, one beam follows the argmax path exactly.
    graphdef, params = tiny_model()
    gen = Generator(graphdef, params, eos_id=10_000)
    base = greedy(gen, PROMPTS, n=8)
    beams = gen.beam_search(PROMPTS, num_beams=1, max_new_tokens=8, length_penalty=0.0)
    assert [tokens for tokens, _ in beams] == [g.tokens for g in base]
    assert [score for _, score in beams] == pytest.approx([sum(g.logprobs) for g in base], abs=1e-4)


def test_bad_input_is_rejected(generator):
    with pytest.raises(ValueError, match="at least one token"):
        Request([], 4)
    with pytest.raises(ValueError, match="max_new_tokens"):
        Request([1], 0)
    with pytest.raises(ValueError, match="top_p"):
        Request([1], 4, temperature=1.0, top_p=0.0)
    with pytest.raises(ValueError, match="continuations"):
        generator.score_tokens([[1]], [])
    with pytest.raises(ValueError, match="beam search"):
        generator.generate(["x"], num_beams=2, temperature=1.0)


CACHE_SCRIPT = """
import os, sys
sys.path.insert(0, {tests!r})
from inference_helpers import tiny_model
from quark_jax.inference.generate import Generator, Request
graphdef, params = tiny_model()
gen = Generator(graphdef, params, eos_id=1)
gen.generate_requests([Request([5, 6, 7], 4)])
print("CACHE", gen.trace_count[0], sorted(os.listdir({cache!r})))
"""


def test_persistent_compilation_cache_survives_a_restart(tmp_path):
    cache = str(tmp_path / "jax_cache")
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    env.update(QUARK_JAX_COMPILATION_CACHE=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PLATFORMS="cpu")
    script = CACHE_SCRIPT.format(tests=os.path.dirname(__file__), cache=cache)
    runs = []
    for _ in range(2):
        result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        runs.append(next(line for line in result.stdout.splitlines() if line.startswith("CACHE")))
    first, second = runs
    assert "[]" not in first, "the first process should have written compiled executables to the cache"
    assert first == second, "the restarted process should reuse the cached executables, not add new ones"
