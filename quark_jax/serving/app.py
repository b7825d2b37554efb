"""The HTTP server: OpenAI's completions and chat completions over the continuous-batching engine.

Endpoints (``create_app``):

* ``GET /v1/models``; ``POST /v1/completions`` (prompt as text, texts, token ids or lists of token ids;
  ``echo`` with ``logprobs`` returns the prompt tokens' log-probabilities, what lm-evaluation-harness's
  ``local-completions`` scores multiple-choice tasks with); ``POST /v1/chat/completions`` (messages through
  the project's chat template, ``tools``/``tool_choice``); both stream as server-sent events when
  ``stream`` is true (``data: {chunk}`` lines, then ``data: [DONE]``).
* ``POST /tokenize``, ``POST /detokenize``, ``GET /tokenizer_info`` as vLLM serves them.
* ``GET /health`` (alive), ``GET /ready`` (compiled and serving), ``GET /metrics`` (Prometheus text).
* ``POST /v1/feedback`` (a rating or a preferred choice, stored with the request's text for DPO).
* ``GET /`` the chat page (``static/chat.html``), files under ``/static``.

Every error is OpenAI's JSON error object with a 4xx status naming the field; a full queue is 429 with
``Retry-After``; a client that goes away mid-stream has its requests cancelled (their slots free at once).
The engine's thread owns the model; the event loop only tokenizes, waits and writes.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from quark_jax.data import chat
from quark_jax.serving import chat_prompt
from quark_jax.serving import feedback as feedback_lib
from quark_jax.serving import protocol
from quark_jax.serving.engine import Engine, EngineRequest, Output, QueueFull
from quark_jax.serving.guard import CONTENT_FILTER, ServerGuard
from quark_jax.serving.metrics import CountRequests, Metrics
from quark_jax.serving.protocol import APIError
from quark_jax.serving.telemetry import RequestLog
from quark_jax.serving.text import token_text

log = logging.getLogger(__name__)

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")


@dataclasses.dataclass
class ServerConfig:
    """How the server answers: the model's name, limits, and where request logs and feedback go."""

    model_name: str
    log_dir: str | None = None  # requests.jsonl (rotated) and feedback.jsonl; None: neither is written
    log_prompts: bool = False  # put prompt text into the request log
    max_n: int = 8  # choices per request
    max_body_bytes: int = 4 * 1024 * 1024
    retry_after_s: int = 1  # the Retry-After of a 429
    recent_responses: int = 10_000  # responses kept in memory for feedback
    guard: ServerGuard | None = None  # guardrails on input and output (quark serve --guardrails); None: off


@dataclasses.dataclass
class _Timing:
    """One HTTP request's clock: arrival, first token, token arrivals (for inter-token latency)."""

    arrived: float = dataclasses.field(default_factory=time.monotonic)
    wall: float = dataclasses.field(default_factory=time.time)
    first: float | None = None
    last: float | None = None
    gaps: list[float] = dataclasses.field(default_factory=list)

    def token(self) -> None:
        t = time.monotonic()
        if self.first is None:
            self.first = t
        elif self.last is not None:
            self.gaps.append(t - self.last)
        self.last = t


