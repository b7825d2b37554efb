"""The demo's stdlib API Q&A corpus builder (quark_jax.data.domain): schema, order, determinism, answers taken
from the docstrings, the JSONL it writes, and the committed file's shape."""

from __future__ import annotations

import inspect
import json
import platform
import re

import pytest

from quark_jax.data import domain

CHAT = re.compile(
    r"<\|user\|>What does the (function|class) ([\w.]+)\.(\w+)(\(.*\))? do\?<\|end\|>\n"
    r"<\|assistant\|>(.+)<\|end\|>\n",
    re.DOTALL,
)


@pytest.fixture(scope="module")
def records():
    return domain.records()


def check_schema(rows):
    assert 0 < len(rows) <= domain.MAX_RECORDS
    assert [(r["module"], r["name"]) for r in rows] == sorted((r["module"], r["name"]) for r in rows)
    assert "python" in rows[0] and all("python" not in r for r in rows[1:])
    for r in rows:
        assert set(r) - {"python"} == {"text", "module", "name", "kind"}
        kind, module, name, signature, answer = CHAT.fullmatch(r["text"]).groups()
        assert (kind, module, name) == (r["kind"], r["module"], r["name"])
        assert not name.startswith("_") and not any(part.startswith("_") for part in module.split("."))
        assert (signature is None) == (kind == "class")  # functions show their arguments
        assert len(answer.split()) >= 5 and "\n\n" not in answer and answer == answer.strip()


def test_records_schema_and_order(records):
    check_schema(records)
    assert records[0]["python"] == platform.python_version()
    assert {r["kind"] for r in records} == {"function", "class"}


def test_records_are_deterministic(records):
    assert domain.records() == records


def test_answers_are_the_first_docstring_paragraph(records):
    """For pure-Python modules that are safe to import, the answer is the first paragraph of the object's own
    (cleaned) docstring, and a function's question shows its arguments as written."""
    import abc
    import argparse
    import base64

    checked = 0
    for r in records:
        module = {"abc": abc, "argparse": argparse, "base64": base64}.get(r["module"])
        if module is None:
            continue
        obj = getattr(module, r["name"])
        answer = CHAT.fullmatch(r["text"]).group(5)
        assert answer == inspect.cleandoc(obj.__doc__).split("\n\n")[0].strip(), r["name"]
        checked += 1
    assert checked >= 10
    by_name = {(r["module"], r["name"]): r["text"] for r in records}
    assert "What does the function base64.b64encode(s, altchars=None) do?" in by_name[("base64", "b64encode")]


def test_main_writes_the_records_as_jsonl(tmp_path, records, capsys, monkeypatch):
    monkeypatch.setattr(domain, "records", lambda: records)  # built once above; main's own work is the file
    out = tmp_path / "qa.jsonl"
    domain.main(["--output", str(out)])
    assert capsys.readouterr().out.strip() == f"wrote {len(records)} records to {out}"
    assert [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()] == records


def test_the_committed_corpus_has_the_builders_schema():
    with open(domain.DEFAULT_OUTPUT, encoding="utf-8") as f:
        check_schema([json.loads(line) for line in f])
