"""Tool-call traces for fine-tuning: arithmetic questions answered through the calculator, and directly.

Built from the project's arithmetic set (:func:`quark_jax.data.instructions.arithmetic_examples`: sums and
differences of 0..99, products of 0..12) and a harder set drawn the same way with three-digit sums and
differences and two-digit products, where a small model's own arithmetic fails and the calculator pays. Every
problem gives two conversations:

* **with tools** — the system turn lists the calculator (:func:`quark_jax.data.tool_calls.tools_text`), the
  assistant calls it (``<|tool_call|>{"name": "calculator", "arguments": {"expression": "37 + 48"}}``), the tool
  answers ``85``, and the assistant writes ``37 + 48 = 85.``;
* **without tools** — the user asks and the assistant answers ``37 + 48 = 85.`` itself.

So one fine-tuned model is measured both ways: with the calculator offered (the agent loop) and without it.
Splits follow the arithmetic set's hash of the question, so no held-out question is ever trained on.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Mapping
from typing import Any

from quark_jax.data import tool_calls
from quark_jax.data.instructions import OPERATIONS, arithmetic_examples


def _split(question: str) -> str:
    return "validation" if int(hashlib.sha256(question.encode()).hexdigest(), 16) % 10 == 0 else "train"


def hard_examples(count: int, seed: int = 0) -> dict[str, list[dict[str, str]]]:
    """Three-digit sums and differences (100..999) and two-digit products (10..99), split like the arithmetic set."""
    rng = random.Random(f"hard-{seed}")
    seen, splits = set(), {"train": [], "validation": []}
    while len(seen) < count:
        op = rng.choice("+-*")
        a, b = (rng.randint(10, 99), rng.randint(10, 99)) if op == "*" else (rng.randint(100, 999), rng.randint(100, 999))
        question = f"What is {a} {op} {b}?"
        if question in seen:
            continue
        seen.add(question)
        splits[_split(question)].append(
            {"prompt": question, "response": f"{a} {op} {b} = {OPERATIONS[op](a, b)}.", "source": "arithmetic_hard"})
    return splits


def problems(count: int = 3000, hard_count: int = 3000, seed: int = 0) -> dict[str, list[dict[str, str]]]:
    """The arithmetic set and the hard set, per split."""
    easy, hard = arithmetic_examples(count, seed), hard_examples(hard_count, seed)
    return {split: easy[split] + hard[split] for split in easy}


def expression(record: Mapping[str, str]) -> str:
    """``"37 + 48"`` from ``"What is 37 + 48?"``."""
    return record["prompt"].removeprefix("What is ").removesuffix("?")


def answer(record: Mapping[str, str]) -> int:
    """The correct result of an arithmetic record."""
    return int(record["response"].rsplit("=", 1)[1].strip().rstrip("."))


def conversations(record: Mapping[str, str], tool_spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The record as a with-tools trace and a without-tools conversation (both ``{"messages": [...]}``)."""
    call = {"function": {"name": tool_spec["function"]["name"], "arguments": {"expression": expression(record)}}}
    traced = [
        {"role": "system", "content": tool_calls.tools_text([tool_spec])},
        {"role": "user", "content": record["prompt"]},
        {"role": "assistant", "content": tool_calls.render_call(call)},
        {"role": "tool", "content": str(answer(record))},
        {"role": "assistant", "content": record["response"]},
    ]
    direct = [{"role": "user", "content": record["prompt"]}, {"role": "assistant", "content": record["response"]}]
    return [{"messages": traced, "source": record["source"] + "_tool"},
            {"messages": direct, "source": record["source"]}]


def build(output_dir: str, tool_spec: Mapping[str, Any], count: int = 3000, hard_count: int = 3000,
          seed: int = 0) -> dict[str, str]:
    """Writes ``{train,validation}.jsonl`` of conversations under ``output_dir``; returns the paths."""
    os.makedirs(output_dir, exist_ok=True)
    paths = {}
    for split, records in problems(count, hard_count, seed).items():
        rows = [c for r in records for c in conversations(r, tool_spec)]
        random.Random(f"{seed}-{split}").shuffle(rows)
        path = os.path.join(output_dir, f"{split}.jsonl")
        with open(path + ".tmp", "w") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        os.replace(path + ".tmp", path)
        paths[split] = path
    return paths
