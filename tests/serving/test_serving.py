"""The continuous-batching engine and the OpenAI-compatible server, in this process: one engine over the shared
tiny run, compiled once, behind a real uvicorn server on a loopback port, spoken to by the official ``openai``
client and by raw HTTP."""

from __future__ import annotations

import json
import random
import time

import numpy as np
import pytest
from conftest import serve_app  # the root tests/conftest.py

openai = pytest.importorskip("openai")
import httpx2 as httpx  # noqa: E402  (the openai client's HTTP library)

from quark_jax.serving.engine import Engine, EngineRequest, QueueFull  # noqa: E402
from quark_jax.serving.text import TextStream  # noqa: E402

SLOTS, CONTEXT = 4, 128
PROMPTS = ["def fib(n):", "The cat sat on the", "import numpy as np\n", "Once upon a time, in a land far away,",
           "x = 1\ny = 2\n", "class Stack:\n    def push(self, item):"]


@pytest.fixture(scope="module")
def model(trained_run):
    import quark_jax as qj

    return qj.load(trained_run["model_dir"])


@pytest.fixture(scope="module")
def engine(model):
    engine = Engine(model.graphdef, model.params, model.tokenizer, model.config, eos_id=model.tokenizer.eos_id,
                    max_slots=SLOTS, max_seq_len=CONTEXT, max_queue=16)
    engine.warm_up()
    engine.start()
    yield engine
    engine.stop()


@pytest.fixture(scope="module")
def server(engine, model, tmp_path_factory):

    from quark_jax.serving.app import ServerConfig, create_app

    log_dir = tmp_path_factory.mktemp("serve_logs")
    app = create_app(engine, model.tokenizer, ServerConfig(model_name="tiny", log_dir=str(log_dir), max_n=4,
                                                           max_body_bytes=64 * 1024))
    with serve_app(app, "/ready") as url:
        yield {"url": url, "log_dir": log_dir, "app": app}


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server["url"] + "/v1", api_key="unused", max_retries=0)


# ---- the engine ----------------------------------------------------------------------------------------------

def test_continuous_batching_equals_generating_each_prompt_alone(engine, model):
    """More requests than slots, of different lengths and limits: slots are refilled mid-flight, and every
    greedy answer equals the static generator's, token for token, with the same log-probabilities."""
    vocab = model.tokenizer
    limits = [3, 17, 9, 24, 5, 12]
    traces = engine.trace_count[0]
    handles = [engine.submit(EngineRequest(vocab.encode(p), n)) for p, n in zip(PROMPTS, limits)]
    results = [[out for out in h] for h in handles]
    for prompt, limit, outs in zip(PROMPTS, limits, results):
        reference = model.complete([prompt], max_new_tokens=limit)[0]
        tokens = [t for o in outs for t in o.token_ids]
        logprobs = [lp for o in outs for lp in o.logprobs]
        expected = reference.tokens + ([vocab.eos_id] if reference.finish_reason == "eos" else [])
        assert tokens == expected, prompt
        np.testing.assert_allclose(logprobs[: len(reference.logprobs)], reference.logprobs, atol=2e-4)
        assert "".join(o.text for o in outs) == reference.text
        assert outs[-1].finish_reason == ("stop" if reference.finish_reason == "eos" else "length")
    assert engine.trace_count[0] == traces, "serving compiled a new shape after warm-up"
    assert engine.busy_slots == 0


def test_a_seed_gives_the_same_text_whatever_shares_the_batch(engine, model):
    vocab = model.tokenizer
    request = EngineRequest(vocab.encode("The cat"), 24, temperature=0.9, seed=11)
    alone = engine.generate(request)
    # Neighbours with top-k/top-p switch the decode step to its filtering variant; the seeded row must not notice.
    crowd = [engine.submit(EngineRequest(vocab.encode("x = " * i), 30, temperature=1.0, top_p=0.7, top_k=20, seed=i))
             for i in range(1, SLOTS)]
    shared = engine.generate(request)
    for h in crowd:
        list(h)
    assert shared.token_ids == alone.token_ids
    other_seed = engine.generate(EngineRequest(vocab.encode("The cat"), 24, temperature=0.9, seed=12))
    assert other_seed.token_ids != alone.token_ids


def test_a_shared_prefix_is_prefilled_once_and_changes_nothing(engine, model):
    vocab = model.tokenizer
    prefix = vocab.encode("You answer in one line.")
    hits = engine.prefix_hits
    with_prefix = [engine.generate(EngineRequest(vocab.encode(p), 8, prefix=prefix)) for p in PROMPTS[:2]]
    whole = [engine.generate(EngineRequest(prefix + vocab.encode(p), 8)) for p in PROMPTS[:2]]
    assert [r.token_ids for r in with_prefix] == [r.token_ids for r in whole]
    assert engine.prefix_hits == hits + 1  # the second request reused the first one's prefill


