"""The audit trail: every agent step, tool call, guardrail decision and model version, as append-only JSONL.

One JSON object per line: ``{"time", "request_id", "event", "model", ...details}``. The file is opened in
append mode for every write and each line is written with a single ``write`` of a complete line followed by a
flush and ``fsync``, so concurrent writers in one process never interleave partial lines and a crash loses at
most the line being written. Lines longer than ``max_line_bytes`` have their largest string fields truncated
(marked ``"…[truncated]"``) rather than being dropped.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

MAX_LINE_BYTES = 64_000


class AuditLog:
    """Appends events to ``path`` (created with its parent folders); thread-safe within a process."""

    def __init__(self, path: str, max_line_bytes: int = MAX_LINE_BYTES):
        self.path = path
        self.max_line_bytes = max_line_bytes
        self._lock = threading.Lock()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def append(self, request_id: str, event: str, model: str | None = None, **details: Any) -> dict[str, Any]:
        """Writes one event and returns it as written."""
        record = {"time": round(time.time(), 6), "request_id": request_id, "event": event, "model": model, **details}
        line = json.dumps(record, ensure_ascii=False, default=str)
        if len(line.encode()) > self.max_line_bytes:
            record = _shrink(record, self.max_line_bytes)
            line = json.dumps(record, ensure_ascii=False, default=str)
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, (line + "\n").encode())
                os.fsync(fd)
            finally:
                os.close(fd)
        return record


def read(path: str) -> Iterator[dict[str, Any]]:
    """The events of an audit log in order (a torn last line from a crash is skipped)."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def _shrink(record: Mapping[str, Any], limit: int) -> dict[str, Any]:
    record = dict(record)
    strings = sorted((k for k, v in record.items() if isinstance(v, str)), key=lambda k: -len(record[k]))
    for key in strings:
        excess = len(json.dumps(record, ensure_ascii=False, default=str).encode()) - limit
        if excess <= 0:
            break
        keep = max(0, len(record[key]) - excess - 32)
        record[key] = record[key][:keep] + "…[truncated]"
    if len(json.dumps(record, ensure_ascii=False, default=str).encode()) > limit:  # nested fields too big
        record = {k: record[k] for k in ("time", "request_id", "event", "model")} | {"truncated": True}
    return record
