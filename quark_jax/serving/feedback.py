"""User feedback on served answers, and the preference pairs DPO trains on that `quark data feedback` makes of it.

**POST /v1/feedback** bodies (:func:`validate_feedback`): ``{"id": REQUEST_ID, "rating": 1 | -1}`` (or
``"up"``/``"down"``; optional ``"choice"``, the rated choice's index, default 0) or ``{"id": REQUEST_ID,
"preferred": INDEX}`` (the best of the request's ``n >= 2`` choices).

**The feedback file** (:class:`FeedbackStore`): one JSON object per line, appended and fsynced one at a time,
each the validated body plus what the server knows of that request (:func:`feedback_entry`)::

    {"time": 1800000000.0, "id": "cmpl-1", "rating": 1, "choice": 0, "prompt": "...", "system": "...",
     "choices": ["answer 0", "answer 1"]}
    {"time": 1800000001.0, "id": "cmpl-2", "preferred": 1, "prompt": "...", "choices": ["...", "..."]}

``prompt`` is the user's last message (chat) or the completion prompt, ``system`` (optional) the system message,
``choices`` the response texts by choice index.

**Pairs** (:func:`preference_pairs`), in the format of :mod:`quark_jax.data.preferences`
(``{"prompt", "chosen", "rejected"}``, plus ``"system"`` when there was one): a ``preferred`` entry on a request
with ``k >= 2`` choices gives ``k - 1`` pairs (the preferred text over each other one); ratings are pooled per
``(system, prompt)`` — the last rating of a ``(request, choice)`` wins — and every thumbs-up text is paired
with every thumbs-down text. Duplicates and pairs whose two texts are equal are dropped.

**Files** (:func:`feedback_to_pairs_main`): ``OUTPUT/train.jsonl`` and ``OUTPUT/validation.jsonl``, the
directory ``configs/runs/dpo.gin`` reads as ``PREFERENCES_DIR``, and ``OUTPUT/source.json`` naming the feedback
file and its SHA-256 (which a DPO run's ``lineage.json`` carries, :mod:`quark_jax.lineage`). A prompt's pairs all land in one split, chosen
by a hash of ``(seed, prompt)``; with two or more distinct prompts each split gets at least one of them (with a
single prompt everything is training data and validation.jsonl is empty: train with
``--gin.quark_jax.TrainConfig.eval_every=0``).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from typing import Any

RATINGS = {1: 1, -1: -1, "up": 1, "down": -1}
FEEDBACK_FIELDS = ("id", "rating", "preferred", "choice")
SPLITS = ("train", "validation")
# Written beside the pairs: which feedback file (and its SHA-256) they were made from, for run lineage.
SOURCE_FILE = "source.json"


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# ---- the request body and the stored entry -----------------------------------------------------------------

def validate_feedback(body: Any) -> dict[str, Any]:
    """A POST /v1/feedback body checked and normalised: ``{"id", "rating": ±1, "choice"}`` or
    ``{"id", "preferred"}``. ValueError naming the bad field otherwise."""
    if not isinstance(body, dict):
        raise ValueError("feedback must be a JSON object: {\"id\": ..., \"rating\": 1 | -1} or {\"id\": ..., "
                         "\"preferred\": INDEX}")
    unknown = sorted(str(k) for k in body if k not in FEEDBACK_FIELDS)
    if unknown:
        raise ValueError(f"feedback: unknown field(s) {unknown}; allowed: {list(FEEDBACK_FIELDS)}")
    if not isinstance(body.get("id"), str) or not body["id"]:
        raise ValueError("feedback field 'id' must be the non-empty id of a served request")
    if ("rating" in body) == ("preferred" in body):
        raise ValueError("feedback needs exactly one of the fields 'rating' (1 or -1) and 'preferred' (a choice index)")
    if "preferred" in body:
        if not _is_index(body["preferred"]):
            raise ValueError(f"feedback field 'preferred' must be a choice index >= 0, not {body['preferred']!r}")
        if "choice" in body:
            raise ValueError("feedback field 'choice' goes with 'rating' only; 'preferred' names the choice itself")
        return {"id": body["id"], "preferred": body["preferred"]}
    rating = body["rating"]
    if isinstance(rating, bool) or not isinstance(rating, (int, str)) or rating not in RATINGS:
        raise ValueError(f"feedback field 'rating' must be 1, -1, \"up\" or \"down\", not {rating!r}")
    choice = body.get("choice", 0)
    if not _is_index(choice):
        raise ValueError(f"feedback field 'choice' must be a choice index >= 0, not {choice!r}")
    return {"id": body["id"], "rating": RATINGS[rating], "choice": choice}


def feedback_entry(feedback: dict[str, Any], prompt: str, choices: list[str], system: str | None = None,
                   now: float | None = None) -> dict[str, Any]:
    """The line stored for validated ``feedback`` on a request with ``prompt``, ``system`` and response texts
    ``choices``; ValueError when the feedback names a choice the request does not have."""
    index = feedback.get("preferred", feedback.get("choice", 0))
    field = "preferred" if "preferred" in feedback else "choice"
    if index >= len(choices):
        raise ValueError(f"feedback field '{field}' is {index} but request {feedback['id']} has "
                         f"{len(choices)} choice(s)")
    if "preferred" in feedback and len(choices) < 2:
        raise ValueError(f"feedback field 'preferred' needs a request with 2 or more choices (n >= 2); request "
                         f"{feedback['id']} has {len(choices)}")
    entry = {"time": time.time() if now is None else now, **feedback, "prompt": prompt}
    if system:
        entry["system"] = system
    entry["choices"] = list(choices)
    return entry


class FeedbackStore:
    """Appends feedback entries to a JSONL file, one fsynced line per entry, safely from many threads."""

    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)

    def append(self, entry: dict[str, Any]) -> None:
        """Writes ``entry`` as one line and waits until it is on disk."""
        line = json.dumps(entry, ensure_ascii=False) + "\n"
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())


# ---- reading feedback and making pairs ---------------------------------------------------------------------

def _usable(entry: Any) -> bool:
    """An entry with what pairs are made of: a prompt, the response texts and a valid rating or preference."""
    if not isinstance(entry, dict) or not isinstance(entry.get("prompt"), str):
        return False
    choices = entry.get("choices")
    if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
        return False
    if entry.get("system") is not None and not isinstance(entry["system"], str):
        return False
    if "preferred" in entry:
        return _is_index(entry["preferred"]) and entry["preferred"] < len(choices)
    choice = entry.get("choice", 0)
    return entry.get("rating") in (1, -1) and _is_index(choice) and choice < len(choices)


def read_feedback(path: str) -> tuple[list[dict[str, Any]], int]:
    """``(usable entries in file order, count of skipped lines)``: a torn, malformed or incomplete line is skipped."""
    if not os.path.isfile(path):
        raise ValueError(f"no feedback file {path}: the server appends one entry per POST /v1/feedback there")
    entries, skipped = [], 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                skipped += 1
                continue
            if _usable(entry):
                entries.append(entry)
            else:
                skipped += 1
    return entries, skipped


def _pair(system: str | None, prompt: str, chosen: str, rejected: str, source: str) -> dict[str, str]:
    record = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    if system:
        record["system"] = system
    record["source"] = source
    return record


def preference_pairs(entries: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Preference records (see the module docstring) from feedback entries, in order of first appearance."""
    candidates = []
    ratings: dict[tuple[str, int], tuple[tuple[str | None, str], str, int]] = {}
    for entry in entries:
        key = (entry.get("system") or None, entry["prompt"])
        if "preferred" in entry:
            best = entry["choices"][entry["preferred"]]
            candidates += [_pair(*key, best, other, "feedback_preferred")
                           for j, other in enumerate(entry["choices"]) if j != entry["preferred"]]
        else:
            choice = entry.get("choice", 0)
            ratings.pop((entry["id"], choice), None)  # re-inserted last: a changed rating keeps its new place
            ratings[(entry["id"], choice)] = (key, entry["choices"][choice], entry["rating"])
    pooled: dict[tuple[str | None, str], tuple[list[str], list[str]]] = {}
    for key, text, rating in ratings.values():
        up, down = pooled.setdefault(key, ([], []))
        side = up if rating > 0 else down
        if text not in side:
            side.append(text)
    for key, (up, down) in pooled.items():
        candidates += [_pair(*key, good, bad, "feedback_rating") for good in up for bad in down]
    pairs, seen = [], set()
    for record in candidates:
        identity = (record.get("system"), record["prompt"], record["chosen"], record["rejected"])
        if record["chosen"] != record["rejected"] and identity not in seen:
            seen.add(identity)
            pairs.append(record)
    return pairs