def test_a_prefixed_answer_that_fills_the_row_equals_the_whole_prompt(engine, model):
    """A prefix is copied in at its padded length: when the answer would then run past the row's end, the
    engine prefills prefix and prompt as one prompt instead (tokens and log-probabilities unchanged)."""
    vocab = model.tokenizer
    prefix = (vocab.encode("You are a careful assistant who answers with one short example. ") * 3)[:17]
    prompt = vocab.encode("def fibonacci(n, memo):")[:5]
    limit = CONTEXT - len(prefix) - len(prompt)  # 17 padded to 32: 32 + 5 + 106 would overrun 128
    with_prefix = engine.generate(EngineRequest(prompt, limit, prefix=prefix))
    whole = engine.generate(EngineRequest(prefix + prompt, limit))
    assert with_prefix.token_ids == whole.token_ids
    np.testing.assert_allclose(with_prefix.logprobs, whole.logprobs, atol=1e-5)


def test_prompt_logprobs_match_scoring(engine, model):
    vocab = model.tokenizer
    ids = vocab.encode("The cat sat on the mat and looked at the dog.")
    out = engine.generate(EngineRequest(ids, 0, prompt_logprobs=True, logprobs=3))
    reference = model.generator.score_tokens([ids[:1]], [ids[1:]])[0]
    assert out.prompt_logprobs[0] is None and out.completion_tokens == 0
    np.testing.assert_allclose(out.prompt_logprobs[1:], reference, atol=2e-4)
    for lp, top in zip(out.prompt_logprobs[1:], out.prompt_top_logprobs[1:]):
        assert len(top) == 3 and max(top.values()) >= lp - 1e-6


def test_cancelling_frees_the_slot_at_once(engine, model):
    vocab = model.tokenizer
    long = [engine.submit(EngineRequest(vocab.encode("a"), CONTEXT - 2)) for _ in range(SLOTS)]
    deadline = time.monotonic() + 10
    while engine.busy_slots < SLOTS and time.monotonic() < deadline:
        time.sleep(0.005)
    assert engine.busy_slots == SLOTS
    for h in long:
        h.cancel()
    finished = [list(h)[-1] for h in long]
    assert {o.finish_reason for o in finished} <= {"cancelled", "length", "stop"}
    assert any(o.finish_reason == "cancelled" for o in finished)
    assert engine.busy_slots == 0


def test_a_full_queue_refuses_and_a_bad_request_names_its_field(engine, model):
    vocab = model.tokenizer
    with pytest.raises(ValueError, match="max_tokens: .* exceed this server's context of 128"):
        engine.submit(EngineRequest(vocab.encode("hello"), CONTEXT))
    with pytest.raises(ValueError, match="prompt: token id 99999"):
        engine.submit(EngineRequest([5, 99999], 4))
    held = []
    try:
        with pytest.raises(QueueFull):
            for _ in range(SLOTS + engine.max_queue + 1):
                held.append(engine.submit(EngineRequest(vocab.encode("a"), CONTEXT - 2)))
    finally:
        for h in held:
            h.cancel()
        for h in held:
            list(h)


def test_text_stream_never_splits_a_character_nor_shows_a_stop_string(model):
    vocab = model.tokenizer
    text = "naïve café ok 😀 done. STOP here"
    stream = TextStream(vocab, stop=["STOP"])
    pieces = [stream.push(t) for t in vocab.encode(text)]
    pieces.append(stream.finish())
    assert "".join(pieces) == "naïve café ok 😀 done. "
    assert all("\ufffd" not in p for p in pieces)
    emoji = [i for i, t in enumerate(vocab.encode(text)) if "0xF0" in vocab.tokenizer.id_to_piece(t)]
    assert emoji, "the test text should spell the emoji with byte tokens"
    assert stream.stopped


# ---- the HTTP server -----------------------------------------------------------------------------------------

def test_openai_client_lists_completes_and_chats(server, client, model):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    completion = client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=12, temperature=0)
    assert completion.choices[0].text == model.complete([PROMPTS[0]], max_new_tokens=12)[0].text
    assert completion.usage.completion_tokens == 12 or completion.choices[0].finish_reason == "stop"
    batch = client.completions.create(model="tiny", prompt=PROMPTS[:2], max_tokens=5, temperature=0, n=2)
    assert [c.index for c in batch.choices] == [0, 1, 2, 3]
    assert batch.choices[0].text == batch.choices[1].text  # greedy: both choices of a prompt agree
    chat = client.chat.completions.create(
        model="tiny", messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        max_tokens=10, temperature=0, logprobs=True, top_logprobs=2)
    message = chat.choices[0].message
    assert message.role == "assistant" and isinstance(message.content, str)
    assert chat.usage.completion_tokens >= len(chat.choices[0].logprobs.content)
    assert all(len(t.top_logprobs) == 2 for t in chat.choices[0].logprobs.content)