class Server:
    """The state behind the routes: engine, vocabulary, metrics, logs, and recent responses for feedback."""

    def __init__(self, engine: Engine, vocabulary: Any, config: ServerConfig):
        self.engine, self.vocabulary, self.config = engine, vocabulary, config
        self.metrics = Metrics(engine)
        self.request_log = RequestLog(config.log_dir) if config.log_dir else None
        self.feedback = (feedback_lib.FeedbackStore(os.path.join(config.log_dir, "feedback.jsonl"))
                         if config.log_dir else None)
        self.recent: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self.lead = list(getattr(vocabulary, "prompt_prefix_ids", ()))  # an imported Llama's <s>

    # ---- helpers ---------------------------------------------------------------------------------------
    def encode(self, text: str, start: bool = False) -> list[int]:
        return (self.lead if start else []) + list(self.vocabulary.encode(text))

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.config.model_name:
            raise APIError(404, f"model={model!r}: this server serves {self.config.model_name!r}", "model",
                           kind="not_found_error")

    def submit(self, requests: Sequence[EngineRequest]) -> list:
        for r in requests:
            try:
                self.engine.check(r)
            except ValueError as e:
                raise APIError(400, str(e), str(e).split(":", 1)[0]) from None
        loop = asyncio.get_running_loop()
        handles = []
        try:
            for r in requests:
                handles.append(self.engine.submit(r, loop))
        except QueueFull as e:
            for h in handles:
                h.cancel()
            raise APIError(429, f"the server is busy: {e}; retry after {self.config.retry_after_s} s", None,
                           kind="rate_limit_error", headers={"Retry-After": str(self.config.retry_after_s)}) from None
        except RuntimeError as e:
            raise APIError(503, str(e), None, kind="server_error") from None
        return handles

    def remember(self, request_id: str, prompt: str, choices: list[str], system: str | None) -> None:
        self.recent[request_id] = {"prompt": prompt, "choices": choices, "system": system}
        while len(self.recent) > self.config.recent_responses:
            self.recent.popitem(last=False)

    def record(self, request_id: str, endpoint: str, timing: _Timing, status: int, error: str | None,
               prompt_tokens: int, completion_tokens: int, stream: bool, prompt: str | None) -> None:
        end = time.monotonic()
        if status == 200 and timing.first is not None:
            self.metrics.ttft.observe(timing.first - timing.arrived)
            self.metrics.e2e.observe(end - timing.arrived)
            for gap in timing.gaps:
                self.metrics.itl.observe(gap)
            self.metrics.prompt_tokens.inc(prompt_tokens)
            self.metrics.generation_tokens.inc(completion_tokens)
        if error:
            self.metrics.errors.labels(error).inc()
        if self.request_log is None:
            return
        entry = {
            "time": timing.wall, "id": request_id, "endpoint": endpoint, "status": status, "error": error,
            "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "ttft_s": None if timing.first is None else timing.first - timing.arrived,
            "itl_s": sum(timing.gaps) / len(timing.gaps) if timing.gaps else None,
            "e2e_s": end - timing.arrived, "stream": stream,
        }
        if self.config.log_prompts and prompt is not None:
            entry["prompt"] = prompt
        self.request_log.write(entry)

    async def collect(self, handles: list, timing: _Timing) -> list[Output]:
        """Waits for every handle to finish (non-streaming)."""
        choices = [Output() for _ in handles]

        async def one(i, handle):
            async for out in handle:
                if out.token_ids:
                    timing.token()
                choices[i].add(out)

        try:
            await asyncio.gather(*(one(i, h) for i, h in enumerate(handles)))
        finally:
            for h in handles:
                h.cancel()  # a no-op for finished requests; frees the slots of a request whose client left
        return choices

    async def merged(self, handles: list) -> AsyncIterator[tuple[int, Output]]:
        """(choice index, output) as they arrive from every handle (streaming)."""
        outputs: asyncio.Queue = asyncio.Queue()

        async def pump(i, handle):
            async for out in handle:
                await outputs.put((i, out))

        tasks = [asyncio.create_task(pump(i, h)) for i, h in enumerate(handles)]
        try:
            finished = 0
            while finished < len(handles):
                i, out = await outputs.get()
                if out.finish_reason is not None:
                    finished += 1
                yield i, out
        finally:
            for h in handles:
                h.cancel()
            for t in tasks:
                t.cancel()


def _sse(payload: Any) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


async def _outputs(server: Server, handles: list, choices: list[Output], timing: _Timing
                   ) -> AsyncIterator[tuple[int, Output]]:
    """(choice index, output) as they arrive, accumulated into ``choices``; APIError 500 if the engine failed."""
    async for i, out in server.merged(handles):
        choices[i].add(out)
        if out.token_ids:
            timing.token()
        if out.finish_reason == "error":
            raise APIError(500, "the serving engine failed; see the server log", kind="server_error")
        yield i, out


def _event_stream(num_choices: int, chunks, done) -> StreamingResponse:
    """Server-sent events of the payloads ``chunks(choices)`` yields, then ``data: [DONE]``; ``done(choices,
    status, error)`` runs at the end whatever happened (499 when the client went away mid-stream)."""

    async def events() -> AsyncIterator[str]:
        choices = [Output() for _ in range(num_choices)]
        status, error = 200, None
        try:
            async for payload in chunks(choices):
                yield _sse(payload)
            yield "data: [DONE]\n\n"
        except APIError as e:  # headers are sent: the error goes into the stream, as OpenAI does
            status, error = e.status, "internal_error"
            yield _sse(e.body())
        except asyncio.CancelledError:
            status, error = 499, "disconnected"
            raise
        finally:
            done(choices, status, error)

    return StreamingResponse(events(), media_type="text/event-stream")


