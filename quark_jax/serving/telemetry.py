"""The server's request log and what `quark telemetry` reads out of it: usage, failure modes, latency hotspots.

**The log.** :class:`RequestLog` appends one JSON object per finished request to ``LOG_DIR/requests.jsonl``
and rotates it by size (``requests.jsonl.1`` is the newest rotated file, ``.5`` the oldest by default), through
the standard library's ``RotatingFileHandler``: writes from many threads are serialised by the handler's lock,
and a rotation never splits a line. One server process per log directory (the handler is not multi-process
safe); a local directory only.

**A record** has exactly these keys (:data:`RECORD_KEYS`; ``prompt`` only when prompt logging is on, which it is
not by default)::

    time               unix seconds (float) when the request arrived
    id                 the request id (str)
    endpoint           "/v1/completions", "/v1/chat/completions", "/tokenize", ...
    status             the HTTP status (int)
    error              null, or a kind: "invalid_request_error", "queue_full", "disconnected", "internal_error", ...
    prompt_tokens      tokens of the prompt (int; 0 when the request failed before tokenizing)
    completion_tokens  tokens generated, all choices together (int)
    ttft_s             seconds to the first generated token (float or null)
    itl_s              mean seconds between generated tokens (float or null)
    e2e_s              seconds from arrival to the last byte (float)
    stream             whether the response was streamed (bool)
    prompt             the prompt text (str): only with prompt logging on

**The summary** (:func:`summarize`): requests and tokens by endpoint; failed requests (``error`` set or status
>= 400) by error kind and by status; p50/p95/p99 of ``e2e_s`` and ``ttft_s`` over the *successful* requests,
overall and by prompt length (:data:`PROMPT_BUCKETS`), so a quick 400 never hides a slow generation. A line that
is not such a record (a damaged or hand-edited line) is skipped and counted in ``unreadable_lines``.
"""

from __future__ import annotations

import itertools
import json
import logging
import logging.handlers
import os
from collections import Counter
from typing import Any

import numpy as np

REQUEST_LOG_FILE = "requests.jsonl"
TELEMETRY_PNG = "telemetry.png"
RECORD_KEYS = ("time", "id", "endpoint", "status", "error", "prompt_tokens", "completion_tokens", "ttft_s",
               "itl_s", "e2e_s", "stream")
OPTIONAL_KEYS = ("prompt",)
# (label, smallest, largest) prompt tokens; a prompt of 0 tokens (failed before tokenizing) counts in the first.
PROMPT_BUCKETS = (("1-32", 0, 32), ("33-128", 33, 128), ("129-512", 129, 512), ("513-2048", 513, 2048),
                  (">2048", 2049, None))
PERCENTILES = (50, 95, 99)

_log_numbers = itertools.count()


# ---- writing ------------------------------------------------------------------------------------------------

