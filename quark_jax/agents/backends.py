"""The two chat backends an agent runs on, both OpenAI chat requests end to end.

* :class:`EngineBackend` — in this process: a continuous-batching :class:`~quark_jax.serving.engine.Engine`
  over a loaded run. A request is checked by the server's own :func:`quark_jax.serving.protocol.chat_request`
  and turned into token ids by :func:`quark_jax.serving.chat_prompt.build` (the tool list in the system turn,
  earlier calls rendered as the model writes them), exactly as ``quark serve`` does, then awaited through the
  engine's asyncio handle — so every concurrent :meth:`~EngineBackend.chat` shares the engine's decode slots.
* :class:`OpenAIBackend` — a remote ``quark serve`` (or any OpenAI-compatible server) through the official
  ``openai.AsyncOpenAI`` client; the server's continuous batching shares it among sessions.

The generated text becomes an assistant message the way the server builds it
(:func:`quark_jax.serving.chat_prompt.assistant_message`): ``tool_calls`` when it is a call, else ``content``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from typing import Any

from quark_jax.agents.types import ContextFull, Generation, Message
from quark_jax.data import chat
from quark_jax.serving import chat_prompt, protocol
from quark_jax.serving.engine import Engine, EngineRequest, Output, QueueFull

QUEUE_RETRY_S = 0.01  # how often a request waits for room in a full engine queue


def chat_body(messages: Sequence[Message], tools: Sequence[Mapping[str, Any]], tool_choice: str | Mapping[str, Any],
              max_tokens: int, temperature: float, seed: int) -> dict[str, Any]:
    """The ``POST /v1/chat/completions`` body of one agent generation (what both backends send)."""
    body: dict[str, Any] = {"messages": [dict(m) for m in messages], "max_tokens": max_tokens,
                            "temperature": temperature, "seed": seed}
    if tools:
        body["tools"] = [dict(t) for t in tools]
        body["tool_choice"] = tool_choice
    return body


def chat_engine_request(vocabulary: Any, lead: Sequence[int], req: protocol.ChatRequest, max_seq_len: int
                        ) -> EngineRequest:
    """The engine request ``quark serve`` builds for a checked chat request, except that ``max_tokens`` is cut
    to the room left in the context (the server refuses instead); :class:`ContextFull` when none is left."""
    prefix, prompt, _, _ = chat_prompt.build(vocabulary, list(lead), req)
    room = max_seq_len - len(prefix) - len(prompt)
    if room < 1:
        raise ContextFull(f"the conversation is {len(prefix) + len(prompt)} tokens, the model's context "
                          f"{max_seq_len}: no room to generate")
    s = req.sampling
    max_tokens = room if s.max_tokens is None else min(s.max_tokens, room)
    # Constrained decoding plugs in here, as the server does it: constraint=chat_prompt.constraint(vocabulary,
    # req), and no "<|end|>" stop when chat_prompt.ends_in_grammar(req).
    return EngineRequest(prompt, max_tokens, s.temperature, s.top_k, s.top_p, s.seed, [chat.END, *s.stop], 0,
                         False, prefix)


class EngineBackend:
    """An in-process :class:`Engine` as a :class:`~quark_jax.agents.types.ChatBackend`; ``model`` names the
    run and step (for the audit trail). The engine must be started (:meth:`from_run` starts it)."""

    def __init__(self, engine: Engine, vocabulary: Any, model: str, lead: Sequence[int] | None = None):
        self.engine, self.vocabulary, self.model = engine, vocabulary, model
        self.lead = list(getattr(vocabulary, "prompt_prefix_ids", ()) if lead is None else lead)

    @classmethod
    def from_model(cls, loaded: Any, name: str, *, max_slots: int = 8, max_seq_len: int | None = None,
                   max_queue: int = 256, decode_block: int = 8, warm_up: bool = False) -> EngineBackend:
        """An engine over a loaded run (``quark_jax.load``), built as ``quark serve`` builds it, and started.
        ``max_seq_len`` defaults to the trained context (at most 2048); ``warm_up`` compiles every prompt bucket
        first (else each compiles when first used)."""
        from quark_jax.serving.server import build_engine

        context = max_seq_len or min(loaded.trained_context or 2048, 2048)
        engine = build_engine(loaded, max_slots, context, max_queue, decode_block)
        if warm_up:
            engine.warm_up()
        engine.start()
        return cls(engine, loaded.tokenizer, name)

    @classmethod
    def from_run(cls, model_dir: str, step: int | None = None, **engine_options: Any) -> EngineBackend:
        """:meth:`from_model` of ``quark_jax.load(model_dir, step=step)``, named ``<model_dir>@<step>``."""
        from quark_jax.api import load

        loaded = load(model_dir, step=step)
        return cls.from_model(loaded, f"{os.path.normpath(model_dir)}@{loaded.step}", **engine_options)

    async def chat(self, messages: Sequence[Message], *, tools: Sequence[Mapping[str, Any]] = (),
                   tool_choice: str | Mapping[str, Any] = "auto", max_tokens: int = 64, temperature: float = 0.0,
                   seed: int = 0) -> Generation:
        """One chat turn on the engine (see the module docstring); ``ValueError`` for a request the server would
        answer with a 400, :class:`ContextFull` when the conversation leaves no room."""
        try:
            req = protocol.chat_request(chat_body(messages, tools, tool_choice, max_tokens, temperature, seed), 1)
        except protocol.APIError as e:
            raise ValueError(e.message) from None
        request = chat_engine_request(self.vocabulary, self.lead, req, self.engine.max_seq_len)
        loop = asyncio.get_running_loop()
        while True:
            try:
                handle = self.engine.submit(request, loop)
                break
            except QueueFull:
                await asyncio.sleep(QUEUE_RETRY_S)
        merged = Output()
        try:
            async for out in handle:
                merged.add(out)
        finally:
            handle.cancel()  # a no-op once finished; frees the slot of a run cancelled by its timeout
        if merged.finish_reason in ("error", "cancelled"):
            raise RuntimeError(f"the engine stopped ({self.engine.error!r})")
        message, is_call = {"role": "assistant", "content": merged.text}, False
        if req.tools and req.tool_choice != "none":
            message, is_call = chat_prompt.assistant_message(req, merged.text)
        return Generation(message, merged.prompt_tokens, merged.completion_tokens,
                          "tool_calls" if is_call else merged.finish_reason, self.model)

    def close(self) -> None:
        """Stops the engine's thread."""
        self.engine.stop()


