"""Speculative decoding in the continuous-batching engine is exact: greedy requests return the plain engine's
tokens (batched, refilled mid-flight, with a prefix, stop strings, a grammar's EOS, a row filling its context),
a seed gives the same sample whatever shares the batch, grammar rows never leave their grammar, the counters
add up, and the OpenAI server and ``quark serve --draft_dir`` expose it. Random-init target (the project
tokenizer's 4096 ids) and a smaller draft sharing its embedding and first layer: it agrees with the target only
sometimes, so rounds accept some drafts, reject others, and slots advance by different amounts."""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest
from conftest import serve_app  # the root tests/conftest.py

from quark_jax.data import tokenizer
from quark_jax.data.hf_tokenizer import SentencePieceTokenizer
from quark_jax.inference import constrained
from quark_jax.inference.speculative import Draft
from quark_jax.models.config import ModelConfig
from quark_jax.models.transformer import Transformer
from quark_jax.serving.engine import Engine, EngineRequest, Output

SLOTS, CONTEXT, GAMMA = 3, 64, 3
LIST = r"[a-z]{2,6}(, [a-z]{2,6}){0,2}\."  # the grammar of the constrained requests


def _config(**overrides) -> ModelConfig:
    # A large init_std makes the random model's next-token distributions peaked, so greedy choices are not
    # decided by float rounding between the one-token step and the γ+1-token verification.
    fields = dict(vocab_size=4096, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, mlp_dim=128,
                  init_std=0.3)
    fields.update(overrides)
    return ModelConfig(**fields)


@pytest.fixture(scope="module")
def vocab():
    return SentencePieceTokenizer(str(tokenizer.DEFAULT_SPM_PATH), eos_id=tokenizer.EOS_ID, add_bos=False)


def _model(config: ModelConfig, abstract: bool = False):
    """(graphdef, params) of a random model; ``abstract``: only the parameters' shapes (nothing computed)."""
    from flax import nnx

    build = lambda: Transformer(config, rngs=nnx.Rngs(params=0))  # noqa: E731
    graphdef, params = nnx.split(nnx.eval_shape(build) if abstract else build(), nnx.Param)
    return graphdef, nnx.to_pure_dict(params)


@pytest.fixture(scope="module")
def engines(vocab):
    """(plain, speculative) engines over one random target; both started, compiled on first use."""
    graphdef, params = _model(_config())
    draft_graphdef, _ = _model(_config(num_layers=1), abstract=True)
    draft_params = dict(params, blocks=jax.tree.map(lambda x: x[:1], params["blocks"]))
    common = dict(eos_id=tokenizer.EOS_ID, max_slots=SLOTS, max_seq_len=CONTEXT)
    plain = Engine(graphdef, params, vocab, _config(), **common, decode_block=1)  # one decode function to compile
    speculative = Engine(graphdef, params, vocab, _config(), **common, decode_block=8,
                         draft=Draft(draft_graphdef, draft_params, gamma=GAMMA))
    assert speculative.rounds == 2  # ceil(8 / (γ + 1)): the two-round and one-round calls are both exercised
    for engine in (plain, speculative):
        engine.ready = True
        engine.start()
    yield plain, speculative
    for engine in (plain, speculative):
        engine.stop()


def _run(engine: Engine, requests: list[EngineRequest]) -> list[Output]:
    """Submits every request at once (more than the slots: later ones take slots that free mid-flight)."""
    handles = [engine.submit(r) for r in requests]
    results = []
    for handle in handles:
        merged = Output()
        for out in handle:
            merged.add(out)
        results.append(merged)
    return results


