"""The chat template shared by training, generation and serving.

A conversation is a list of ``{"role": ..., "content": ...}`` messages with roles ``system``, ``user``,
``assistant`` (and ``tool`` for tool results). It renders as::

    <|system|>You are terse.<|end|><|user|>What is 2 + 3?<|end|><|assistant|>5<|end|></s>

Every marker is a single user-defined token of the tokenizer (defined once, in ``quark_jax.data.tokenizer``),
so the template is plain text and renders identically whether it is tokenized here, by seqio, or by a server.

For training, :func:`tokenize_conversation` returns the token ids with a loss weight per token: 1 on what
the assistant says (its content and the ``<|end|>`` that closes its turn, and the final EOS), 0 on
everything the model is given (system and user turns, tool results, the ``<|assistant|>`` marker itself).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from quark_jax.data import tokenizer

ROLE_MARKERS = {
    "system": tokenizer.SYSTEM,
    "user": tokenizer.USER,
    "assistant": tokenizer.ASSISTANT,
    "tool": tokenizer.TOOL_RESULT,
}
END = tokenizer.END

Message = Mapping[str, str]


def validate(messages: Sequence[Message]) -> None:
    """Raises ValueError naming the first malformed message."""
    if not messages:
        raise ValueError("a conversation needs at least one message")
    for i, message in enumerate(messages):
        role = message.get("role")
        if role not in ROLE_MARKERS:
            raise ValueError(f"message {i}: role {role!r} is not one of {sorted(ROLE_MARKERS)}")
        if not isinstance(message.get("content"), str):
            raise ValueError(f"message {i} ({role}): 'content' must be a string")
        for marker in (*ROLE_MARKERS.values(), END):
            if marker in message["content"]:
                raise ValueError(f"message {i} ({role}): content contains the reserved marker {marker!r}")


def render(messages: Sequence[Message], add_generation_prompt: bool = False) -> str:
    """The conversation as template text; with ``add_generation_prompt`` it ends with ``<|assistant|>``."""
    validate(messages)
    text = "".join(f"{ROLE_MARKERS[m['role']]}{m['content']}{END}" for m in messages)
    return text + (ROLE_MARKERS["assistant"] if add_generation_prompt else "")


def prompt_response(prompt: str, response: str, system: str | None = None) -> list[dict[str, str]]:
    """A single-turn conversation from a ``prompt``/``response`` pair."""
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


def messages_of(record: Mapping[str, Any]) -> list[dict[str, str]]:
    """Messages of a JSONL record: either ``{"messages": [...]}`` or ``{"prompt": ..., "response": ...}``."""
    if "messages" in record:
        return [dict(m) for m in record["messages"]]
    if "prompt" in record and "response" in record:
        return prompt_response(record["prompt"], record["response"], record.get("system"))
    raise ValueError(f"record has neither 'messages' nor 'prompt'/'response': keys {sorted(record)}")


def tokenize_conversation(messages: Sequence[Message], vocabulary: Any) -> tuple[list[int], list[int]]:
    """(token ids, loss weights) for a conversation, ending with EOS; loss only on assistant turns.

    ``vocabulary`` is a seqio vocabulary (``encode``, ``eos_id``). Each piece is encoded separately so that
    weights align with tokens exactly.
    """
    validate(messages)
    tokens: list[int] = []
    weights: list[int] = []

    def add(text: str, weight: int) -> None:
        ids = list(vocabulary.encode(text)) if text else []
        tokens.extend(ids)
        weights.extend([weight] * len(ids))

    for message in messages:
        is_assistant = message["role"] == "assistant"
        add(ROLE_MARKERS[message["role"]], 0)
        add(message["content"], int(is_assistant))
        add(END, int(is_assistant))
    tokens.append(vocabulary.eos_id)
    weights.append(int(messages[-1]["role"] == "assistant"))
    return tokens, weights
