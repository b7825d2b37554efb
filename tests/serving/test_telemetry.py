"""The request log (rotation included) and `quark telemetry`'s summary, text and plot, checked against numbers
computed here from the records written."""

from __future__ import annotations

import json
import os
import threading

import numpy as np
import pytest

from quark_jax.serving import telemetry
from quark_jax.serving.telemetry import RequestLog

ENDPOINTS = ("/v1/completions", "/v1/chat/completions", "/tokenize")


def make_record(i: int) -> dict:
    """Request ``i``: a spread of endpoints, prompt lengths, errors and latencies (deterministic)."""
    endpoint = ENDPOINTS[i % 3]
    prompt_tokens = (5, 40, 200, 1000, 3000)[i % 5]
    error, status = None, 200
    if i % 11 == 0:
        error, status = "queue_full", 503
    elif i % 13 == 0:
        error, status = "invalid_request_error", 400
    elif i % 17 == 0:
        error, status = "disconnected", 200
    generating = endpoint != "/tokenize" and error is None
    return {"time": 1_800_000_000.0 + i, "id": f"req-{i}", "endpoint": endpoint, "status": status, "error": error,
            "prompt_tokens": prompt_tokens, "completion_tokens": 10 + i % 7 if generating else 0,
            "ttft_s": 0.01 * (1 + i % 9) + prompt_tokens / 1e4 if generating else None,
            "itl_s": 0.002 * (1 + i % 4) if generating else None,
            "e2e_s": 0.05 * (1 + i % 10) + prompt_tokens / 1e3, "stream": i % 2 == 0}


@pytest.fixture
def written(tmp_path):
    """120 records written from 4 threads into a log small enough to rotate, plus one damaged line."""
    records = [make_record(i) for i in range(120)]
    log = RequestLog(str(tmp_path), max_bytes=4000, backups=20)

    def write(part):
        for record in part:
            log.write(record)

    threads = [threading.Thread(target=write, args=(records[k::4],)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with open(log.path, "a", encoding="utf-8") as f:  # a torn line, as a crash mid-write would leave
        f.write('{"time": 1800000999.0, "id": "torn", "endp\n')
    log.close()
    return tmp_path, records


def test_log_rotates_and_keeps_every_record(written):
    log_dir, records = written
    files = telemetry.log_files(str(log_dir))
    assert len(files) > 2 and files[-1].endswith("requests.jsonl") and files[0].endswith(f".{len(files) - 1}")
    assert all(os.path.getsize(f) <= 4000 for f in files[:-1])
    lines = [line for f in files for line in open(f, encoding="utf-8")]
    parsed = [json.loads(line) for line in lines if "torn" not in line]
    assert sorted(r["id"] for r in parsed) == sorted(r["id"] for r in records)
    assert all(set(r) == set(telemetry.RECORD_KEYS) for r in parsed)


def test_write_refuses_wrong_keys(tmp_path):
    with RequestLog(str(tmp_path)) as log:
        log.write({**make_record(1), "prompt": "What is 2 + 2?"})
        with pytest.raises(ValueError, match=r"missing keys \['e2e_s'\].*unknown keys \['latency'\]"):
            log.write({**{k: v for k, v in make_record(1).items() if k != "e2e_s"}, "latency": 1.0})
    assert len(open(tmp_path / "requests.jsonl").readlines()) == 1


def test_summary_matches_the_records(written):
    log_dir, records = written
    s = telemetry.summarize(str(log_dir))
    assert s["requests"] == 120 and s["unreadable_lines"] == 1
    assert s["prompt_tokens"] == sum(r["prompt_tokens"] for r in records)
    assert s["completion_tokens"] == sum(r["completion_tokens"] for r in records)
    assert s["time_span"] == {"first": 1_800_000_000.0, "last": 1_800_000_119.0, "seconds": 119.0}
    for endpoint in ENDPOINTS:
        mine = [r for r in records if r["endpoint"] == endpoint]
        assert s["by_endpoint"][endpoint]["requests"] == len(mine) == 40
        assert s["by_endpoint"][endpoint]["completion_tokens"] == sum(r["completion_tokens"] for r in mine)
    queue_full = sum(1 for i in range(120) if i % 11 == 0)
    invalid = sum(1 for i in range(120) if i % 11 and i % 13 == 0)
    disconnected = sum(1 for i in range(120) if i % 11 and i % 13 and i % 17 == 0)
    assert s["errors_by_kind"] == {"queue_full": queue_full, "invalid_request_error": invalid,
                                   "disconnected": disconnected}
    assert s["errors_by_status"] == {200: disconnected, 400: invalid, 503: queue_full}
    assert s["failed"] == queue_full + invalid + disconnected

    ok = [r for r in records if r["error"] is None]
    bucket = [r for r in ok if 129 <= r["prompt_tokens"] <= 512]
    stats = s["latency_by_prompt_length"]["129-512"]
    assert stats["requests"] == len(bucket)
    assert stats["e2e_s"]["p95"] == pytest.approx(np.percentile([r["e2e_s"] for r in bucket], 95))
    assert stats["ttft_s"]["p50"] == pytest.approx(
        np.percentile([r["ttft_s"] for r in bucket if r["ttft_s"] is not None], 50))
    assert s["latency"]["e2e_s"]["p99"] == pytest.approx(np.percentile([r["e2e_s"] for r in ok], 99))
    assert list(s["latency_by_prompt_length"]) == ["1-32", "33-128", "129-512", "513-2048", ">2048"]
    assert s["latency_by_prompt_length"][">2048"]["requests"] == sum(1 for r in ok if r["prompt_tokens"] > 2048)


def test_telemetry_main_prints_tables_and_writes_a_png(written, capsys):
    log_dir, _ = written
    assert telemetry.telemetry_main(str(log_dir), None) == 0
    out = capsys.readouterr().out
    assert "usage by endpoint" in out and "queue_full" in out and "129-512" in out and "unreadable lines: 1" in out
    png = log_dir / "telemetry.png"
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_empty_directory_raises_naming_it(tmp_path):
    with pytest.raises(ValueError, match=f"{tmp_path}.*quark serve --log_dir"):
        telemetry.telemetry_main(str(tmp_path), None)