def test_greedy_requests_equal_the_plain_engine_token_for_token(engines, vocab):
    plain, speculative = engines
    long_prompt = vocab.encode("import numpy as np\nimport jax")[:10]
    base = [
        EngineRequest(vocab.encode("def fib(n):"), 20),
        EngineRequest(vocab.encode("The cat sat on the mat and then"), 5),
        EngineRequest(vocab.encode("x = 1\n"), 30, logprobs=3),
        EngineRequest(vocab.encode("Once upon a time"), 12, prefix=vocab.encode("You answer in one line.")),
        EngineRequest(long_prompt, CONTEXT - len(long_prompt)),  # its answer fills the row to the last slot
    ]
    free = _run(plain, base)
    # A stop string from the middle of request 0's own greedy text: both engines must cut it at the same token.
    text = free[0].text
    stop = text[len(text) // 2: len(text) // 2 + 3]
    requests = list(base)
    requests[0] = EngineRequest(base[0].prompt, 20, stop=[stop])
    expected = _run(plain, requests)
    before = dict(vars(speculative.speculation))
    got = _run(speculative, requests)

    assert expected[0].finish_reason == "stop" and len(expected[0].token_ids) < 20
    assert expected[4].finish_reason == "length" and len(expected[4].token_ids) == CONTEXT - len(long_prompt)
    for row, (e, g) in enumerate(zip(expected, got)):
        assert (g.token_ids, g.text, g.finish_reason) == (e.token_ids, e.text, e.finish_reason), row
        np.testing.assert_allclose(g.logprobs, e.logprobs, atol=2e-4, err_msg=str(row))
        assert g.completion_tokens == len(e.token_ids)
    assert [sorted(t) for t in got[2].top_logprobs] == [sorted(t) for t in expected[2].top_logprobs]
    assert all(len(t) == 3 for t in got[2].top_logprobs)

    # The counters add up: every token after a request's first (the prefill's) came from a round.
    done = {k: v - before[k] for k, v in vars(speculative.speculation).items()}
    assert done["emitted"] == sum(len(g.token_ids) - 1 for g in got)
    assert done["drafted"] == GAMMA * done["target_calls"]
    assert 0 < done["accepted"] < done["examined"] <= done["drafted"]
    assert done["target_calls"] <= done["emitted"] <= done["target_calls"] + done["accepted"]
    assert 1 <= done["emitted"] / done["target_calls"] <= GAMMA + 1
    assert speculative.busy_slots == 0


def test_a_seed_gives_the_same_sample_whatever_shares_the_batch(engines, vocab):
    plain, speculative = engines
    request = EngineRequest(vocab.encode("The cat"), 24, temperature=0.9, top_k=200, seed=11)
    alone = speculative.generate(request)
    # Neighbours with other temperatures, top-k/top-p and seeds, started before it and still running after.
    crowd = [speculative.submit(EngineRequest(vocab.encode("x = " * i), 40, temperature=1.0 + 0.2 * i, top_p=0.7,
                                              seed=i)) for i in (1, 2)]
    shared = speculative.generate(request)
    crowd = [[out for out in handle] for handle in crowd]
    assert shared.token_ids == alone.token_ids and len(alone.token_ids) == 24
    assert speculative.generate(EngineRequest(vocab.encode("The cat"), 24, temperature=0.9, top_k=200,
                                              seed=12)).token_ids != alone.token_ids
    # Sampling at temperature 1 with top_k 1 leaves one token per step: the speculative sampler's filtered
    # p and q are then the plain engine's greedy choice, so the sample is the greedy answer.
    greedy = plain.generate(EngineRequest(vocab.encode("The cat"), 24))
    assert speculative.generate(EngineRequest(vocab.encode("The cat"), 24, temperature=1.0, top_k=1,
                                              seed=5)).token_ids == greedy.token_ids


def test_grammar_rows_speculate_within_their_grammar(engines, vocab):
    plain, speculative = engines
    automaton = constrained.from_regex(LIST, vocab)
    prompt = vocab.encode("Three fruits:")
    greedy = EngineRequest(prompt, 40, constraint=automaton)
    expected, got = plain.generate(greedy), speculative.generate(greedy)
    assert (got.token_ids, got.text, got.finish_reason) == (expected.token_ids, expected.text, "stop")
    assert got.token_ids[-1] == tokenizer.EOS_ID and re.fullmatch(LIST, got.text)
    # Sampled rows, beside an unconstrained one: every answer is a sentence of the grammar, ended by EOS.
    sampled = _run(speculative, [EngineRequest(prompt, 40, temperature=1.5, seed=s, constraint=automaton)
                                 for s in range(3)] + [EngineRequest(vocab.encode("def f():"), 30, temperature=1.0,
                                                                     seed=9)])
    for out in sampled[:3]:
        assert re.fullmatch(LIST, out.text), out.text
        assert out.finish_reason == "stop" and out.token_ids[-1] == tokenizer.EOS_ID
    assert len({out.text for out in sampled[:3]}) > 1


def test_a_draft_with_another_vocabulary_is_refused(vocab):
    graphdef, params = _model(_config(), abstract=True)
    other_graphdef, other = _model(_config(vocab_size=512, num_layers=1), abstract=True)
    with pytest.raises(ValueError, match="draft: 512 token ids, the target has 4096; a draft must share the target's"):
        Engine(graphdef, params, vocab, _config(), eos_id=tokenizer.EOS_ID, draft=Draft(other_graphdef, other, gamma=2))


def test_openai_chat_with_a_draft_equals_one_without_and_metrics_count_it(engines, vocab):
    openai = pytest.importorskip("openai")
    import httpx2 as httpx  # the openai client's HTTP library

    from quark_jax.serving.app import ServerConfig, create_app

    plain, speculative = engines
    messages = [{"role": "user", "content": "Name a prime number."}]
    answers, metrics = [], []
    for engine in (plain, speculative):
        with serve_app(create_app(engine, vocab, ServerConfig(model_name="tiny"))) as url:
            client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
            response = client.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=16)
            answers.append((response.choices[0].message.content, response.choices[0].finish_reason,
                            response.usage.completion_tokens))
            metrics.append(httpx.get(url + "/metrics").text)
    assert answers[0] == answers[1] and answers[0][2] > 1
    assert "quark_speculative" not in metrics[0]
    values = {m.group(1): float(m.group(2))
              for m in re.finditer(r"^quark_speculative_(\w+) ([0-9.e+-]+)$", metrics[1], re.MULTILINE)}
    counters = speculative.speculation
    assert values["accepted_total"] == counters.accepted and values["examined_total"] == counters.examined
    assert values["target_calls_total"] == counters.target_calls > 0 and values["gamma"] == GAMMA
    assert values["acceptance_rate"] == pytest.approx(counters.accepted / counters.examined)
    assert values["tokens_per_target_call"] == pytest.approx(counters.emitted / counters.target_calls)


def test_quark_serve_refuses_a_draft_with_another_tokenizer_naming_both(trained_run, tmp_path, capsys, monkeypatch):
    import shutil

    import socket

    from sentencepiece import sentencepiece_model_pb2

    from quark_jax.cli import main
    from quark_jax.serving import server

    target_dir = trained_run["model_dir"]
    other = tmp_path / "other_tokenizer"
    shutil.copytree(target_dir, other)
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString((other / "tokenizer.model").read_bytes())
    proto.pieces[-1].piece = "\u2581speculative"  # the same run, a tokenizer whose last piece spells another word
    (other / "tokenizer.model").write_bytes(proto.SerializeToString())

    def no_serving(*args, **kwargs):
        raise AssertionError("quark serve started serving with a draft of another tokenizer")

    monkeypatch.setattr(server, "serve", no_serving)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = main(["serve", "--model_dir", target_dir, "--draft_dir", str(other), "--port", str(port)])
    err = capsys.readouterr().err
    assert code == 2 and f"draft {other} and target {target_dir} use different tokenizers" in err
    assert "Traceback" not in err
