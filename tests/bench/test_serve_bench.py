"""bench/serve.py's bookkeeping without a model: the workload's mix, the latency records of a streamed request
(against a scripted stand-in for the openai client), the closed and open loops' bounds and the summaries."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
import time
import types
from collections import Counter

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
spec = importlib.util.spec_from_file_location("bench_serve", os.path.join(REPO, "bench", "serve.py"))
serve = importlib.util.module_from_spec(spec)
sys.modules["bench_serve"] = serve  # dataclasses look their module up while the class is built
spec.loader.exec_module(serve)


def test_every_block_of_32_holds_every_prompt_and_every_max_tokens():
    items = serve.workload(96, num_prompts=4)
    assert len(items) == 96 and len({i.seed for i in items}) == 96
    for k in range(0, 96, serve.BATCH):
        block = items[k: k + serve.BATCH]
        assert Counter(i.max_tokens for i in block) == {m: 8 for m in serve.MAX_TOKENS}
        assert {i.prompt for i in block} == {0, 1, 2, 3}
        assert Counter((i.prompt, i.max_tokens) for i in block) == {(p, m): 2 for p in range(4)
                                                                     for m in serve.MAX_TOKENS}
    assert serve.workload(96, 4) == items  # seeded
    assert [i.max_tokens for i in serve.workload(10, 4)] != [] and len(serve.workload(10, 4)) == 10


class FakeStream:
    """An async iterator of completion chunks, ``gap`` seconds apart, then the usage chunk."""

    def __init__(self, texts, gap, completion_tokens, chat=False):
        self.texts, self.gap, self.tokens, self.chat = texts, gap, completion_tokens, chat

    async def __aiter__(self):
        for text in self.texts:
            await asyncio.sleep(self.gap)
            part = types.SimpleNamespace(delta=types.SimpleNamespace(content=text)) if self.chat else \
                types.SimpleNamespace(text=text)
            yield types.SimpleNamespace(choices=[part], usage=None)
        usage = types.SimpleNamespace(completion_tokens=self.tokens, prompt_tokens=7)
        yield types.SimpleNamespace(choices=[], usage=usage)


class FakeClient:
    """Stands in for ``openai.AsyncOpenAI``: ``completions.create`` / ``chat.completions.create``."""

    def __init__(self, gap=0.01, fail_every=0):
        self.gap, self.fail_every, self.calls = gap, fail_every, []
        self.completions = types.SimpleNamespace(create=self._create(chat=False))
        self.chat = types.SimpleNamespace(completions=types.SimpleNamespace(create=self._create(chat=True)))

    def _create(self, chat):
        async def create(**kwargs):
            self.calls.append((time.monotonic(), kwargs))
            if self.fail_every and len(self.calls) % self.fail_every == 0:
                error = RuntimeError("refused")
                error.status_code = 429
                raise error
            assert kwargs["stream"] and kwargs["stream_options"] == {"include_usage": True}
            # An empty chunk first (a role-only delta) must not count as the first token.
            return FakeStream(["", "ab", "c", "", "d"], self.gap, kwargs["max_tokens"], chat)
        return create


@pytest.mark.parametrize("chat", [False, True])
def test_a_streamed_request_records_ttft_gaps_and_usage(chat):
    record = asyncio.run(serve.one_request(FakeClient(gap=0.02), "m", chat, "hi", 5, 0))
    assert record["completion_tokens"] == 5 and record["prompt_tokens"] == 7
    assert 0.035 < record["ttft"] < record["e2e"]  # the second chunk is the first with text
    assert len(record["itl"]) == 2 and all(g >= 0.015 for g in record["itl"])  # "ab" -> "c" -> "d"
    assert record["e2e"] >= 0.09


def test_closed_loop_keeps_concurrency_and_counts_errors_by_kind():
    client = FakeClient(gap=0.005, fail_every=4)
    prompts = [("p", [1, 2])]
    items = serve.workload(12, 1)
    results, wall, cut = asyncio.run(serve.closed_loop(client, "m", False, prompts, items, 3, time.monotonic() + 60))
    assert len(results) == 12 and not cut
    summary = serve.summarize(results, wall, cut)
    assert summary["errors"] == {"http_429": 3} and summary["ok"] == 9
    assert summary["output_tokens"] == sum(r["completion_tokens"] for r in results if "error" not in r)
    assert summary["ttft_ms"]["p50"] <= summary["ttft_ms"]["p99"] and summary["e2e_ms"]["p99"] >= 25


def test_loops_stop_sending_at_their_deadline():
    items = serve.workload(50, 1)
    results, _, cut = asyncio.run(serve.closed_loop(FakeClient(gap=0.02), "m", False, [("p", [1])], items, 2,
                                                    time.monotonic() + 0.3))
    assert cut and 2 <= len(results) < 50
    results, _, cut = asyncio.run(serve.poisson(FakeClient(gap=0.001), "m", [("p", [1])], items, rate=20.0,
                                                deadline=time.monotonic() + 0.5))
    assert cut and 1 <= len(results) < 50


def test_percentiles_are_milliseconds_and_empty_is_none():
    assert serve.percentiles([]) == {"p50": None, "p99": None}
    assert serve.percentiles([0.001, 0.002, 0.003]) == {"p50": 2.0, "p99": 3.0}