def _jsonable(value: Any) -> Any:
    """numpy scalars (an ``np.int64`` token count) as Python numbers; anything else is a bug of the caller."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"a request record holds a {type(value).__name__}, which is not JSON")


class RequestLog:
    """A thread-safe, size-rotated JSONL log of requests at ``log_dir/requests.jsonl`` (see the module docstring).

    ``max_bytes``: rotate when the file would grow past this; ``backups``: rotated files kept
    (``requests.jsonl.1`` .. ``.{backups}``; older ones are deleted).
    """

    def __init__(self, log_dir: str, max_bytes: int = 10_000_000, backups: int = 5):
        os.makedirs(log_dir, exist_ok=True)
        self.path = os.path.join(log_dir, REQUEST_LOG_FILE)
        self._handler = logging.handlers.RotatingFileHandler(self.path, maxBytes=max_bytes, backupCount=backups,
                                                             encoding="utf-8")
        self._handler.setFormatter(logging.Formatter("%(message)s"))
        # A private logger, not registered with logging.getLogger: nothing else writes to it, it reaches no other
        # handler (no propagation to the root logger) and it is dropped with this object.
        self._logger = logging.Logger(f"{__name__}.requests.{next(_log_numbers)}", logging.INFO)
        self._logger.propagate = False
        self._logger.addHandler(self._handler)

    def write(self, record: dict[str, Any]) -> None:
        """Appends ``record`` as one JSON line; a missing or unknown key raises ValueError naming it."""
        missing = [k for k in RECORD_KEYS if k not in record]
        unknown = sorted(k for k in record if k not in RECORD_KEYS + OPTIONAL_KEYS)
        if missing or unknown:
            raise ValueError(f"request record: missing keys {missing}, unknown keys {unknown} "
                             f"(a record has exactly {list(RECORD_KEYS)}, plus 'prompt' with prompt logging)")
        self._logger.info("%s", json.dumps(record, ensure_ascii=False, default=_jsonable))

    def close(self) -> None:
        """Flushes and closes the file; later writes are an error."""
        self._logger.removeHandler(self._handler)
        self._handler.close()

    def __enter__(self) -> "RequestLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---- reading ------------------------------------------------------------------------------------------------

def log_files(log_dir: str) -> list[str]:
    """``requests.jsonl`` and its rotated files, oldest first; ValueError when there is no log in ``log_dir``."""
    current = os.path.join(log_dir, REQUEST_LOG_FILE)
    if not os.path.isfile(current):
        raise ValueError(f"no request log {REQUEST_LOG_FILE} in {log_dir}: start `quark serve --log_dir {log_dir}` "
                         "and send it requests first")
    rotated = []
    for name in os.listdir(log_dir):
        suffix = name[len(REQUEST_LOG_FILE) + 1:]
        if name.startswith(REQUEST_LOG_FILE + ".") and suffix.isdigit():
            rotated.append((int(suffix), os.path.join(log_dir, name)))
    return [path for _, path in sorted(rotated, reverse=True)] + [current]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _well_formed(record: Any) -> bool:
    """Whether a parsed line is a request record whose fields have the types the summary relies on."""
    if not isinstance(record, dict) or any(k not in record for k in RECORD_KEYS):
        return False
    return (_is_number(record["time"]) and isinstance(record["endpoint"], str)
            and isinstance(record["status"], int) and not isinstance(record["status"], bool)
            and (record["error"] is None or isinstance(record["error"], str))
            and all(isinstance(record[k], int) and not isinstance(record[k], bool)
                    for k in ("prompt_tokens", "completion_tokens"))
            and all(record[k] is None or _is_number(record[k]) for k in ("ttft_s", "itl_s"))
            and _is_number(record["e2e_s"]))


def read_records(log_dir: str) -> tuple[list[dict[str, Any]], int, list[str]]:
    """``(records, unreadable line count, files read)`` of the log in ``log_dir``, oldest first."""
    files = log_files(log_dir)
    records, unreadable = [], 0
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    unreadable += 1
                    continue
                if _well_formed(record):
                    records.append(record)
                else:
                    unreadable += 1
    return records, unreadable, files


# ---- the summary --------------------------------------------------------------------------------------------

def failed(record: dict[str, Any]) -> bool:
    """A failed request: an error kind is set, or the status is 400 or more."""
    return record["error"] is not None or record["status"] >= 400


def error_kind(record: dict[str, Any]) -> str:
    """The error kind of a failed request (``http_<status>`` when the server set none)."""
    return record["error"] if record["error"] is not None else f"http_{record['status']}"


def prompt_bucket(prompt_tokens: int) -> str:
    """The label of the :data:`PROMPT_BUCKETS` bucket holding a prompt of ``prompt_tokens`` tokens."""
    for label, _, largest in PROMPT_BUCKETS:
        if largest is None or prompt_tokens <= largest:
            return label
    raise AssertionError("the last bucket is unbounded")


def percentiles(values: list[float]) -> dict[str, float] | None:
    """``{"p50", "p95", "p99"}`` of ``values`` (numpy's default linear interpolation); None when there are none."""
    if not values:
        return None
    points = np.percentile(np.asarray(values, np.float64), PERCENTILES)
    return {f"p{p}": float(v) for p, v in zip(PERCENTILES, points)}


def _latencies(records: list[dict[str, Any]]) -> dict[str, Any]:
    return {"requests": len(records),
            **{k: percentiles([r[k] for r in records if r[k] is not None]) for k in ("e2e_s", "ttft_s", "itl_s")}}


def summarize(log_dir: str) -> dict[str, Any]:
    """Usage, failure modes and latency hotspots of the request log in ``log_dir`` (see the module docstring).

    Keys: ``log_dir``, ``files``, ``requests``, ``unreadable_lines``, ``failed``, ``prompt_tokens``,
    ``completion_tokens``, ``time_span`` (``first``, ``last`` arrival and ``seconds`` between; None without
    records), ``by_endpoint`` (``requests``, ``failed``, ``prompt_tokens``, ``completion_tokens`` per endpoint),
    ``errors_by_kind``, ``errors_by_status`` (failed requests only), ``latency`` (the successful requests:
    ``requests`` and the percentiles of ``e2e_s``, ``ttft_s``, ``itl_s``) and ``latency_by_prompt_length``
    (the same for each bucket of :data:`PROMPT_BUCKETS`, every bucket present).
    """
    records, unreadable, files = read_records(log_dir)
    by_endpoint: dict[str, dict[str, int]] = {}
    for r in records:
        usage = by_endpoint.setdefault(r["endpoint"], {"requests": 0, "failed": 0, "prompt_tokens": 0,
                                                       "completion_tokens": 0})
        usage["requests"] += 1
        usage["failed"] += int(failed(r))
        usage["prompt_tokens"] += r["prompt_tokens"]
        usage["completion_tokens"] += r["completion_tokens"]
    failures = [r for r in records if failed(r)]
    successes = [r for r in records if not failed(r)]
    times = [r["time"] for r in records]
    return {
        "log_dir": log_dir,
        "files": files,
        "requests": len(records),
        "unreadable_lines": unreadable,
        "failed": len(failures),
        "prompt_tokens": sum(r["prompt_tokens"] for r in records),
        "completion_tokens": sum(r["completion_tokens"] for r in records),
        "time_span": ({"first": min(times), "last": max(times), "seconds": max(times) - min(times)}
                      if times else None),
        "by_endpoint": dict(sorted(by_endpoint.items())),
        "errors_by_kind": dict(Counter(error_kind(r) for r in failures).most_common()),
        "errors_by_status": dict(sorted(Counter(r["status"] for r in failures).items())),
        "latency": _latencies(successes),
        "latency_by_prompt_length": {
            label: _latencies([r for r in successes if prompt_bucket(r["prompt_tokens"]) == label])
            for label, _, _ in PROMPT_BUCKETS},
    }


# ---- text and picture ---------------------------------------------------------------------------------------

def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in cells]
    return ["  " + line.rstrip() for line in lines[:1] + ["-" * len(lines[0])] + lines[1:]]


