"""The server's Prometheus series, and the ASGI middleware that counts responses by endpoint and status.

``quark_queue_depth`` and ``quark_busy_slots`` are what the Kubernetes autoscaler scales on
(``deployment/k8s/hpa.yaml`` through the Prometheus adapter); the histograms are the latency figures of
``quark telemetry`` as a live view. A speculative server (``quark serve --draft_dir``) adds its rounds' counters
(``quark_speculative_*``: target calls, drafted, accepted and examined draft tokens, tokens emitted) and the
acceptance rate and tokens per target call they give.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from quark_jax.serving.engine import Engine

ENDPOINTS = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/v1/feedback", "/tokenize", "/detokenize",
             "/tokenizer_info", "/health", "/ready", "/metrics", "/")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """The Prometheus series of one server (a registry of its own, so tests can build many)."""

    def __init__(self, engine: Engine):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("quark_requests", "HTTP requests by endpoint and status", ["endpoint", "status"],
                                registry=r)
        self.prompt_tokens = Counter("quark_prompt_tokens", "prompt tokens of finished generations", registry=r)
        self.generation_tokens = Counter("quark_generation_tokens", "tokens generated", registry=r)
        self.errors = Counter("quark_request_errors", "failed generation requests by kind", ["kind"], registry=r)
        queue_depth = Gauge("quark_queue_depth", "requests waiting for a decode slot", registry=r)
        queue_depth.set_function(lambda: engine.queue_depth)
        busy = Gauge("quark_busy_slots", "decode slots generating", registry=r)
        busy.set_function(lambda: engine.busy_slots)
        slots = Gauge("quark_slots", "decode slots in all", registry=r)
        slots.set(engine.max_slots)
        self.ttft = Histogram("quark_time_to_first_token_seconds", "arrival to first token", registry=r,
                              buckets=LATENCY_BUCKETS)
        self.itl = Histogram("quark_inter_token_latency_seconds", "time between streamed tokens", registry=r,
                             buckets=LATENCY_BUCKETS)
        self.e2e = Histogram("quark_e2e_request_latency_seconds", "arrival to last token", registry=r,
                             buckets=LATENCY_BUCKETS)
        if engine.draft is not None:
            r.register(SpeculationCollector(engine))


class SpeculationCollector:
    """The speculative engine's counters (:class:`~quark_jax.serving.engine.SpeculationCounters`), read at
    scrape time."""

    COUNTERS = (("target_calls", "speculative rounds: target forward passes over a slot's drafts"),
                ("drafted", "draft tokens proposed"),
                ("accepted", "draft tokens the target accepted"),
                ("examined", "draft tokens judged: the accepted ones and each round's first rejected one"),
                ("emitted", "tokens the speculative rounds delivered"))

    def __init__(self, engine: Engine):
        self.engine = engine

    def collect(self):
        counters = self.engine.speculation
        for name, documentation in self.COUNTERS:
            yield CounterMetricFamily(f"quark_speculative_{name}", documentation, value=getattr(counters, name))
        yield GaugeMetricFamily("quark_speculative_acceptance_rate", "accepted / examined draft tokens",
                                value=counters.acceptance_rate)
        yield GaugeMetricFamily("quark_speculative_tokens_per_target_call", "emitted tokens / target calls",
                                value=counters.tokens_per_target_call)
        yield GaugeMetricFamily("quark_speculative_gamma", "draft tokens proposed per round",
                                value=self.engine.draft.gamma)


class CountRequests:
    """ASGI middleware counting responses by endpoint and status (streaming-safe, unlike BaseHTTPMiddleware)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        endpoint = path if path in ENDPOINTS else ("/static" if path.startswith("/static/") else "other")

        async def counted_send(message):
            if message["type"] == "http.response.start":
                self.metrics.requests.labels(endpoint, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counted_send)