def test_streaming_is_openai_server_sent_events(server, client):
    stream = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Tell me"}],
                                            max_tokens=16, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage.completion_tokens >= 1 and chunks[-1].choices == []
    assert chunks[-2].choices[0].finish_reason in ("stop", "length")
    whole = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Tell me"}],
                                           max_tokens=16, temperature=0)
    assert text == whole.choices[0].message.content
    # The raw wire: data: lines and the closing [DONE].
    with httpx.stream("POST", server["url"] + "/v1/completions",
                      json={"prompt": "def", "max_tokens": 4, "stream": True, "temperature": 0}) as response:
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    assert json.loads(lines[0][6:])["object"] == "text_completion"


def test_echo_logprobs_are_what_lm_eval_scores(server, model):
    """lm-evaluation-harness's local-completions sends token ids with echo, logprobs=1, max_tokens=1 and reads
    token_logprobs[ctxlen:-1]: that must be the continuation's log-likelihood under the model."""
    vocab = model.tokenizer
    context, continuation = vocab.encode("The cat sat on the"), vocab.encode(" mat")
    body = {"model": "tiny", "prompt": [context + continuation], "temperature": 0, "max_tokens": 1, "logprobs": 1,
            "seed": 1234, "echo": True}
    choice = httpx.post(server["url"] + "/v1/completions", json=body).json()["choices"][0]
    logprobs = choice["logprobs"]
    assert len(logprobs["token_logprobs"]) == len(context) + len(continuation) + 1
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    served = sum(logprobs["token_logprobs"][len(context):-1])
    expected = model.score(["The cat sat on the"], [" mat"])[0]["logprob"]
    assert served == pytest.approx(expected, abs=1e-3)
    for lp, top in zip(logprobs["token_logprobs"][1:], logprobs["top_logprobs"][1:]):
        assert len(top) == 1 and max(top.values()) >= lp  # the true top-1 at every position


def test_tool_choice_returns_a_tool_call(client):
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "weather of a city",
                                               "parameters": {"type": "object",
                                                              "properties": {"city": {"type": "string"}}}}}]
    response = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Weather in Paris?"}], tools=tools, max_tokens=12,
        tool_choice={"type": "function", "function": {"name": "get_weather"}}, temperature=0)
    call = response.choices[0].message.tool_calls[0]
    assert response.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and isinstance(call.function.arguments, str)
    # A conversation that carries the call and its result renders and continues.
    follow = client.chat.completions.create(model="tiny", max_tokens=4, temperature=0, messages=[
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"}])
    assert isinstance(follow.choices[0].message.content, str)


@pytest.mark.parametrize("body, status, param", [
    ({"prompt": "x", "max_tokens": -1}, 400, "max_tokens"),
    ({"prompt": "x", "max_tokens": CONTEXT}, 400, "max_tokens"),
    ({"prompt": "word " * 400, "max_tokens": 1}, 400, "prompt"),
    ({"prompt": "x", "temperature": -0.5}, 400, "temperature"),
    ({"prompt": "x", "n": 50}, 400, "n"),
    ({"prompt": "x", "top_p": 0}, 400, "top_p"),
    ({"prompt": "x", "stop": [1, 2]}, 400, "stop"),
    ({"prompt": "x", "model": "gpt-5"}, 404, "model"),
    ({"prompt": []}, 400, "prompt"),
    ({"prompt": [[1, 2, 99999]]}, 400, "prompt"),
    ({"max_tokens": 3}, 400, "prompt"),
])
def test_bad_requests_get_openai_errors_naming_the_field(server, body, status, param):
    response = httpx.post(server["url"] + "/v1/completions", json=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["param"] == param and param in error["message"]


def test_malformed_and_oversized_bodies(server):
    url = server["url"] + "/v1/chat/completions"
    bad_json = httpx.post(url, content=b'{"messages": [', headers={"content-type": "application/json"})
    assert bad_json.status_code == 400 and "not valid JSON" in bad_json.json()["error"]["message"]
    huge = httpx.post(url, content=b"x" * (65 * 1024))
    assert huge.status_code == 413 and "limit" in huge.json()["error"]["message"]
    role = httpx.post(url, json={"messages": [{"role": "wizard", "content": "hi"}]})
    assert role.status_code == 400 and role.json()["error"]["param"] == "messages[0].role"


def test_a_full_queue_answers_429_with_retry_after(server, engine, monkeypatch):
    monkeypatch.setattr(engine, "max_queue", 0)  # every request finds the queue full
    response = httpx.post(server["url"] + "/v1/completions", json={"prompt": "hello", "max_tokens": 2})
    assert response.status_code == 429
    assert response.headers["retry-after"] == "1" and response.json()["error"]["type"] == "rate_limit_error"
    monkeypatch.undo()
    assert httpx.post(server["url"] + "/v1/completions", json={"prompt": "hello", "max_tokens": 2}).status_code == 200


def _gauge(server, name: str) -> float:
    text = httpx.get(server["url"] + "/metrics").text
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")))


def test_a_client_that_leaves_mid_stream_frees_its_slot(server, engine):
    body = {"prompt": "a", "max_tokens": CONTEXT - 4, "stream": True, "temperature": 0}
    with httpx.stream("POST", server["url"] + "/v1/completions", json=body) as response:
        lines = response.iter_lines()
        next(lines)
        next(lines)
        assert engine.busy_slots == 1
    deadline = time.monotonic() + 5
    while engine.busy_slots and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.busy_slots == 0 and _gauge(server, "quark_busy_slots") == 0


def test_fuzzed_bodies_and_headers_never_crash_the_server(server):
    rng = random.Random(0)
    values = [None, True, -1, 0, 1, 2**40, 1.5, float("1e308"), "", "x", [], {}, [1, "a"], [[1], []], {"a": 1},
              "\udcff".encode("utf-8", "surrogatepass").decode("utf-8", "replace")]
    fields = ["prompt", "messages", "max_tokens", "temperature", "top_p", "top_k", "n", "stop", "seed", "stream",
              "logprobs", "echo", "tools", "tool_choice", "stream_options", "model", "top_logprobs", "tokens", "id",
              "rating"]
    paths = ["/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize", "/v1/feedback"]
    for i in range(150):
        body = {rng.choice(fields): rng.choice(values) for _ in range(rng.randint(0, 5))}
        if rng.random() < 0.2:
            raw = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64)))
        else:
            raw = json.dumps(body).encode()
        kinds = ["application/json", "text/plain", "", "application/x-www-form-urlencoded"]
        headers = {"content-type": rng.choice(kinds)}
        lying = rng.random() < 0.2
        if lying:
            headers["content-length"] = rng.choice(["-5", "abc", "999999999999"])
        try:
            response = httpx.post(server["url"] + rng.choice(paths), content=raw, headers=headers, timeout=30)
        except Exception:  # noqa: BLE001 -- a lying content-length may break the request client-side
            if lying:
                continue
            raise
        assert response.status_code < 500, (body, response.text)
        assert "error" in response.json() or response.status_code == 200
    assert httpx.get(server["url"] + "/health").json() == {"status": "ok"}


