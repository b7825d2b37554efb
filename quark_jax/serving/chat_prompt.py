"""A chat request as token ids, and the generated text as an assistant message (content or a tool call).

Turns are tokenized marker by marker and content by content, as training does (``chat.tokenize_conversation``),
so the leading system turns can be prefilled once as a shared prefix and the rest tokenizes exactly as the whole.
Tools are described to the model in the system turn; a call is written ``<|tool_call|>{"name": ..., "arguments":
{...}}``. When ``tool_choice`` names a function (or requires the only one), the prompt itself opens the call, so
the model writes only the arguments.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from quark_jax.data import chat, tool_calls
from quark_jax.inference import constrained
from quark_jax.serving import protocol


def encode_turns(vocabulary: Any, messages: Sequence[dict[str, str]]) -> list[int]:
    """Token ids of rendered turns, each marker and content encoded on its own as training does
    (``chat.tokenize_conversation``), so a prefix split at a turn boundary tokenizes exactly as the whole."""
    ids: list[int] = []
    for m in messages:
        for piece in (chat.ROLE_MARKERS[m["role"]], m["content"], chat.END):
            if piece:
                ids += vocabulary.encode(piece)
    return ids


def build(vocabulary: Any, lead: list[int], req: protocol.ChatRequest
          ) -> tuple[list[int], list[int], str | None, str]:
    """(prefix ids: the leading system turns, prompt ids, system text, last user text)."""
    messages = [dict(m) for m in req.messages]
    if req.tools and req.tool_choice != "none":
        tools = tool_calls.tools_text(req.tools)
        if messages[0]["role"] == "system":
            messages[0]["content"] += "\n\n" + tools
        else:
            messages.insert(0, {"role": "system", "content": tools})
    num_system = next((i for i, m in enumerate(messages) if m["role"] != "system"), len(messages))
    prefix = list(lead) + encode_turns(vocabulary, messages[:num_system]) if num_system else []
    prompt = ([] if num_system else list(lead)) + encode_turns(vocabulary, messages[num_system:])
    prompt += vocabulary.encode(chat.ROLE_MARKERS["assistant"])
    forced = forced_tool(req)
    if forced is not None:
        prompt += vocabulary.encode(chat.tokenizer.TOOL_CALL)
        prompt += vocabulary.encode(tool_calls.forced_opening(forced))
    if not prompt:
        prompt = vocabulary.encode(chat.ROLE_MARKERS["assistant"])
    system = "\n".join(m["content"] for m in req.messages if m["role"] == "system") or None
    user = next((m["content"] for m in reversed(req.messages) if m["role"] == "user"), "")
    return prefix, prompt, system, user


def forced_tool(req: protocol.ChatRequest) -> str | None:
    if isinstance(req.tool_choice, dict):
        return req.tool_choice["function"]["name"]
    if req.tool_choice == "required" and len(req.tools) == 1:
        return req.tools[0]["function"]["name"]
    return None


def constraint(vocabulary: Any, req: protocol.ChatRequest) -> constrained.TokenAutomaton | None:
    """The grammar the answer must follow: with tools offered, the tool-call grammar (``auto``: free text or the
    marker and a call; ``required``: a call; a named function: its arguments and the ``}`` closing the call
    the prompt opened); else ``response_format``'s JSON grammar; else None. Raises ``APIError`` 400 naming
    ``tools`` or ``response_format`` for a grammar that cannot be compiled."""
    try:
        if req.tools and req.tool_choice != "none":
            forced = forced_tool(req)
            if forced is not None:
                tool = next(t for t in req.tools if t["function"]["name"] == forced)
                return constrained.forced_arguments(tool["function"].get("parameters"), vocabulary)
            return constrained.tool_call(req.tools, vocabulary, required=req.tool_choice == "required")
    except constrained.GrammarError as e:
        raise protocol.APIError(400, f"tools: {e}", "tools") from None
    try:
        if req.response_format is None:
            return None
        if req.response_format["type"] == "json_object":
            return constrained.json_object(vocabulary)
        return constrained.from_json_schema(req.response_format["schema"], vocabulary)
    except constrained.GrammarError as e:
        raise protocol.APIError(400, f"response_format: {e}", "response_format") from None


def ends_in_grammar(req: protocol.ChatRequest) -> bool:
    """Whether the whole answer is grammar text that ends with EOS (no free text that would end at ``<|end|>``)."""
    if req.tools and req.tool_choice != "none":
        return req.tool_choice != "auto"
    return req.response_format is not None


def assistant_message(req: protocol.ChatRequest, text: str) -> tuple[dict[str, Any], bool]:
    """The assistant message for generated ``text``: content, or ``tool_calls`` when it is a tool call."""
    forced = forced_tool(req)
    call = None
    if forced is not None:  # the prompt ended with the call's opening: the text is its arguments (and a "}")
        call = tool_calls.parse_forced_call(forced, text)
    elif req.tools and req.tool_choice != "none" and text.startswith(chat.tokenizer.TOOL_CALL):
        call = tool_calls.parse_call(text[len(chat.tokenizer.TOOL_CALL):])
    if call is not None:
        return {"role": "assistant", "content": None, "tool_calls": [call]}, True
    return {"role": "assistant", "content": text}, False
