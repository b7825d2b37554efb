"""``quark serve``: a loaded model behind the HTTP app, compiled in the background while the port already answers.

The port opens at once (``/health`` answers, ``/ready`` says 503); the engine compiles every shape it will
need (:meth:`Engine.warm_up`) and only then starts taking requests and turns ``/ready`` to 200, which is what a
Kubernetes readiness probe waits for.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

from quark_jax.inference.speculative import Draft
from quark_jax.serving.app import ServerConfig, create_app
from quark_jax.serving.engine import Engine

log = logging.getLogger(__name__)


def check_port(host: str, port: int) -> None:
    """Raises ValueError (naming the port and the fix) when ``host:port`` cannot be bound."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise ValueError(f"--port {port}: cannot listen on {host}:{port} ({e.strerror}); "
                             "pick another port") from None


def build_engine(model: Any, max_slots: int, max_seq_len: int, max_queue: int, decode_block: int = 8,
                 draft: Draft | None = None) -> Engine:
    """An :class:`Engine` over a loaded model (``quark_jax.load``; quantized or not); with ``draft``
    (``model.draft(run_dir, gamma)``) it decodes speculatively."""
    return Engine(model.graphdef, model.params, model.tokenizer, model.config, eos_id=model.tokenizer.eos_id,
                  max_slots=max_slots, max_seq_len=max_seq_len, max_queue=max_queue, decode_block=decode_block,
                  draft=draft)


def serve(engine: Engine, vocabulary: Any, config: ServerConfig, host: str, port: int,
          on_ready: Callable[[float], None] | None = None) -> None:
    """Runs the server until interrupted (SIGINT/SIGTERM: uvicorn finishes open responses, then returns)."""
    import time

    import uvicorn

    app = create_app(engine, vocabulary, config)

    def compile_then_start():
        started = time.monotonic()
        try:
            engine.warm_up()
        except BaseException as e:  # noqa: BLE001 -- reported through /health and /ready
            engine.error = e
            log.exception("compiling the serving functions failed")
            return
        engine.start()
        if on_ready is not None:
            on_ready(time.monotonic() - started)

    threading.Thread(target=compile_then_start, name="quark-warm-up", daemon=True).start()
    uvicorn_config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                    timeout_graceful_shutdown=10)
    try:
        uvicorn.Server(uvicorn_config).run()
    finally:
        engine.stop()
        if app.state.server.request_log is not None:
            app.state.server.request_log.close()


def default_model_name(model_dir: str) -> str:
    return os.path.basename(os.path.normpath(model_dir)) or "quark"