def _seconds(stats: dict[str, float] | None, key: str) -> str:
    return "-" if stats is None else f"{stats[key]:.3f}"


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as readable text: totals, then tables of usage, failures and latency by prompt length."""
    span = summary["time_span"]
    lines = [f"request log: {summary['log_dir']} ({len(summary['files'])} file(s))",
             f"requests: {summary['requests']} ({summary['failed']} failed), prompt tokens: "
             f"{summary['prompt_tokens']}, completion tokens: {summary['completion_tokens']}, "
             f"unreadable lines: {summary['unreadable_lines']}"]
    if span is not None:
        lines.append(f"time span: {span['seconds']:.1f} s (unix {span['first']:.3f} .. {span['last']:.3f})")
    lines += ["", "usage by endpoint"]
    lines += _table(["endpoint", "requests", "failed", "prompt tokens", "completion tokens"],
                    [[e, u["requests"], u["failed"], u["prompt_tokens"], u["completion_tokens"]]
                     for e, u in summary["by_endpoint"].items()])
    lines += ["", "failures by error kind"]
    lines += (_table(["error", "requests"], [[k, n] for k, n in summary["errors_by_kind"].items()])
              if summary["errors_by_kind"] else ["  none"])
    lines += ["", "failures by HTTP status"]
    lines += (_table(["status", "requests"], [[s, n] for s, n in summary["errors_by_status"].items()])
              if summary["errors_by_status"] else ["  none"])
    lines += ["", "latency of successful requests by prompt length (seconds)"]
    rows = []
    for label, stats in list(summary["latency_by_prompt_length"].items()) + [("all", summary["latency"])]:
        rows.append([label, stats["requests"]] + [_seconds(stats["e2e_s"], f"p{p}") for p in PERCENTILES]
                    + [_seconds(stats["ttft_s"], f"p{p}") for p in PERCENTILES])
    lines += _table(["prompt tokens", "requests"] + [f"e2e p{p}" for p in PERCENTILES]
                    + [f"ttft p{p}" for p in PERCENTILES], rows)
    return "\n".join(lines)


def plot_summary(summary: dict[str, Any], png_path: str) -> None:
    """One PNG: e2e and time-to-first-token percentiles per prompt-length bucket, and requests per endpoint."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    buckets = summary["latency_by_prompt_length"]
    labels = list(buckets)
    x = np.arange(len(labels))
    width = 0.8 / len(PERCENTILES)
    figure, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for ax, key, title in ((axes[0], "e2e_s", "end-to-end latency"), (axes[1], "ttft_s", "time to first token")):
        for i, p in enumerate(PERCENTILES):
            heights = [0.0 if buckets[b][key] is None else buckets[b][key][f"p{p}"] for b in labels]
            ax.bar(x + (i - (len(PERCENTILES) - 1) / 2) * width, heights, width, label=f"p{p}")
        ax.set_xticks(x, [f"{b}\n(n={buckets[b]['requests']})" for b in labels])
        ax.set_xlabel("prompt tokens")
        ax.set_ylabel("seconds")
        ax.set_title(f"{title} (successful requests)")
        ax.legend()
    endpoints = list(summary["by_endpoint"])
    ok = [summary["by_endpoint"][e]["requests"] - summary["by_endpoint"][e]["failed"] for e in endpoints]
    bad = [summary["by_endpoint"][e]["failed"] for e in endpoints]
    y = np.arange(len(endpoints))
    axes[2].barh(y, ok, label="succeeded")
    axes[2].barh(y, bad, left=ok, label="failed")
    axes[2].set_yticks(y, endpoints)
    axes[2].set_xlabel("requests")
    axes[2].set_title("requests per endpoint")
    axes[2].legend()
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(png_path)), exist_ok=True)
    figure.savefig(png_path, dpi=100)
    plt.close(figure)


def telemetry_main(log_dir: str, png: str | None = None) -> int:
    """`quark telemetry`: prints the summary of ``log_dir``'s request log and writes its plot (default
    ``log_dir/telemetry.png``); returns 0. No request log in ``log_dir``: ValueError saying how to make one."""
    summary = summarize(log_dir)
    png = png or os.path.join(log_dir, TELEMETRY_PNG)
    print(format_summary(summary))
    plot_summary(summary, png)
    print(f"\nplot: {png}")
    return 0