def _prompt_hash(prompt: str, seed: int) -> float:
    """A prompt's place in [0, 1), a pure function of ``(seed, prompt)``."""
    return int(hashlib.sha256(f"{seed}:{prompt}".encode()).hexdigest(), 16) / 2 ** 256


def split_pairs(pairs: list[dict[str, str]], validation_fraction: float = 0.1,
                seed: int = 0) -> dict[str, list[dict[str, str]]]:
    """``{"train", "validation"}``: each prompt's pairs in one split, by hash; with ``validation_fraction > 0``
    and two or more prompts, neither split is left without a prompt."""
    if not 0 <= validation_fraction < 1:
        raise ValueError(f"validation_fraction={validation_fraction} must be in [0, 1)")
    place = {p: _prompt_hash(p, seed) for p in dict.fromkeys(r["prompt"] for r in pairs)}
    held_out = {p for p, h in place.items() if h < validation_fraction}
    if validation_fraction > 0 and len(place) >= 2:
        ranked = sorted(place, key=place.get)
        if not held_out:
            held_out = {ranked[0]}
        elif len(held_out) == len(place):
            held_out.discard(ranked[-1])
    return {"train": [r for r in pairs if r["prompt"] not in held_out],
            "validation": [r for r in pairs if r["prompt"] in held_out]}