def _failure(choices: Sequence[Output]) -> APIError | None:
    if any(c.finish_reason == "error" for c in choices):
        return APIError(500, "the serving engine failed; see the server log", kind="server_error")
    return None


# ---- completions ---------------------------------------------------------------------------------------------

def _legacy_logprobs(server: Server, choice: Output, prompt_ids: list[int] | None, n_top: int, offset: int
                     ) -> dict[str, Any]:
    """OpenAI's legacy ``logprobs`` object: tokens, token_logprobs, top_logprobs, text_offset."""
    vocab = server.vocabulary
    text = lambda t: token_text(vocab, t)  # noqa: E731
    tops = lambda d: {text(t): protocol.finite(v) for t, v in d.items()}  # noqa: E731
    tokens, token_logprobs, top_logprobs = [], [], []
    if prompt_ids is not None:
        tokens += [text(t) for t in prompt_ids]
        token_logprobs += [None if v is None else protocol.finite(v) for v in choice.prompt_logprobs]
        top_logprobs += [None if d is None else tops(d) for d in choice.prompt_top_logprobs]
    for t, lp, top in zip(choice.token_ids, choice.logprobs, choice.top_logprobs):
        tokens.append(text(t))
        token_logprobs.append(protocol.finite(lp))
        top_logprobs.append(tops(top) if n_top else {text(t): protocol.finite(lp)})
    offsets, position = [], offset
    for t in tokens:
        offsets.append(position)
        position += len(t)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs, "text_offset": offsets}


async def completions(server: Server, body: dict[str, Any], timing: _Timing) -> Response:
    req = protocol.completion_request(body, server.config.max_n)
    server.check_model(req.sampling.model)
    request_id, guard = protocol.new_id("cmpl"), server.config.guard
    if guard is not None:  # token-id prompts are checked (and then sent) as their text
        req = dataclasses.replace(req, prompts=guard.screen_prompts(
            request_id, [p if isinstance(p, str) else server.vocabulary.decode(p) for p in req.prompts]))
    s = req.sampling
    prompt_ids = [server.encode(p, start=True) if isinstance(p, str) else p for p in req.prompts]
    prompt_texts = [p if isinstance(p, str) else server.vocabulary.decode(p) for p in req.prompts]
    want_prompt = req.echo and req.logprobs is not None
    if s.max_tokens == 0 and not req.echo:
        raise APIError(400, "max_tokens=0: must be >= 1 unless echo is true", "max_tokens")
    requests = [
        EngineRequest(ids, s.max_tokens, s.temperature, s.top_k, s.top_p,
                      None if s.seed is None else s.seed + j, s.stop, req.logprobs or 0, want_prompt)
        for ids in prompt_ids for j in range(s.n)
    ]
    handles = server.submit(requests)
    created = protocol.now()
    head = {"id": request_id, "object": "text_completion", "created": created, "model": server.config.model_name}
    first_prompt = prompt_texts[0]

    def prompt_of(index: int) -> int:
        return index // s.n

    if s.stream:
        async def chunks(choices: list[Output]) -> AsyncIterator[dict[str, Any]]:
            if req.echo:
                for i in range(len(handles)):
                    yield {**head, "choices": [{"index": i, "text": prompt_texts[prompt_of(i)], "logprobs": None,
                                                "finish_reason": None}]}
            events = _outputs(server, handles, choices, timing)
            if guard is not None:
                events = guard.guarded(request_id, events, guard.streams(len(handles)), handles, choices)
            async for i, out in events:
                if out.text or out.finish_reason:
                    piece = {"index": i, "text": out.text, "logprobs": None,
                             "finish_reason": _finish(out.finish_reason)}
                    if req.logprobs is not None and out.token_ids:
                        piece["logprobs"] = _legacy_logprobs(server, out, None, req.logprobs, 0)
                    yield {**head, "choices": [piece]}
            if s.include_usage:
                yield {**head, "choices": [], "usage": _usage(choices)}

        def done(choices: list[Output], status: int, error: str | None) -> None:
            server.remember(request_id, first_prompt, [c.text for c in choices], None)
            server.record(request_id, "/v1/completions", timing, status, error,
                          sum(c.prompt_tokens for c in choices[:: s.n]), sum(c.completion_tokens for c in choices),
                          True, first_prompt)

        return _event_stream(len(handles), chunks, done)

    choices = await server.collect(handles, timing)
    failure = _failure(choices)
    if failure:
        server.record(request_id, "/v1/completions", timing, 500, "internal_error", 0, 0, False, first_prompt)
        raise failure
    out = []
    for i, c in enumerate(choices):
        p = prompt_of(i)
        if guard is not None:
            c.text, filtered = guard.output(request_id, c.text)
            c.finish_reason = CONTENT_FILTER if filtered else c.finish_reason
        text = (prompt_texts[p] if req.echo else "") + c.text
        logprobs = None
        if req.logprobs is not None:
            logprobs = _legacy_logprobs(server, c, prompt_ids[p] if req.echo else None, req.logprobs,
                                        0 if req.echo else len(prompt_texts[p]))
        out.append({"index": i, "text": text, "logprobs": logprobs, "finish_reason": _finish(c.finish_reason)})
    server.remember(request_id, first_prompt, [c.text for c in choices], None)
    server.record(request_id, "/v1/completions", timing, 200, None, sum(len(p) for p in prompt_ids),
                  sum(c.completion_tokens for c in choices), False, first_prompt)
    return JSONResponse({**head, "choices": out, "usage": _usage(choices, sum(len(p) for p in prompt_ids))})


