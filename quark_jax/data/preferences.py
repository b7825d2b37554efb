"""Preference pairs for reward modelling and DPO: the JSONL format, the project's own set, fixed-shape batches.

A record is ``{"prompt": str, "chosen": str, "rejected": str}`` (optionally ``"system"``): one user turn and
two candidate assistant replies, the first preferred. Each side is rendered with the chat template
(``quark_jax.data.chat``) as a complete single-turn conversation ending with EOS, with loss weights on the
assistant's tokens only (its content, the closing ``<|end|>`` and the EOS).

The shipped set (``data/preferences/{train,validation}.jsonl``, built by ``python -m quark_jax.data.preferences``)
has a learnable rule: the reply does the arithmetic that was asked. "What is 40 + 73?" prefers
``40 + 73 = 113.`` over ``40 * 73 = 2920.`` (or ``40 - 73 = -33.``), the correct result of another operation
on the same numbers — mostly of an implausible size or sign for the question asked. Validation questions never occur in training (split by a hash
of the question). ``--rule near_miss`` builds the harder set (correct sum over one off by 1 to 9).

Batches (:func:`pair_batches`) are plain numpy, one row per pair and both sides stacked on axis 1
(``[B, 2, T]``, side 0 = chosen), not packed: rows are aligned pair by pair. Per side, with ``n`` the
sequence's tokens::

    input_tokens   0, t_1, ..., t_n, 0...     (BOS = 0, as seqio's autoregressive inputs)
    targets        t_1, ..., t_n, 0, 0...     (next-token targets of the inputs)
    loss_weights   assistant tokens of targets (for sequence log-probabilities)
    positions      0 .. n on the n + 1 real inputs, 0 on padding
    segment_ids    1 on the n + 1 real inputs, 0 on padding
    last_index     n: the input position whose hidden state has read the whole sequence (incl. its EOS)

plus ``valid`` ``[B]`` (0 on rows that only pad the last batch of a non-repeating pass). The order is a pure
function of ``(seed, batch position)``: epoch ``e`` is the permutation ``default_rng([seed, e])`` of the
pairs, so a run resumed at batch ``k`` sees exactly the batches an unbroken run sees.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
import os
import random
from collections.abc import Iterator
from typing import Any

import numpy as np

from quark_jax.data import chat, instructions
from quark_jax.resources import shipped

log = logging.getLogger(__name__)

PREFERENCES_DIR = str(shipped("data/preferences"))
FIELDS = ("prompt", "chosen", "rejected")
ARRAY_KEYS = ("input_tokens", "targets", "loss_weights", "positions", "segment_ids")


# ---- the project's preference set -------------------------------------------------------------------

OPERATIONS = instructions.OPERATIONS
RULES = ("operation", "near_miss")


def arithmetic_pairs(count: int = 2200, seed: int = 0, rule: str = "operation") -> dict[str, list[dict[str, str]]]:
    """Seeded arithmetic questions, the correct answer chosen; split ~90/10 by a hash of the question.

    ``rule="operation"``: "What is a op b?" (op in + - *; a, b in 0..99, below 13 for products, as in
    ``quark_jax.data.instructions``) rejects the correct result of another operation on the same numbers
    (``40 + 73 = 113.`` over ``40 * 73 = 2920.``). Each operation is as frequent among rejected replies as
    among chosen ones, but a wrong operation on these operands usually gives a result of implausible size or
    sign for the question (a four-digit product for a sum, a negative number for a product), and that is the
    cue a small model learns first. ``rule="near_miss"``: sums only, rejecting a result off by 1 to 9 (always the
    wrong units digit) — a much harder rule, which the tiny test model does not learn in a few hundred steps.
    """
    if rule not in RULES:
        raise ValueError(f"rule={rule!r} must be one of {RULES}")
    rng = random.Random(seed)
    seen, splits = set(), {"train": [], "validation": []}
    while len(seen) < count:
        a, op, b, question = instructions.draw_problem(rng, "+-*" if rule == "operation" else "+")
        if question in seen:
            continue
        seen.add(question)
        result = OPERATIONS[op](a, b)
        if rule == "operation":
            other = rng.choice([o for o in OPERATIONS if o != op])
            rejected = f"{a} {other} {b} = {OPERATIONS[other](a, b)}."
        else:
            offsets = [d for d in range(-9, 10) if d != 0 and result + d >= 0]
            rejected = f"{a} {op} {b} = {result + rng.choice(offsets)}."
        split = "validation" if int(hashlib.sha256(question.encode()).hexdigest(), 16) % 10 == 0 else "train"
        splits[split].append({"prompt": question, "chosen": f"{a} {op} {b} = {result}.", "rejected": rejected,
                              "source": f"arithmetic_{rule}"})
    return splits


def build(output_dir: str = PREFERENCES_DIR, count: int = 2200, seed: int = 0, rule: str = "operation") -> dict[str, int]:
    """Writes ``train.jsonl`` and ``validation.jsonl`` under ``output_dir``; returns pair counts."""
    os.makedirs(output_dir, exist_ok=True)
    counts = {}
    for split, records in arithmetic_pairs(count, seed, rule).items():
        with open(os.path.join(output_dir, f"{split}.jsonl"), "w") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        counts[split] = len(records)
    return counts


# ---- reading and tokenizing -------------------------------------------------------------------------

def split_path(data_dir: str, split: str) -> str:
    """``data_dir/split.jsonl``; a relative ``data_dir`` is looked up in the working directory, then among the
    shipped data (``data/preferences`` works from anywhere)."""
    path = os.path.join(data_dir, f"{split}.jsonl")
    if not os.path.isabs(path) and not os.path.exists(path) and path.startswith("data/") and shipped(path).exists():
        path = str(shipped(path))
    return path


def read_pairs(path: str) -> list[dict[str, Any]]:
    """Records of a preference JSONL file, checked: a missing file or field raises naming the file and line."""
    from quark_jax.data import chat_tasks  # lazy: imports TensorFlow

    def check(record):
        missing = [k for k in FIELDS if not isinstance(record.get(k), str)] if isinstance(record, dict) else FIELDS
        if missing:
            return (f"a preference record needs string fields {list(FIELDS)}; "
                    f"missing or not a string: {list(missing)}")
        return None

    records = chat_tasks.read_jsonl(path, check, missing_hint=(
        "the project's set is built by `python -m quark_jax.data.preferences`; records are {prompt, chosen, rejected}"))
    if not records:
        raise ValueError(f"{path} holds no preference pairs")
    return records


def _side(record: dict, response: str, vocabulary: Any) -> tuple[list[int], list[int]]:
    return chat.tokenize_conversation(chat.prompt_response(record["prompt"], response, record.get("system")), vocabulary)


@functools.lru_cache(maxsize=8)
def tokenized_pairs(path: str, length: int, drop_too_long: bool = False,
                    vocabulary_path: str | None = None) -> dict[str, np.ndarray]:
    """Every pair of ``path`` as fixed-shape arrays ``[N, 2, length]`` (and ``last_index`` ``[N, 2]``).

    ``vocabulary_path``: a SentencePiece model (default: the project's tokenizer).

    A side needs ``tokens + 1`` (the BOS) positions; a longer pair raises naming the file, line and lengths
    (with ``drop_too_long`` it is skipped and counted in a warning instead): truncating would cut the response.
    """
    from quark_jax.data import tokenizer

    vocabulary = tokenizer.get_vocabulary(vocabulary_path)
    records = read_pairs(path)
    rows: list[list[tuple[list[int], list[int]]]] = []
    too_long = []
    for number, record in enumerate(records, 1):
        try:
            sides = [_side(record, record[k], vocabulary) for k in ("chosen", "rejected")]
        except ValueError as e:
            raise ValueError(f"{path} pair {number}: {e}") from e
        if max(len(t) for t, _ in sides) + 1 > length:
            too_long.append((number, [len(t) + 1 for t, _ in sides]))
            continue
        rows.append(sides)
    if too_long and not drop_too_long:
        number, lengths = too_long[0]
        raise ValueError(
            f"{path}: {len(too_long)} pair(s) do not fit in {length} positions (first: pair {number}, chosen/rejected "
            f"need {lengths[0]}/{lengths[1]} including BOS); raise TASK_FEATURE_LENGTHS['targets'] or set "
            "drop_too_long=True on the objective to skip them")
    if too_long:
        log.warning("%s: skipped %d of %d pairs longer than %d positions", path, len(too_long), len(records), length)
    if not rows:
        raise ValueError(f"{path}: no pair fits in {length} positions")
    n = len(rows)
    out = {k: np.zeros((n, 2, length), np.int32) for k in ARRAY_KEYS}
    out["loss_weights"] = np.zeros((n, 2, length), np.float32)
    out["last_index"] = np.zeros((n, 2), np.int32)
    for i, sides in enumerate(rows):
        for s, (tokens, weights) in enumerate(sides):
            m = len(tokens)
            out["input_tokens"][i, s, 1:m + 1] = tokens
            out["targets"][i, s, :m] = tokens
            out["loss_weights"][i, s, :m] = weights
            out["positions"][i, s, :m + 1] = np.arange(m + 1)
            out["segment_ids"][i, s, :m + 1] = 1
            out["last_index"][i, s] = m
    for v in out.values():
        v.setflags(write=False)
    return out


# ---- batches ----------------------------------------------------------------------------------------

def pair_batches(pairs: dict[str, np.ndarray], batch_size: int, seed: int, start_batch: int = 0, shuffle: bool = True,
                 repeat: bool = True, shard_index: int = 0, num_shards: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """Batches of ``batch_size`` pairs (this host's ``batch_size / num_shards`` rows), from batch ``start_batch``.

    Global pair ``p = batch · batch_size + row`` is pair ``perm_e[p mod N]`` of epoch ``e = p // N`` (``perm_e``
    the identity without ``shuffle``). Without ``repeat`` the pass ends after one epoch, the last batch padded
    with ``valid = 0`` rows.
    """
    n = len(next(iter(pairs.values())))  # any dict of row-aligned arrays (the contrastive pairs too)
    if batch_size % num_shards:
        raise ValueError(f"batch size {batch_size} is not divisible by the {num_shards} hosts")
    local = batch_size // num_shards
    perms: dict[int, np.ndarray] = {}

    def order(epoch: int) -> np.ndarray:
        if epoch not in perms:
            perms.clear()
            perms[epoch] = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
        return perms[epoch]

    batch = start_batch
    while True:
        first = batch * batch_size + shard_index * local
        if not repeat and batch * batch_size >= n:
            return
        positions = np.arange(first, first + local)
        valid = np.ones(local, np.float32) if repeat else (positions < n).astype(np.float32)
        if not repeat:
            positions = np.where(positions < n, positions, 0)
        index = np.array([order(int(p // n))[p % n] for p in positions])
        out = {k: v[index] for k, v in pairs.items()}
        out["valid"] = valid
        yield out
        batch += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="data/preferences")
    parser.add_argument("--count", type=int, default=2200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rule", choices=RULES, default="operation")
    args = parser.parse_args()
    print(json.dumps(build(args.output, args.count, args.seed, args.rule)))


if __name__ == "__main__":
    main()