class OpenAIBackend:
    """A remote OpenAI-compatible server (``quark serve``) as a :class:`~quark_jax.agents.types.ChatBackend`.

    ``base_url`` is the server (``http://host:8000``; ``/v1`` is added when missing); ``model`` defaults to the
    first model the server lists (resolved on the first call, or by :meth:`connect`). A client is made per event
    loop (an ``AsyncOpenAI`` client's connections belong to the loop that opened them)."""

    def __init__(self, base_url: str, model: str | None = None, api_key: str = "unused", timeout_s: float = 300.0,
                 max_retries: int = 2):
        url = base_url.rstrip("/")
        self.base_url = url if url.endswith("/v1") else url + "/v1"
        self.model = model or ""
        self.api_key, self.timeout_s, self.max_retries = api_key, timeout_s, max_retries
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: Any = None

    def client(self) -> Any:
        """The ``openai.AsyncOpenAI`` client of the running event loop."""
        import openai

        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._client = openai.AsyncOpenAI(base_url=self.base_url, api_key=self.api_key, timeout=self.timeout_s,
                                              max_retries=self.max_retries)
            self._loop = loop
        return self._client

    async def connect(self) -> str:
        """The served model's id (``GET /v1/models``), which becomes :attr:`model` when none was given."""
        if not self.model:
            listed = await self.client().models.list()
            if not listed.data:
                raise ValueError(f"--server {self.base_url}: serves no model")
            self.model = listed.data[0].id
        return self.model

    async def chat(self, messages: Sequence[Message], *, tools: Sequence[Mapping[str, Any]] = (),
                   tool_choice: str | Mapping[str, Any] = "auto", max_tokens: int = 64, temperature: float = 0.0,
                   seed: int = 0) -> Generation:
        """One ``POST /v1/chat/completions``; a 400 answer raises ``ValueError`` with the server's message
        (:class:`ContextFull` when it says the conversation does not fit its context)."""
        import openai

        await self.connect()
        body = chat_body(messages, tools, tool_choice, max_tokens, temperature, seed)
        try:
            response = await self.client().chat.completions.create(model=self.model, **body)
        except openai.BadRequestError as e:  # a 400: as EngineBackend, ValueError (ContextFull for the context)
            message = (e.body or {}).get("message") if isinstance(e.body, dict) else None
            message = message or str(e)
            raise (ContextFull if "context" in message else ValueError)(message) from None
        choice = response.choices[0]
        message: Message = {"role": "assistant", "content": choice.message.content}
        if choice.message.tool_calls:
            message["tool_calls"] = [{"id": c.id, "type": "function",
                                      "function": {"name": c.function.name, "arguments": c.function.arguments}}
                                     for c in choice.message.tool_calls]
        usage = response.usage
        return Generation(message, usage.prompt_tokens if usage else 0, usage.completion_tokens if usage else 0,
                          choice.finish_reason, response.model or self.model)
