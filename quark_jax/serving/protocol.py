"""The OpenAI wire format: request bodies checked into plain values, and the response objects built from results.

Every check raises :class:`APIError` with the HTTP status, a message that names the field and what it must
be, and the field as ``param`` — what OpenAI's own API answers (``{"error": {"message", "type", "param",
"code"}}``). Nothing here touches the model: :mod:`quark_jax.serving.app` turns checked requests into
engine requests.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import uuid
from collections.abc import Mapping
from typing import Any

from quark_jax.data import chat, tool_calls

MAX_STOP = 4
MAX_LOGPROBS = 20


class APIError(Exception):
    """An error answered to the client as OpenAI does: ``status`` (4xx), ``message``, ``param``, ``type``."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                 headers: Mapping[str, str] | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code = status, message, param, kind, code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def parse_json(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, or a 400 naming what is wrong with it."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON ({e}); send a JSON object") from None
    if not isinstance(body, dict):
        raise APIError(400, f"the request body must be a JSON object, not {type(body).__name__}")
    return body


# ---- field checks ----------------------------------------------------------------------------------------

def _integer(body: Mapping, name: str, default: int | None, low: int | None = None, high: int | None = None
             ) -> int | None:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise APIError(400, f"{name}={value!r}: must be an integer", name)
    if low is not None and value < low:
        raise APIError(400, f"{name}={value}: must be >= {low}", name)
    if high is not None and value > high:
        raise APIError(400, f"{name}={value}: must be <= {high}", name)
    return value


def _number(body: Mapping, name: str, default: float, low: float, high: float, low_open: bool = False) -> float:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise APIError(400, f"{name}={value!r}: must be a number", name)
    if value < low or (low_open and value == low) or value > high:
        bound = f"in ({low}, {high}]" if low_open else f"in [{low}, {high}]"
        raise APIError(400, f"{name}={value}: must be {bound}", name)
    return float(value)


def _boolean(body: Mapping, name: str, default: bool) -> bool:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise APIError(400, f"{name}={value!r}: must be true or false", name)
    return value


def _stop(body: Mapping) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise APIError(400, "stop: must be a string or a list of strings", "stop")
    if len(stop) > MAX_STOP:
        raise APIError(400, f"stop: {len(stop)} sequences, at most {MAX_STOP}", "stop")
    return [s for s in stop if s]


@dataclasses.dataclass
class Sampling:
    """What every kind of generation request shares."""

    model: str | None
    max_tokens: int | None  # None: as many as fit
    temperature: float
    top_p: float
    top_k: int
    n: int
    seed: int | None
    stop: list[str]
    stream: bool
    include_usage: bool
    user: str | None


def _sampling(body: Mapping, max_n: int, max_tokens_default: int | None, max_tokens_field: str = "max_tokens"
              ) -> Sampling:
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise APIError(400, f"model={model!r}: must be a string", "model")
    max_tokens = _integer(body, max_tokens_field, max_tokens_default, low=0)
    top_k = _integer(body, "top_k", 0, low=-1)
    stream = _boolean(body, "stream", False)
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise APIError(400, "stream_options: must be an object such as {\"include_usage\": true}", "stream_options")
    include_usage = _boolean(options or {}, "include_usage", False)
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise APIError(400, f"seed={seed!r}: must be an integer", "seed")
    user = body.get("user")
    return Sampling(
        model=model, max_tokens=max_tokens,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, low_open=True),
        top_k=max(top_k, 0), n=_integer(body, "n", 1, low=1, high=max_n), seed=seed, stop=_stop(body),
        stream=stream, include_usage=include_usage, user=user if isinstance(user, str) else None,
    )


# ---- /v1/completions -------------------------------------------------------------------------------------

@dataclasses.dataclass
class CompletionRequest:
    prompts: list[str | list[int]]  # text, or token ids used as given
    sampling: Sampling
    logprobs: int | None
    echo: bool


def completion_request(body: Mapping, max_n: int) -> CompletionRequest:
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        prompts: list = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompts = list(prompt)
    elif isinstance(prompt, list) and prompt and all(_is_token(t) for t in prompt):
        prompts = [list(prompt)]
    elif isinstance(prompt, list) and prompt and all(
            isinstance(p, list) and p and all(_is_token(t) for t in p) for p in prompt):
        prompts = [list(p) for p in prompt]
    else:
        raise APIError(400, "prompt: must be a string, a list of strings, a list of token ids or a list of lists "
                            "of token ids (none empty)", "prompt")
    if any(p == "" for p in prompts):
        raise APIError(400, "prompt: must not be empty (there is nothing to continue)", "prompt")
    logprobs = _integer(body, "logprobs", None, low=0, high=MAX_LOGPROBS)
    return CompletionRequest(prompts, _sampling(body, max_n, 16), logprobs, _boolean(body, "echo", False))


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ---- /v1/chat/completions --------------------------------------------------------------------------------

