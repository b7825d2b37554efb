"""Constrained decoding through the continuous-batching engine and the OpenAI server: ``response_format`` and tool
grammars, spoken to by the official ``openai`` client. The model is random (the project tokenizer's 4096 ids), so
every parseable answer is the grammar's doing."""

from __future__ import annotations

import json

import pytest
from conftest import serve_app  # the root tests/conftest.py

openai = pytest.importorskip("openai")
jsonschema = pytest.importorskip("jsonschema")
import httpx2 as httpx  # noqa: E402  (the openai client's HTTP library)

from quark_jax.data import tokenizer, tool_calls  # noqa: E402
from quark_jax.data.hf_tokenizer import SentencePieceTokenizer  # noqa: E402
from quark_jax.inference import constrained  # noqa: E402
from quark_jax.models.config import ModelConfig  # noqa: E402
from quark_jax.models.transformer import Transformer  # noqa: E402
from quark_jax.serving.engine import Engine, EngineRequest  # noqa: E402

ANSWER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8},
                                           "sunny": {"type": "boolean"}, "rank": {"enum": [1, 2, 3]}},
          "required": ["city", "sunny", "rank"], "additionalProperties": False}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "weather of a city", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 8}}, "required": ["city"],
        "additionalProperties": False}}},
    {"type": "function", "function": {"name": "add", "description": "adds two small numbers", "parameters": {
        "type": "object", "properties": {"a": {"enum": [1, 2, 3]}, "b": {"enum": [4, 5]}}, "required": ["a", "b"],
        "additionalProperties": False}}},
]
MESSAGES = [{"role": "user", "content": "Weather in Paris?"}]


@pytest.fixture(scope="module")
def vocabulary():
    return SentencePieceTokenizer(str(tokenizer.DEFAULT_SPM_PATH), eos_id=tokenizer.EOS_ID, add_bos=False)


@pytest.fixture(scope="module")
def engine(vocabulary):
    from flax import nnx

    config = ModelConfig(vocab_size=4096, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                         mlp_dim=128, init_std=0.02)
    graphdef, params = nnx.split(Transformer(config, rngs=nnx.Rngs(params=0)), nnx.Param)
    engine = Engine(graphdef, nnx.to_pure_dict(params), vocabulary, config, eos_id=tokenizer.EOS_ID, max_slots=4,
                    max_seq_len=512, decode_block=1)  # one decode function to compile
    engine.ready = True  # compiled on first use: these tests only need the shapes they touch
    engine.start()
    yield engine
    engine.stop()


@pytest.fixture(scope="module")
def server(engine, vocabulary):

    from quark_jax.serving.app import ServerConfig, create_app

    app = create_app(engine, vocabulary, ServerConfig(model_name="tiny", max_n=4))
    with serve_app(app) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)


def test_response_format_json_schema_and_json_object_return_parseable_json(client):
    response = client.chat.completions.create(
        model="tiny", messages=MESSAGES, temperature=1.0, n=4, seed=0, max_tokens=96,
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": ANSWER}})
    answers = [json.loads(choice.message.content) for choice in response.choices]
    for answer in answers:
        jsonschema.validate(answer, ANSWER)
    assert [c.finish_reason for c in response.choices] == ["stop"] * 4
    assert len({json.dumps(a) for a in answers}) > 1
    anything = client.chat.completions.create(model="tiny", messages=MESSAGES, temperature=1.0, seed=1,
                                              max_tokens=200, response_format={"type": "json_object"})
    assert isinstance(json.loads(anything.choices[0].message.content), dict)


def test_tool_requests_return_calls_that_parse(client):
    required = client.chat.completions.create(model="tiny", messages=MESSAGES, tools=TOOLS, tool_choice="required",
                                              temperature=1.0, n=4, seed=2, max_tokens=64)
    for choice in required.choices:
        [call] = choice.message.tool_calls
        assert choice.finish_reason == "tool_calls"
        tool = next(t for t in TOOLS if t["function"]["name"] == call.function.name)
        jsonschema.validate(json.loads(call.function.arguments), tool["function"]["parameters"])
    named = client.chat.completions.create(model="tiny", messages=MESSAGES, tools=TOOLS, temperature=1.0, seed=3,
                                           tool_choice={"type": "function", "function": {"name": "add"}}, max_tokens=32)
    call = named.choices[0].message.tool_calls[0]
    assert call.function.name == "add"
    jsonschema.validate(json.loads(call.function.arguments), TOOLS[1]["function"]["parameters"])


def test_a_bad_schema_is_a_one_line_400_naming_response_format(server):
    for response_format, message in [
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "foo"}}},
         "response_format: unsupported JSON schema: Unsupported type: foo"),
        ({"type": "json_schema", "json_schema": {"name": "x"}},
         'response_format: json_schema.schema must be a JSON schema object, as in {"type": "json_schema", '
         '"json_schema": {"name": ..., "schema": {...}}}'),
        ({"type": "xml"}, "response_format: type 'xml' must be text, json_object or json_schema"),
    ]:
        response = httpx.post(server + "/v1/chat/completions",
                              json={"messages": MESSAGES, "response_format": response_format})
        assert response.status_code == 400
        assert response.json()["error"] == {"message": message, "type": "invalid_request_error",
                                            "param": "response_format", "code": None}


def test_free_requests_beside_constrained_ones_are_unchanged_and_grammars_do_not_recompile(engine, vocabulary):
    prompt = vocabulary.encode("def main():")
    free = EngineRequest(prompt, 24, temperature=1.0, seed=7)
    alone = engine.generate(free)
    schema = constrained.from_json_schema(tool_calls.call_schema(TOOLS[:1]), vocabulary)
    other = constrained.from_json_schema(tool_calls.call_schema(TOOLS), vocabulary)
    engine.generate(EngineRequest(prompt, 64, temperature=1.0, seed=0, constraint=schema))  # compiles what it needs
    traces = engine.trace_count[0]
    handles = [engine.submit(EngineRequest(prompt, 64, temperature=1.0, seed=s, constraint=c))
               for s, c in enumerate([schema, other, other])]
    handles.insert(1, engine.submit(free))
    results = []
    for handle in handles:
        merged = None
        for out in handle:
            merged = out if merged is None else (merged.add(out) or merged)
        results.append(merged)
    assert results[1].token_ids == alone.token_ids and results[1].text == alone.text
    jsonschema.validate(json.loads(results[0].text), tool_calls.call_schema(TOOLS[:1]))
    for r in results[2:]:
        jsonschema.validate(json.loads(r.text), tool_calls.call_schema(TOOLS))
    assert engine.trace_count[0] == traces  # the second grammar went into the table's free rows
    assert set(engine.grammars.placed) >= {schema.key, other.key}
    assert all(p.users == 0 for p in engine.grammars.placed.values())  # finished requests released theirs