def write_source(output_dir: str, feedback_path: str, entries: int, pairs: int) -> None:
    """``output_dir/source.json``: the feedback file's absolute path and content hash, the counts (atomic)."""
    from quark_jax import run_paths
    from quark_jax.data.fingerprint import file_sha256

    source = {"feedback": os.path.abspath(feedback_path), "sha256": file_sha256(feedback_path),
              "entries": entries, "pairs": pairs}
    run_paths.write_text(os.path.join(output_dir, SOURCE_FILE), json.dumps(source, indent=2) + "\n")


def feedback_to_pairs_main(feedback_path: str, output_dir: str, validation_fraction: float = 0.1,
                           seed: int = 0) -> int:
    """`quark data feedback`: writes ``output_dir/{train,validation}.jsonl`` from a feedback file, prints the
    counts, returns 0. ValueError (one line, saying why) when the feedback gives no pair."""
    entries, skipped = read_feedback(feedback_path)
    pairs = preference_pairs(entries)
    if not pairs:
        preferred = sum("preferred" in e for e in entries)
        raise ValueError(
            f"{feedback_path}: no preference pairs in {len(entries)} usable entries ({preferred} preferred, "
            f"{len(entries) - preferred} ratings, {skipped} lines skipped): no request has a preferred choice among "
            "2 or more different answers, and no prompt has both a thumbs-up and a thumbs-down answer")
    splits = split_pairs(pairs, validation_fraction, seed)
    os.makedirs(output_dir, exist_ok=True)
    for split in SPLITS:
        with open(os.path.join(output_dir, f"{split}.jsonl"), "w", encoding="utf-8") as f:
            for record in splits[split]:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
    counts = {split: len(splits[split]) for split in SPLITS}
    write_source(output_dir, feedback_path, len(entries), len(pairs))
    print(json.dumps({"entries": len(entries), "skipped_lines": skipped, "pairs": len(pairs), **counts,
                      "output": output_dir}))
    if not counts["validation"]:
        print("validation.jsonl is empty (a single prompt, or validation_fraction=0): train with "
              "--gin.quark_jax.TrainConfig.eval_every=0")
    return 0
