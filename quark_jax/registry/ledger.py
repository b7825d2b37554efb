"""The registry ledger: one JSON object per line, append-only, each line chained to the one before by hash.

A line is an event about a run::

    {"seq": 3, "time": 1800000000.0, "event": "promoted", "run": "/abs/run", "run_id": "3f2a...",
     "stage": "production", ..., "prev": "<hash of line 2>", "hash": "<hash of this line>"}

``hash`` is the SHA-256 of the line's canonical JSON (sorted keys, no spaces) without the ``hash`` field, so it
covers ``prev``: editing, inserting, reordering or deleting any line but the last breaks the chain at that
line, which :meth:`Ledger.verify` names (:class:`LedgerTamperedError`). The first line's ``prev`` is 64 zeros.
Removing lines from the end leaves a valid shorter chain; the head hash that every append returns (and that
``quark runs promote`` prints) is what to keep elsewhere to detect that.

Events: ``registered`` (a run enters the registry, with its lineage's parents, data and code), ``evaluated``
(task figures against a baseline: passed or not, with the regressions), ``promoted`` (to a stage, citing the
``evaluated`` event's hash) and ``rejected`` (a promotion refused by the gate). Every read verifies the chain
first. Appends hold an exclusive ``flock`` on the file, so two processes never fork the chain. The ledger is a
local file (default ``~/.cache/quark_jax/registry.jsonl``, or ``$QUARK_REGISTRY``, or ``--registry``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator, Mapping
from typing import Any

GENESIS = "0" * 64
EVENTS = ("registered", "evaluated", "promoted", "rejected")
ENV_VAR = "QUARK_REGISTRY"


class LedgerTamperedError(ValueError):
    """The ledger's hash chain is broken: the message names the first bad line and what is wrong with it."""


def default_path() -> str:
    """``$QUARK_REGISTRY``, else ``~/.cache/quark_jax/registry.jsonl``."""
    return os.environ.get(ENV_VAR) or os.path.join(os.path.expanduser("~"), ".cache", "quark_jax", "registry.jsonl")


def line_hash(record: Mapping[str, Any]) -> str:
    """SHA-256 of a record's canonical JSON without its ``hash`` field."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


class Ledger:
    """The ledger file at ``path`` (created on the first append)."""

    def __init__(self, path: str | None = None):
        path = path or default_path()
        if "://" in path:
            raise ValueError(f"--registry {path}: the ledger is a local file (appends are locked with flock)")
        self.path = os.path.abspath(os.path.expanduser(path))
        if os.path.islink(self.path):
            raise ValueError(f"--registry {self.path} is a symbolic link; point at the ledger file itself")

    # ---- reading --------------------------------------------------------------------------------
    def _lines(self) -> list[str]:
        if not os.path.exists(self.path):
            return []
        with open(self.path, encoding="utf-8") as f:
            return f.read().splitlines()

    def _verified(self, lines: list[str]) -> list[dict]:
        records, prev = [], GENESIS
        for number, line in enumerate(lines, 1):
            where = f"{self.path} line {number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise LedgerTamperedError(f"{where} is not JSON ({e.msg}): the ledger was edited or torn") from None
            if not isinstance(record, dict):
                raise LedgerTamperedError(f"{where} is not a JSON object: the ledger was edited")
            if record.get("prev") != prev:
                raise LedgerTamperedError(f"{where}: its 'prev' does not match the hash of line {number - 1} "
                                          "(a line was changed, inserted, removed or reordered before it)"
                                          if number > 1 else f"{where}: the first line's 'prev' is not the genesis hash")
            if record.get("hash") != line_hash(record):
                raise LedgerTamperedError(f"{where}: its content does not match its hash (the line was edited)")
            if record.get("seq") != number:
                raise LedgerTamperedError(f"{where}: 'seq' is {record.get('seq')!r}, expected {number}")
            records.append(record)
            prev = record["hash"]
        return records

    def records(self) -> list[dict]:
        """Every event, oldest first, after verifying the chain (:class:`LedgerTamperedError` otherwise)."""
        return self._verified(self._lines())

    def verify(self) -> str:
        """Checks the whole chain; returns the head hash (the genesis hash for an empty ledger)."""
        records = self.records()
        return records[-1]["hash"] if records else GENESIS

    # ---- appending ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[Any]:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0), 0o644)
        with os.fdopen(fd, "r+", encoding="utf-8") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield f
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def append(self, event: str, run: str | None, **fields: Any) -> dict:
        """Appends one event (chained to the verified head) and returns it, fsynced."""
        if event not in EVENTS:
            raise ValueError(f"unknown ledger event {event!r}; one of {', '.join(EVENTS)}")
        with self._locked() as f:
            f.seek(0)
            records = self._verified(f.read().splitlines())
            record = {"seq": len(records) + 1, "time": time.time(), "event": event, "run": run, **fields,
                      "prev": records[-1]["hash"] if records else GENESIS}
            record = json.loads(json.dumps(record, default=float))  # what is hashed is what is read back
            record["hash"] = line_hash(record)
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return record

    # ---- questions ------------------------------------------------------------------------------
    def events_of(self, run: str) -> list[dict]:
        """The events about one run directory (by absolute path), oldest first."""
        return [r for r in self.records() if r.get("run") == run]

    def is_registered(self, run: str, run_id: str | None) -> bool:
        return any(r["event"] == "registered" and r.get("run_id") == run_id for r in self.events_of(run))

    def current(self, stage: str) -> dict | None:
        """The newest ``promoted`` event of a stage (the run serving there), or None."""
        promoted = [r for r in self.records() if r["event"] == "promoted" and r.get("stage") == stage]
        return promoted[-1] if promoted else None

    def runs(self) -> dict[str, list[dict]]:
        """``{run: its events}`` in order of registration."""
        grouped: dict[str, list[dict]] = {}
        for record in self.records():
            grouped.setdefault(record.get("run"), []).append(record)
        return grouped
