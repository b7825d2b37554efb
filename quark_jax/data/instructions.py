"""A small instruction-tuning set that the project builds itself, offline and deterministically.

Two kinds of single-turn examples:

* **stdlib QA** — "What does ``json.dumps`` do?" answered by the first sentence of its docstring, and
  "What is the signature of ``json.dumps``?" answered from the parsed ``def`` line. Built from the standard
  library's source (public, documented, top-level functions).
* **arithmetic** — "What is 37 + 48?" answered "37 + 48 = 85." (sums, differences and products of small
  numbers from a seeded generator).

The split follows the corpus: a module in the corpus' validation split gives held-out questions, so held-out
answers were never seen in pre-training either; arithmetic problems are split by a hash of the question.

    python -m quark_jax.data.instructions --output data/instructions

writes ``{train,validation}.jsonl`` with ``{"prompt", "response", "source"}`` records. The built files are
committed (``data/instructions/``) so every machine trains on the same set whatever its Python version.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import random
import re

from quark_jax.data import corpus

MAX_ANSWER_CHARS = 240


def _first_sentence(docstring: str) -> str | None:
    paragraph = docstring.strip().split("\n\n")[0]
    paragraph = " ".join(line.strip() for line in paragraph.splitlines())
    match = re.match(r"(.+?[.!?])(\s|$)", paragraph)
    sentence = (match.group(1) if match else paragraph).strip()
    if len(sentence) < 12 or len(sentence) > MAX_ANSWER_CHARS or not sentence[0].isalpha():
        return None
    return sentence


def _signature(node: ast.FunctionDef, qualname: str) -> str:
    return f"{qualname}({ast.unparse(node.args)})"


def stdlib_examples(split: str) -> list[dict[str, str]]:
    """Docstring and signature questions about public top-level functions of one corpus split."""
    examples = []
    for source in corpus.stdlib_files(split):
        if "/_" in "/" + source.relpath or source.relpath.startswith("_"):
            continue  # private modules
        tree = corpus.parse(source)
        if tree is None:
            continue
        module = corpus._module_name(source.relpath)
        if not all(part.isidentifier() for part in module.split(".")):
            continue  # not importable under that name (e.g. config-3.11-<platform>/python-config.py)
        for node in tree.body:
            if not isinstance(node, ast.FunctionDef) or node.name.startswith("_"):
                continue
            qualname = f"{module}.{node.name}"
            sentence = _first_sentence(ast.get_docstring(node) or "")
            if sentence:
                examples.append({"prompt": f"What does `{qualname}` do?", "response": sentence,
                                 "source": "stdlib_doc"})
            signature = _signature(node, qualname)
            if len(signature) <= MAX_ANSWER_CHARS:
                examples.append({"prompt": f"What is the signature of `{qualname}`?",
                                 "response": f"`{signature}`", "source": "stdlib_signature"})
    return examples


OPERATIONS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def draw_problem(rng: random.Random, ops: str = "+-*") -> tuple[int, str, int, str]:
    """``(a, op, b, "What is a op b?")``: operands in 0..99 (0..12 for products), ``op`` drawn from ``ops``."""
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    op = rng.choice(ops) if len(ops) > 1 else ops
    if op == "*":
        a, b = a % 13, b % 13
    return a, op, b, f"What is {a} {op} {b}?"


def arithmetic_examples(count: int = 3000, seed: int = 0) -> dict[str, list[dict[str, str]]]:
    """Seeded sums, differences and products, split ~90/10 by a hash of the question."""
    rng = random.Random(seed)
    seen, splits = set(), {"train": [], "validation": []}
    while len(seen) < count:
        a, op, b, question = draw_problem(rng)
        if question in seen:
            continue
        seen.add(question)
        result = OPERATIONS[op](a, b)
        split = "validation" if int(hashlib.sha256(question.encode()).hexdigest(), 16) % 10 == 0 else "train"
        splits[split].append({"prompt": question, "response": f"{a} {op} {b} = {result}.", "source": "arithmetic"})
    return splits


def build(output_dir: str, arithmetic_count: int = 3000, seed: int = 0) -> dict[str, int]:
    """Writes ``train.jsonl`` and ``validation.jsonl`` under ``output_dir``; returns example counts."""
    os.makedirs(output_dir, exist_ok=True)
    arithmetic = arithmetic_examples(arithmetic_count, seed)
    counts = {}
    for split in corpus.SPLITS:
        records = stdlib_examples(split) + arithmetic[split]
        random.Random(f"{seed}-{split}").shuffle(records)
        with open(os.path.join(output_dir, f"{split}.jsonl"), "w") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        counts[split] = len(records)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="data/instructions")
    parser.add_argument("--arithmetic_count", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(build(args.output, args.arithmetic_count, args.seed)))


if __name__ == "__main__":
    main()