def _finish(reason: str | None) -> str | None:
    return None if reason is None else ("stop" if reason in ("stop", "cancelled") else reason)


def _usage(choices: Sequence[Output], prompt_tokens: int | None = None) -> dict[str, int]:
    if prompt_tokens is None:
        prompt_tokens = max((c.prompt_tokens for c in choices), default=0)
    return protocol.usage(prompt_tokens, sum(c.completion_tokens for c in choices))


# ---- chat completions ----------------------------------------------------------------------------------------

def _chat_logprobs(server: Server, choice: Output, n_top: int) -> dict[str, Any]:
    vocab, entries = server.vocabulary, []
    for t, lp, top in zip(choice.token_ids, choice.logprobs, choice.top_logprobs):
        if t == server.engine.eos_id:
            continue
        text = token_text(vocab, t)
        entries.append({
            "token": text, "logprob": protocol.finite(lp), "bytes": list(text.encode("utf-8")),
            "top_logprobs": [{"token": token_text(vocab, a), "logprob": protocol.finite(v),
                              "bytes": list(token_text(vocab, a).encode("utf-8"))}
                             for a, v in list(top.items())[:n_top]],
        })
    return {"content": entries}


async def chat_completions(server: Server, body: dict[str, Any], timing: _Timing) -> Response:
    req = protocol.chat_request(body, server.config.max_n)
    server.check_model(req.sampling.model)
    request_id, guard = protocol.new_id("chatcmpl"), server.config.guard
    if guard is not None:
        req = guard.screen_chat(request_id, req)
    s = req.sampling
    prefix, prompt, system, user = chat_prompt.build(server.vocabulary, server.lead, req)
    room = server.engine.max_seq_len - len(prefix) - len(prompt)
    if room < 1:
        raise APIError(400, f"messages: {len(prefix) + len(prompt)} prompt tokens leave no room in this server's "
                            f"context of {server.engine.max_seq_len} tokens; shorten the conversation", "messages")
    max_tokens = room if s.max_tokens is None else s.max_tokens
    if max_tokens == 0:
        raise APIError(400, "max_tokens=0: must be >= 1", "max_tokens")
    # A grammar is compiled off the event loop (a large schema takes a while; built ones are cached).
    grammar = await asyncio.to_thread(chat_prompt.constraint, server.vocabulary, req)
    if grammar is not None:
        try:
            server.engine.check(EngineRequest(prompt, 1, prefix=prefix, constraint=grammar))
        except ValueError as e:
            param = "tools" if req.tools and req.tool_choice != "none" else "response_format"
            raise APIError(400, f"{param}: {str(e).split(': ', 1)[-1]}", param) from None
    # An answer that is all grammar ends with EOS; "<|end|>" could only cut it short inside a JSON string.
    stop = list(s.stop) if grammar is not None and chat_prompt.ends_in_grammar(req) else [chat.END, *s.stop]
    n_top = req.top_logprobs if req.logprobs else 0
    requests = [EngineRequest(prompt, max_tokens, s.temperature, s.top_k, s.top_p,
                              None if s.seed is None else s.seed + j, stop, n_top, False, prefix, grammar)
                for j in range(s.n)]
    handles = server.submit(requests)
    created = protocol.now()
    head = {"id": request_id, "object": "chat.completion", "created": created, "model": server.config.model_name}
    prompt_tokens = len(prefix) + len(prompt)
    tool_mode = bool(req.tools) and req.tool_choice != "none"

    if s.stream:
        chunk_head = {**head, "object": "chat.completion.chunk"}

        async def chunks(choices: list[Output]) -> AsyncIterator[dict[str, Any]]:
            for i in range(len(handles)):
                yield {**chunk_head, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                                  "logprobs": None, "finish_reason": None}]}
            events = _outputs(server, handles, choices, timing)
            if guard is not None:
                events = guard.guarded(request_id, events, guard.streams(len(handles)), handles, choices)
            async for i, out in events:
                if out.text and not tool_mode:
                    piece = {"index": i, "delta": {"content": out.text}, "logprobs": None, "finish_reason": None}
                    if req.logprobs:
                        piece["logprobs"] = _chat_logprobs(server, out, n_top)
                    yield {**chunk_head, "choices": [piece]}
                if out.finish_reason is not None:
                    delta, reason = {}, _finish(out.finish_reason)
                    if tool_mode and reason != CONTENT_FILTER:  # a call is only known once whole: one delta
                        message, is_call = chat_prompt.assistant_message(req, choices[i].text)
                        if is_call:
                            delta = {"tool_calls": [{"index": 0, **message["tool_calls"][0]}]}
                            reason = "tool_calls"
                        elif message["content"]:
                            delta = {"content": message["content"]}
                    yield {**chunk_head, "choices": [{"index": i, "delta": delta, "logprobs": None,
                                                      "finish_reason": reason}]}
            if s.include_usage:
                yield {**chunk_head, "choices": [], "usage": _usage(choices, prompt_tokens)}

        def done(choices: list[Output], status: int, error: str | None) -> None:
            server.remember(request_id, user, [c.text for c in choices], system)
            server.record(request_id, "/v1/chat/completions", timing, status, error, prompt_tokens,
                          sum(c.completion_tokens for c in choices), True, user)

        return _event_stream(len(handles), chunks, done)

    choices = await server.collect(handles, timing)
    failure = _failure(choices)
    if failure:
        server.record(request_id, "/v1/chat/completions", timing, 500, "internal_error", prompt_tokens, 0, False, user)
        raise failure
    out = []
    for i, c in enumerate(choices):
        filtered = False
        if guard is not None:
            c.text, filtered = guard.output(request_id, c.text)
        message, is_call = ({"role": "assistant", "content": c.text}, False)
        if tool_mode and not filtered:
            message, is_call = chat_prompt.assistant_message(req, c.text)
        finish = CONTENT_FILTER if filtered else "tool_calls" if is_call else _finish(c.finish_reason)
        out.append({"index": i, "message": message,
                    "logprobs": _chat_logprobs(server, c, n_top) if req.logprobs else None, "finish_reason": finish})
    server.remember(request_id, user, [c.text for c in choices], system)
    server.record(request_id, "/v1/chat/completions", timing, 200, None, prompt_tokens,
                  sum(c.completion_tokens for c in choices), False, user)
    return JSONResponse({**head, "choices": out, "usage": _usage(choices, prompt_tokens)})


