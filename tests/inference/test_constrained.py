"""Grammar-constrained decoding: token automata against Python's ``re``, and the compiled generate loop under them
(a random-weight model with the project tokenizer, sampling)."""

from __future__ import annotations

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from inference_helpers import tiny_config, tiny_model

from quark_jax.data import tokenizer, tool_calls
from quark_jax.data.hf_tokenizer import SentencePieceTokenizer
from quark_jax.inference import constrained
from quark_jax.inference.generate import Generator, Request

jsonschema = pytest.importorskip("jsonschema")

CALCULATOR = [{"type": "function", "function": {
    "name": "calculator", "description": "evaluates an arithmetic expression",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string", "maxLength": 8},
                                                    "exact": {"type": "boolean"}},
                   "required": ["expression", "exact"], "additionalProperties": False}}}]
SEARCH = [{"type": "function", "function": {
    "name": "search", "description": "searches the docs",
    "parameters": {"type": "object", "properties": {"query": {"type": "string", "maxLength": 6},
                                                    "limit": {"enum": [1, 5, 10]}},
                   "required": ["query", "limit"], "additionalProperties": False}}}]


@pytest.fixture(scope="module")
def vocabulary():
    # The project tokenizer through the plain sentencepiece library (seqio's wrapper would import TensorFlow).
    return SentencePieceTokenizer(str(tokenizer.DEFAULT_SPM_PATH), eos_id=tokenizer.EOS_ID, add_bos=False)


@pytest.fixture(scope="module")
def generator(vocabulary):
    # A small init_std keeps the random model's distributions flat, so sampling explores the grammar.
    graphdef, params = tiny_model(tiny_config(vocab_size=4096, init_std=0.02))
    return Generator(graphdef, params, vocabulary, compilation_cache=False)


def _random_walk(automaton, rng, limit=60):
    """Tokens of a uniformly random path from the start to EOS (None if it did not end within ``limit``)."""
    state, tokens = automaton.initial, []
    for _ in range(limit):
        allowed = np.nonzero(automaton.allowed(state))[0]
        assert len(allowed), "a pruned automaton never leaves a row without a token"
        token = int(rng.choice(allowed))
        if token == automaton.eos_id:
            return tokens
        tokens.append(token)
        state = int(automaton.transitions[state, token])
    return None


@pytest.mark.parametrize("pattern", [r"(cat|dog)s? [0-9]{1,3}( !)?", r"[a-zé]{1,4}-(x|[0-9]+)\.?"])
def test_the_automaton_accepts_exactly_what_the_regex_accepts(vocabulary, pattern):
    automaton = constrained.from_regex(pattern, vocabulary)
    rng = np.random.default_rng(0)
    walked = [w for w in (_random_walk(automaton, rng) for _ in range(150)) if w is not None]
    assert len(walked) > 100
    texts = {vocabulary.decode(w) for w in walked}
    assert all(re.fullmatch(pattern, t) for t in texts), [t for t in texts if not re.fullmatch(pattern, t)]
    assert len(texts) > 30  # the walks cover the language, not one string
    # Hand-made strings and one-character mutations of walked texts, tokenized as the tokenizer does:
    # accepted exactly when re.fullmatch matches.
    alphabet = "catdogs 0123456789!é-x.z"
    candidates = ["cat 1", "dogs 123 !", "cats 1234", "cat  1", "dog 12!", "", "é-7", "abcd-x.", "abcde-1",
                  "a-", "zz-0.", "ab-x1"]
    for t in sorted(texts)[:60]:
        i = int(rng.integers(len(t)))
        candidates.append(t[:i] + alphabet[int(rng.integers(len(alphabet)))] + t[i + 1:])
        candidates.append(t[:i] + t[i + 1:])
    verdicts = [(c, automaton.accepts(vocabulary.encode(c)), bool(re.fullmatch(pattern, c))) for c in candidates]
    assert [v for v in verdicts if v[1] != v[2]] == []
    assert sum(v[2] for v in verdicts) > 10 and sum(not v[2] for v in verdicts) > 10


