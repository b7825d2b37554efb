"""Reading JSON Lines files that users hand us: one record per non-blank line, errors that name the line."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any


def iter_jsonl(path: str, max_bytes: int | None = None) -> Iterator[tuple[int, Any]]:
    """``(line number, record)`` of every non-blank line of ``path``, in order.

    Raises ``ValueError("PATH:LINE: not valid JSON (...)")`` for a line that does not parse or is not UTF-8,
    and ``ValueError("PATH: larger than ...")`` past ``max_bytes``; a missing file is the caller's
    ``OSError``."""
    if max_bytes is not None and os.path.getsize(path) > max_bytes:
        raise ValueError(f"{path}: larger than {max_bytes:,} bytes; split it")
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{number}: not UTF-8 text (bad byte at column {e.start + 1})") from None
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not valid JSON ({e.msg} at column {e.colno})") from None
