"""The instruction-set builder (quark_jax.data.instructions): determinism, the record schema, correct answers,
and held-out questions that never appear in training (modules by the corpus split, arithmetic by hash)."""

from __future__ import annotations

import json
import re

import pytest

from conftest import REPO
from quark_jax.data import corpus, instructions

SOURCES = {"stdlib_doc", "stdlib_signature", "arithmetic"}
ARITHMETIC = re.compile(r"What is (\d+) ([-+*]) (\d+)\?")
QUESTION = re.compile(r"What (?:does `([^`]+)` do|is the signature of `([^`]+)`)\?")


def qualname_of(prompt: str) -> str:
    doc, signature = QUESTION.fullmatch(prompt).groups()
    return doc or signature


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def stdlib():
    return {split: instructions.stdlib_examples(split) for split in corpus.SPLITS}


def test_first_sentence():
    first = instructions._first_sentence
    assert first("Return the sum of\n    two numbers.  More text here.\n\nSecond paragraph.") == \
        "Return the sum of two numbers."
    assert first("Returns a value without a full stop") == "Returns a value without a full stop"
    assert first("Too short.") is None  # under 12 characters
    assert first("`code` first is not a sentence.") is None
    assert first("A" + "x" * instructions.MAX_ANSWER_CHARS + ".") is None
    assert first("") is None


def test_arithmetic_is_deterministic_correct_and_split_by_question():
    a = instructions.arithmetic_examples(600, seed=1)
    assert a == instructions.arithmetic_examples(600, seed=1)
    b = instructions.arithmetic_examples(600, seed=2)
    assert a != b
    questions = {split: [r["prompt"] for r in rows] for split, rows in a.items()}
    assert sum(map(len, questions.values())) == 600
    assert len(set(questions["train"] + questions["validation"])) == 600  # no repeats
    assert not set(questions["train"]) & set(questions["validation"])
    assert 0.05 < len(questions["validation"]) / 600 < 0.15  # ~10%
    # The split is a function of the question alone: another seed never puts a question on the other side.
    other = {r["prompt"]: split for split, rows in b.items() for r in rows}
    shared = [(q, split) for split in a for q in questions[split] if q in other]
    assert shared and all(other[q] == split for q, split in shared)
    ops = {"+": int.__add__, "-": int.__sub__, "*": int.__mul__}
    for rows in a.values():
        for r in rows:
            assert set(r) == {"prompt", "response", "source"} and r["source"] == "arithmetic"
            x, op, y = ARITHMETIC.fullmatch(r["prompt"]).groups()
            x, y = int(x), int(y)
            assert 0 <= x <= 99 and 0 <= y <= 99 and (op != "*" or (x <= 12 and y <= 12))
            assert r["response"] == f"{x} {op} {y} = {ops[op](x, y)}."


def test_stdlib_examples_schema_and_held_out_modules(stdlib):
    modules = {}
    for split, rows in stdlib.items():
        assert len(rows) > 50, split
        modules[split] = set()
        for r in rows:
            assert set(r) == {"prompt", "response", "source"} and r["source"] in ("stdlib_doc", "stdlib_signature")
            qualname = qualname_of(r["prompt"])
            module, name = qualname.rsplit(".", 1)
            assert not name.startswith("_") and not any(p.startswith("_") for p in module.split("."))
            modules[split].add(module)
            assert len(r["response"]) <= instructions.MAX_ANSWER_CHARS + 2
            if r["source"] == "stdlib_signature":
                assert r["response"].startswith(f"`{qualname}(") and r["response"].endswith(")`")
            else:
                assert r["response"][0].isalpha() and len(r["response"]) >= 12
    # Held-out questions are about modules of the corpus' validation files only.
    assert not modules["train"] & modules["validation"]
    validation_modules = {corpus._module_name(s.relpath) for s in corpus.stdlib_files("validation")}
    assert modules["validation"] <= validation_modules


def test_a_known_function(stdlib):
    """base64.b64encode (in whichever split the corpus puts it) gets its signature and first sentence."""
    import base64
    import inspect

    rows = {r["prompt"]: r["response"] for split in stdlib for r in stdlib[split]}
    assert rows["What is the signature of `base64.b64encode`?"] == "`base64.b64encode(s, altchars=None)`"
    doc = " ".join(inspect.getdoc(base64.b64encode).split("\n\n")[0].split())
    assert doc.startswith(rows["What does `base64.b64encode` do?"])


def test_build_writes_both_splits_deterministically(tmp_path, stdlib):
    counts = instructions.build(str(tmp_path / "a"), arithmetic_count=300, seed=5)
    instructions.build(str(tmp_path / "b"), arithmetic_count=300, seed=5)
    written = {}
    for split in corpus.SPLITS:
        text = (tmp_path / "a" / f"{split}.jsonl").read_text()
        assert text == (tmp_path / "b" / f"{split}.jsonl").read_text()
        written[split] = [json.loads(line) for line in text.splitlines()]
        assert counts[split] == len(written[split])
        assert {r["source"] for r in written[split]} == SOURCES
        # The stdlib part is the split's examples, shuffled in with the arithmetic.
        stdlib_rows = [r for r in written[split] if r["source"] != "arithmetic"]
        assert sorted(map(json.dumps, stdlib_rows)) == sorted(map(json.dumps, stdlib[split]))
    assert sum(r["source"] == "arithmetic" for split in written for r in written[split]) == 300
    prompts = {split: {r["prompt"] for r in rows} for split, rows in written.items()}
    assert not prompts["train"] & prompts["validation"]


def test_the_committed_set_has_the_builders_arithmetic():
    """data/instructions/ was built with the defaults (3000 problems, seed 0): its arithmetic records are exactly
    the builder's (independent of the Python version that built the stdlib part)."""
    expected = instructions.arithmetic_examples(3000, seed=0)
    for split in corpus.SPLITS:
        rows = read_jsonl(f"{REPO}/data/instructions/{split}.jsonl")
        assert all(set(r) == {"prompt", "response", "source"} and r["source"] in SOURCES for r in rows)
        arithmetic = [r for r in rows if r["source"] == "arithmetic"]
        assert sorted(map(json.dumps, arithmetic)) == sorted(map(json.dumps, expected[split]))


def test_questions_name_importable_modules(stdlib):
    names = {qualname_of(r["prompt"]) for split in stdlib for r in stdlib[split]}
    assert all(re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+", name) for name in names), \
        sorted(n for n in names if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+", n))