def test_a_hugging_face_byte_level_tokenizer_spells_the_same_language(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from quark_jax.data.hf_tokenizer import HFTokenizer

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(["the cats and dogs ate 123 apples", "naïve café 42 dogs!"] * 10, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bpe.save(str(tmp_path / "tokenizer.json"))
    vocabulary = HFTokenizer(str(tmp_path / "tokenizer.json"), eos_id=2)
    pattern = r"(cat|dog|café)s? [0-9]{1,3}( !)?"
    automaton = constrained.from_regex(pattern, vocabulary)
    rng = np.random.default_rng(1)
    walked = [w for w in (_random_walk(automaton, rng) for _ in range(100)) if w is not None]
    texts = {vocabulary.decode(w) for w in walked}
    assert len(texts) > 30 and all(re.fullmatch(pattern, t) for t in texts)
    for text in ["cafés 12 !", "dogs 1", "cat 1234", "café  1", "dog 7!"]:
        assert automaton.accepts(vocabulary.encode(text)) == bool(re.fullmatch(pattern, text)), text


def test_a_random_model_under_a_tool_call_schema_gives_valid_calls_100_times_in_100(generator, vocabulary):
    schema = tool_calls.call_schema(CALCULATOR)
    automaton = constrained.from_json_schema(schema, vocabulary)
    completions = generator.complete(["Compute 2+2 with the calculator:"] * 100, max_new_tokens=96,
                                     temperature=1.0, seed=list(range(100)), constraint=automaton)
    calls = [json.loads(c.text) for c in completions]
    for call in calls:
        jsonschema.validate(call, schema)
    assert [c.finish_reason for c in completions] == ["eos"] * 100  # every row ended inside the grammar
    assert len({json.dumps(c, sort_keys=True) for c in calls}) > 75  # 100 samples, not one answer


# The small-batch tests share one shape (4 rows, 64 new tokens, sampling): one constrained and one free compile.
PROMPTS = ["def add(a, b):", "Search the docs:", "import os\n", "The answer is"]
SMALL = dict(max_new_tokens=64, temperature=1.0, seed=[3, 4, 5, 6])


def test_unconstrained_rows_in_a_constrained_batch_are_unchanged(generator, vocabulary):
    automaton = constrained.from_json_schema(tool_calls.call_schema(SEARCH), vocabulary)
    mixed = generator.complete(PROMPTS, constraint=[None, automaton, None, automaton], **SMALL)
    free = generator.complete(PROMPTS, **SMALL)
    for row in (0, 2):
        assert mixed[row].tokens == free[row].tokens
        np.testing.assert_allclose(mixed[row].logprobs, free[row].logprobs, rtol=1e-5, atol=1e-5)
    for row in (1, 3):
        jsonschema.validate(json.loads(mixed[row].text), tool_calls.call_schema(SEARCH))
        assert mixed[row].tokens != free[row].tokens


def test_constrained_greedy_equals_a_teacher_forced_masked_argmax(generator, vocabulary):
    """A greedy row (among sampled ones, so the compiled function is shared) against a plain reference: one
    forward pass over prompt + answer gives every step's logits; at each step the answer's token must be the
    argmax among the tokens the automaton (in NumPy) allows, and EOS the argmax at the end."""
    pattern = r"(yes|no|maybe)( [0-9]{1,2})?"
    automaton = constrained.from_regex(pattern, vocabulary)
    requests = [Request(vocabulary.encode(p), 64, temperature=0.0 if row == 2 else 1.0, seed=row,
                        constraint=automaton) for row, p in enumerate(PROMPTS)]
    completions = generator.generate_requests(requests)
    for c in completions:
        assert re.fullmatch(pattern, vocabulary.decode(c.tokens)) and c.finish_reason == "eos"
    prompt, answer = requests[2].prompt, completions[2].tokens
    model = nnx.merge(generator.graphdef, generator.params)
    ids = jnp.asarray([list(prompt) + answer], jnp.int32)
    logits = np.asarray(model(ids, jnp.arange(ids.shape[1], dtype=jnp.int32)[None], jnp.ones_like(ids))[0][0])
    state = automaton.initial
    for j, token in enumerate(answer + [automaton.eos_id]):
        step = np.where(automaton.allowed(state), logits[len(prompt) - 1 + j], -np.inf)
        assert token == int(np.argmax(step)), j
        state = int(automaton.transitions[state, token])


def test_a_second_schema_does_not_recompile(generator, vocabulary):
    first = constrained.from_json_schema(tool_calls.call_schema(CALCULATOR), vocabulary)
    second = constrained.from_json_schema(tool_calls.call_schema(SEARCH + CALCULATOR), vocabulary)
    assert first.key != second.key and first.num_states != second.num_states
    generator.complete(PROMPTS, constraint=first, **SMALL)
    traces = generator.trace_count[0]
    results = generator.complete(PROMPTS, constraint=second, **SMALL)
    both = generator.complete(PROMPTS, constraint=[first, second, first, second], **SMALL)
    assert generator.trace_count[0] == traces  # new tables are new data, not new compiled functions
    for completion in results + both[1::2]:
        jsonschema.validate(json.loads(completion.text), tool_calls.call_schema(SEARCH + CALCULATOR))
    for completion in both[0::2]:
        jsonschema.validate(json.loads(completion.text), tool_calls.call_schema(CALCULATOR))


def test_the_tool_call_grammar_is_free_text_or_the_marker_and_a_call(vocabulary):
    marker = vocabulary.encode(tool_calls.MARKER)
    call = vocabulary.encode('{"name": "search", "arguments": {"query": "jit", "limit": 5}}')
    auto = constrained.tool_call(SEARCH, vocabulary)
    required = constrained.tool_call(SEARCH, vocabulary, required=True)
    assert auto.accepts(marker + call) and required.accepts(marker + call)
    assert auto.accepts(vocabulary.encode("Just text, no call.")) and auto.accepts([])
    assert not required.accepts(vocabulary.encode("Just text, no call.")) and not required.accepts(call)
    assert not auto.accepts(marker + vocabulary.encode('{"name": "other", "arguments": {}}'))
    assert not auto.accepts(marker + call[:-1])  # an unfinished call may not end
    forced = constrained.forced_arguments(SEARCH[0]["function"]["parameters"], vocabulary)
    assert forced.accepts(vocabulary.encode('{"query": "x", "limit": 10}}'))
    assert not forced.accepts(vocabulary.encode('{"query": "x", "limit": 2}}'))


def test_bad_grammars_are_one_line_errors_and_beam_search_is_refused(generator, vocabulary, monkeypatch):
    with pytest.raises(constrained.GrammarError, match=r"^unsupported JSON schema: Unsupported type: foo$"):
        constrained.from_json_schema({"type": "foo"}, vocabulary)
    with pytest.raises(constrained.GrammarError, match=r"^cannot compile the grammar: "):
        constrained.from_regex(r"(?<=a)b", vocabulary)
    monkeypatch.setattr(constrained, "MAX_TABLE_ENTRIES", 4096 * 50)
    with pytest.raises(constrained.GrammarError, match=r"states; .* over the limit of 204800 table entries"):
        constrained.from_regex(r"[a-z]{60}", vocabulary)
    automaton = constrained.from_regex(r"[0-9]+", vocabulary)
    with pytest.raises(ValueError, match=r"^constrained decoding does not support num_beams > 1; use num_beams=1$"):
        generator.generate(["x"], num_beams=2, constraint=automaton)


def test_stacked_tables_keep_each_grammar_in_its_own_rows(vocabulary):
    a = constrained.from_regex(r"[0-9]{2}", vocabulary)
    b = constrained.from_regex(r"(yes|no)", vocabulary)
    table, starts = constrained.stack([a, None, b, a], 4100)
    assert table.shape == (constrained.min_rows(4100), 4100) == (512, 4100) and (table[0] == 0).all()
    assert starts[1] == 0 and starts[0] == starts[3] and starts[0] != starts[2]
    digits = vocabulary.encode("42")
    state = jnp.asarray(starts)
    for t in digits:
        allowed = np.asarray(constrained.allowed_tokens(jnp.asarray(table), state, a.eos_id))
        assert allowed[0, t] and allowed[1].all() and allowed[3, t] and not allowed[0, 4096:].any()
        state = constrained.advance(jnp.asarray(table), state, jnp.full((4,), t))
    end = np.asarray(constrained.allowed_tokens(jnp.asarray(table), state, a.eos_id))
    assert end[0].sum() == 1 and end[0, a.eos_id]  # after two digits only EOS
    assert jax.device_get(state)[1] == 0