# ---- the app -------------------------------------------------------------------------------------------------

async def _read_body(request: Request, limit: int) -> dict[str, Any]:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise APIError(413, f"the request body is {declared} bytes; the limit is {limit}", kind="invalid_request_error")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, f"the request body is over the {limit}-byte limit")
        chunks.append(chunk)
    return protocol.parse_json(b"".join(chunks))


def create_app(engine: Engine, vocabulary: Any, config: ServerConfig) -> FastAPI:
    """The FastAPI app serving ``engine`` (started and warmed up by the caller, or by ``quark serve``)."""
    server = Server(engine, vocabulary, config)
    app = FastAPI(title="quark_jax", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server
    app.add_middleware(CountRequests, metrics=server.metrics)
    if os.path.isdir(STATIC_DIR):
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError):
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        message = f"{request.method} {request.url.path}: {e.detail}"
        return JSONResponse(APIError(e.status_code, message, kind=kind).body(), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, e: Exception):
        log.exception("internal error on %s", request.url.path)
        return JSONResponse(APIError(500, f"internal error: {type(e).__name__}", kind="server_error").body(),
                            status_code=500)

    def generation(handler, endpoint: str):
        async def route(request: Request):
            timing = _Timing()
            try:
                body = await _read_body(request, config.max_body_bytes)
                return await handler(server, body, timing)
            except APIError as e:
                kind = "queue_full" if e.status == 429 else e.kind
                server.record(protocol.new_id("err"), endpoint, timing, e.status, kind, 0, 0, False, None)
                raise
        return route

    app.post("/v1/completions")(generation(completions, "/v1/completions"))
    app.post("/v1/chat/completions")(generation(chat_completions, "/v1/chat/completions"))

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": config.model_name, "object": "model", "created": 0,
                                            "owned_by": "quark_jax", "max_model_len": engine.max_seq_len}]}

    @app.get("/health")
    async def health():
        if engine.error is not None:
            return JSONResponse({"status": "failed", "error": repr(engine.error)}, status_code=500)
        return {"status": "ok"}

    @app.get("/ready")
    async def ready():
        if not engine.ready or engine.error is not None:
            return JSONResponse({"ready": False}, status_code=503)
        return {"ready": True}

    @app.get("/metrics")
    async def metrics():
        return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/tokenize")
    async def tokenize(request: Request):
        body = await _read_body(request, config.max_body_bytes)
        special = protocol._boolean(body, "add_special_tokens", True)
        if "messages" in body:
            req = protocol.chat_request({"messages": body["messages"]}, 1)
            prefix, prompt, _, _ = chat_prompt.build(server.vocabulary, server.lead, req)
            tokens = prefix + prompt
        else:
            text = body.get("prompt")
            if not isinstance(text, str):
                raise APIError(400, "prompt: must be a string (or send messages)", "prompt")
            tokens = _special_token(vocabulary, text)
            if tokens is None:
                tokens = server.encode(text, start=special)
        return {"count": len(tokens), "max_model_len": engine.max_seq_len, "tokens": tokens, "token_strs": None}

    @app.post("/detokenize")
    async def detokenize(request: Request):
        body = await _read_body(request, config.max_body_bytes)
        tokens = protocol.token_list(body, "tokens", engine.config.vocab_size)
        return {"prompt": vocabulary.decode(tokens)}

    @app.get("/tokenizer_info")
    async def tokenizer_info():
        eos = token_text(vocabulary, engine.eos_id) if engine.eos_id >= 0 else None
        return {"tokenizer_class": type(vocabulary).__name__, "eos_token": eos, "bos_token": None,
                "pad_token": None, "model_max_length": engine.max_seq_len, "vocab_size": engine.config.vocab_size,
                "chat_template": None}

    @app.post("/v1/feedback")
    async def feedback(request: Request):
        body = await _read_body(request, config.max_body_bytes)
        try:
            entry = feedback_lib.validate_feedback(body)
        except ValueError as e:
            raise APIError(400, str(e), "feedback") from None
        known = server.recent.get(entry["id"])
        if known is None:
            raise APIError(404, f"id={entry['id']!r}: no recent response has this id", "id", kind="not_found_error")
        if server.feedback is None:
            raise APIError(409, "this server stores no feedback: start it with --log_dir DIR", None)
        try:
            stored = feedback_lib.feedback_entry(entry, known["prompt"], known["choices"], known["system"])
        except ValueError as e:
            raise APIError(400, str(e), "choice") from None
        server.feedback.append(stored)
        return {"ok": True}

    @app.get("/")
    async def page():
        path = os.path.join(STATIC_DIR, "chat.html")
        if not os.path.exists(path):
            raise APIError(404, "the chat page is not installed", kind="not_found_error")
        return FileResponse(path, media_type="text/html")

    return app


def _special_token(vocabulary: Any, text: str) -> list[int] | None:
    """A prompt that is exactly one special token's spelling (``</s>``, ``<|user|>``) as that token's id, the
    way Hugging Face tokenizers split special tokens out of text (lm-evaluation-harness asks for EOS's id so)."""
    processor = getattr(vocabulary, "tokenizer", None)
    if processor is not None and hasattr(processor, "piece_to_id") and hasattr(processor, "is_control"):
        token = processor.piece_to_id(text)
        if token != processor.unk_id() and (processor.is_control(token) or processor.is_user_defined(token)):
            return [token]
    return None
