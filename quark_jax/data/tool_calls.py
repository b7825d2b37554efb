"""How tool calls are written in the chat template, shared by training data, the server and the agent loop.

Tools are described to the model in the system turn (:func:`tools_text`); the model calls one by writing the
``<|tool_call|>`` marker and then one JSON object ``{"name": ..., "arguments": {...}}`` in its assistant turn;
the result comes back as a ``tool`` message. On the wire (the OpenAI function-calling format) a call is
``{"id", "type": "function", "function": {"name", "arguments": "<JSON text>"}}`` and a tool is
``{"type": "function", "function": {"name", "description", "parameters": <JSON schema>}}``.

:func:`call_schema` is the JSON schema every valid call satisfies (the name one of the offered tools, the
arguments that tool's parameters): what constrained decoding compiles into a token automaton.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from quark_jax.data import tokenizer

MARKER = tokenizer.TOOL_CALL


def new_call_id() -> str:
    return f"call-{uuid.uuid4().hex[:24]}"


def render_call(call: Mapping[str, Any]) -> str:
    """An OpenAI ``tool_calls`` entry as the template text the model writes (marker + JSON object)."""
    function = call.get("function") or {}
    arguments = function.get("arguments", "{}")
    try:
        arguments = json.loads(arguments) if isinstance(arguments, str) else arguments
    except json.JSONDecodeError:
        pass
    return MARKER + json.dumps({"name": function.get("name"), "arguments": arguments})


def tools_text(tools: Sequence[Mapping[str, Any]]) -> str:
    """The tool list as the system prompt tells it to the model."""
    specs = [{k: t["function"].get(k) for k in ("name", "description", "parameters") if k in t["function"]}
             for t in tools]
    return "Tools (call one as a JSON object with name and arguments): " + json.dumps(specs, separators=(",", ":"))


def parse_call(text: str, forced_name: str | None = None) -> dict[str, Any] | None:
    """The OpenAI ``tool_calls`` entry for a generated call (``text`` follows the tool-call marker), or None
    when ``text`` is not a call. ``arguments`` is always a JSON string, as OpenAI sends it: the generated
    arguments re-serialised when they parse, else the raw text (OpenAI warns clients the model may emit
    invalid JSON)."""
    name, arguments = forced_name, None
    try:
        call = json.loads(text)
    except json.JSONDecodeError:
        call = None
    if isinstance(call, dict) and isinstance(call.get("name"), str):
        name = call["name"]
        arguments = json.dumps(call.get("arguments", {}))
    if name is None:
        return None
    if arguments is None:
        arguments = text.strip()
    return {"id": new_call_id(), "type": "function", "function": {"name": name, "arguments": arguments}}


def forced_opening(name: str) -> str:
    """The text that opens a call to ``name`` when the caller forces it (the model writes only the arguments)."""
    return '{"name": ' + json.dumps(name) + ', "arguments": '


def parse_forced_call(name: str, text: str) -> dict[str, Any]:
    """The ``tool_calls`` entry when the caller opened a call to ``name`` itself (:func:`forced_opening`):
    ``text`` is the generated arguments, usually followed by the ``}`` that closes the call object."""
    arguments = text.strip()
    for candidate in (arguments, arguments[:-1].rstrip() if arguments.endswith("}") else None):
        if candidate is None:
            continue
        try:
            parsed = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        arguments = json.dumps(parsed)
        break
    return {"id": new_call_id(), "type": "function", "function": {"name": name, "arguments": arguments}}


def call_schema(tools: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The JSON schema of one call to any of ``tools``: ``{"name": <const>, "arguments": <parameters>}``,
    one alternative per tool (``anyOf``; a single tool needs none)."""
    if not tools:
        raise ValueError("call_schema needs at least one tool")
    options = []
    for t in tools:
        function = t["function"]
        parameters = function.get("parameters") or {"type": "object", "properties": {}}
        options.append({"type": "object", "properties": {"name": {"const": function["name"]}, "arguments": parameters},
                        "required": ["name", "arguments"], "additionalProperties": False})
    return options[0] if len(options) == 1 else {"anyOf": options}