def test_metrics_feedback_and_the_request_log(server, client):
    from quark_jax.serving import feedback, telemetry

    before = _gauge(server, "quark_time_to_first_token_seconds_count")
    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Rate me"}],
                                          max_tokens=6, temperature=0.7, n=2, seed=3)
    assert _gauge(server, "quark_time_to_first_token_seconds_count") == before + 1
    assert _gauge(server, "quark_queue_depth") == 0
    # The autoscaler's custom metric (deployment/k8s/hpa.yaml) is a series this server exports.
    import os

    import yaml

    hpa = yaml.safe_load(open(os.path.join(os.path.dirname(__file__), "..", "..", "deployment", "k8s", "hpa.yaml")))
    scaled_on = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert scaled_on and all(_gauge(server, name) >= 0 for name in scaled_on)
    ok = httpx.post(server["url"] + "/v1/feedback", json={"id": chat.id, "preferred": 1})
    assert ok.status_code == 200
    unknown = httpx.post(server["url"] + "/v1/feedback", json={"id": "chatcmpl-nope", "rating": 1})
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "id"
    entries, _ = feedback.read_feedback(str(server["log_dir"] / "feedback.jsonl"))
    stored = next(e for e in entries if e["id"] == chat.id)
    assert stored["prompt"] == "Rate me"
    assert stored["choices"] == [c.message.content for c in chat.choices]
    summary = telemetry.summarize(str(server["log_dir"]))
    assert summary["by_endpoint"]["/v1/chat/completions"]["requests"] >= 1


def test_tokenize_and_detokenize_as_vllm(server, model):
    ids = httpx.post(server["url"] + "/tokenize", json={"prompt": "def fib(n):", "add_special_tokens": False}).json()
    assert ids["tokens"] == model.tokenizer.encode("def fib(n):") and ids["count"] == len(ids["tokens"])
    text = httpx.post(server["url"] + "/detokenize", json={"tokens": ids["tokens"]}).json()
    assert text == {"prompt": "def fib(n):"}
    info = httpx.get(server["url"] + "/tokenizer_info").json()
    assert info["eos_token"] == "</s>" and info["model_max_length"] == CONTEXT
    eos = httpx.post(server["url"] + "/tokenize", json={"prompt": "</s>", "add_special_tokens": False}).json()
    assert eos["tokens"] == [model.tokenizer.eos_id]