@dataclasses.dataclass
class ChatRequest:
    messages: list[dict[str, str]]  # role + content (tool calls rendered into content)
    sampling: Sampling
    logprobs: bool
    top_logprobs: int
    tools: list[dict[str, Any]]
    tool_choice: str | dict[str, Any]  # "none" | "auto" | "required" | {"type": "function", "function": {"name"}}
    # None (free text), {"type": "json_object"} or {"type": "json_schema", "schema": {...}}
    response_format: dict[str, Any] | None = None


def _content(message: Mapping, i: int) -> str:
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise APIError(400, f"messages[{i}].content: only text parts ({{\"type\": \"text\", \"text\": ...}}) "
                                    "are supported", f"messages[{i}].content")
            parts.append(part["text"])
        return "".join(parts)
    raise APIError(400, f"messages[{i}].content: must be a string or a list of text parts", f"messages[{i}].content")


def chat_request(body: Mapping, max_n: int) -> ChatRequest:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "messages: must be a non-empty list of {\"role\", \"content\"} objects", "messages")
    rendered = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise APIError(400, f"messages[{i}]: must be an object with 'role' and 'content'", f"messages[{i}]")
        role = m.get("role")
        if role == "developer":
            role = "system"
        if role not in chat.ROLE_MARKERS:
            raise APIError(400, f"messages[{i}].role={role!r}: must be one of system, user, assistant, tool",
                           f"messages[{i}].role")
        content = _content(m, i)
        calls = m.get("tool_calls")
        if role == "assistant" and calls:
            content += "".join(tool_calls.render_call(c) for c in calls if isinstance(c, dict))
        for marker in (*chat.ROLE_MARKERS.values(), chat.END):
            if marker in content:
                raise APIError(400, f"messages[{i}].content contains the reserved marker {marker!r}",
                               f"messages[{i}].content")
        rendered.append({"role": role, "content": content})
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    sampling = _sampling({**body, "max_tokens": max_tokens}, max_n, None)
    tools = body.get("tools") or []
    if not isinstance(tools, list) or not all(
            isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("function"), dict)
            and isinstance(t["function"].get("name"), str) for t in tools):
        raise APIError(400, "tools: must be a list of {\"type\": \"function\", \"function\": {\"name\", "
                            "\"description\", \"parameters\"}}", "tools")
    names = [t["function"]["name"] for t in tools]
    choice = body.get("tool_choice", "auto" if tools else "none")
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") if isinstance(choice.get("function"), dict) else None
        if choice.get("type") != "function" or name not in names:
            raise APIError(400, f"tool_choice: names a function that is not in tools ({names})", "tool_choice")
    elif choice not in ("none", "auto", "required"):
        raise APIError(400, f"tool_choice={choice!r}: must be none, auto, required or {{\"type\": \"function\", "
                            "\"function\": {\"name\": ...}}", "tool_choice")
    elif choice == "required" and not tools:
        raise APIError(400, "tool_choice='required' needs tools", "tool_choice")
    return ChatRequest(
        rendered, sampling, _boolean(body, "logprobs", False),
        _integer(body, "top_logprobs", 0, low=0, high=MAX_LOGPROBS) or 0, tools, choice,
        response_format(body.get("response_format")),
    )


def response_format(value: Any) -> dict[str, Any] | None:
    """The checked ``response_format``: None for text, ``{"type": "json_object"}``, or ``{"type": "json_schema",
    "schema": <object>}`` (OpenAI nests the schema as ``json_schema.schema``)."""
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        spec = value.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise APIError(400, "response_format: json_schema.schema must be a JSON schema object, as in "
                                "{\"type\": \"json_schema\", \"json_schema\": {\"name\": ..., \"schema\": {...}}}",
                           "response_format")
        return {"type": "json_schema", "schema": schema}
    raise APIError(400, f"response_format: type {kind!r} must be text, json_object or json_schema", "response_format")


# ---- /tokenize, /detokenize ------------------------------------------------------------------------------

def token_list(body: Mapping, name: str, vocab_size: int) -> list[int]:
    tokens = body.get(name)
    if not isinstance(tokens, list) or not all(_is_token(t) for t in tokens):
        raise APIError(400, f"{name}: must be a list of token ids", name)
    bad = [t for t in tokens if not 0 <= t < vocab_size]
    if bad:
        raise APIError(400, f"{name}: token id {bad[0]} is outside the vocabulary (0..{vocab_size - 1})", name)
    return tokens


# ---- responses -------------------------------------------------------------------------------------------

def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def finite(x: float) -> float:
    """JSON has no infinities: a -inf log-probability (an impossible token) becomes the float minimum."""
    return x if math.isfinite(x) else -3.4028234663852886e38
