"""``Generator.score_tokens(..., greedy=True)``: the per-token arg-max flags that lm-evaluation-harness's
``is_greedy`` needs, next to unchanged log-probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from inference_helpers import EOS, tiny_model
from quark_jax.inference.generate import Generator, Request

PROMPTS = [[5, 6, 7], [9, 10, 11, 12, 13, 14, 15, 16, 17, 18], [20], [30, 31, 32, 33, 34]]


@pytest.fixture(scope="module")
def generator():
    graphdef, params = tiny_model()
    return Generator(graphdef, params, eos_id=EOS)


def test_greedy_continuations_are_all_max_and_logprobs_unchanged(generator):
    out = generator.generate_requests([Request(p, 8) for p in PROMPTS])
    continuations = [c.tokens for c in out]
    plain = generator.score_tokens(PROMPTS, continuations)
    logprobs, is_max = generator.score_tokens(PROMPTS, continuations, greedy=True)
    for p, g, flags, c in zip(plain, logprobs, is_max, continuations):
        assert p == g  # the same numbers as the plain scoring path
        assert len(flags) == len(c) and all(flags)


def test_a_changed_token_is_not_max_from_there(generator):
    greedy_tokens = generator.generate_requests([Request(PROMPTS[1], 6)])[0].tokens
    changed = list(greedy_tokens)
    changed[2] = (changed[2] + 1) % 97  # not the arg-max at position 2 (arg-max is unique for random floats)
    _, (flags,) = generator.score_tokens([PROMPTS[1]], [changed], greedy=True)
    assert flags[:2] == [True, True] and flags[2] is False


def test_flags_match_an_argmax_over_the_vocabulary(generator):
    prefix = PROMPTS[0]
    logprobs, flags = generator.score_tokens([prefix] * 97, [[v] for v in range(97)], greedy=True)
    best = int(np.argmax([lp[0] for lp in logprobs]))
    assert [f[0] for f in flags] == [v == best for v in range(97)]
