"""Builds the demo's JSONL domain corpus: chat-formatted questions and answers about stdlib APIs.

    python -m quark_jax.data.domain [--output quark_jax/data/resources/stdlib_api_qa.jsonl]

Each record is ``{"text": chat, "module": ..., "name": ..., "kind": "function" | "class"}`` where ``chat`` is

    <|user|>What does json.dumps(obj, *, skipkeys=False, ...) do?<|end|>
    <|assistant|>Serialize ``obj`` to a JSON formatted ``str``. ...<|end|>

built from the first paragraph of the docstring of every public top-level function and class of the
stdlib's train and validation files, in sorted order, so the output is deterministic for a given Python
version. The committed file was built with the interpreter named in its first record's ``python`` field.
It exercises the chat markers through the data pipeline.
"""

from __future__ import annotations

import argparse
import ast
import json
import pathlib
import platform

from quark_jax.data import corpus

DEFAULT_OUTPUT = pathlib.Path(__file__).resolve().parent / "resources" / "stdlib_api_qa.jsonl"
MAX_RECORDS = 3000


def _signature(node: ast.FunctionDef | ast.ClassDef) -> str:
    if isinstance(node, ast.ClassDef):
        return ""
    args = ast.unparse(node.args)
    return f"({args})" if len(args) < 120 else "(...)"


def records() -> list[dict]:
    """The question/answer records, deterministic order."""
    out = []
    for split in corpus.SPLITS:
        for source in corpus.stdlib_files(split):
            tree = corpus.parse(source)
            if tree is None:
                continue
            module = corpus._module_name(source.relpath)
            if any(part.startswith("_") for part in module.split(".")):
                continue
            for node in tree.body:
                if not isinstance(node, (ast.FunctionDef, ast.ClassDef)) or node.name.startswith("_"):
                    continue
                doc = ast.get_docstring(node, clean=True)
                if not doc:
                    continue
                answer = doc.split("\n\n")[0].strip()
                if len(answer.split()) < 5:
                    continue
                what = "class" if isinstance(node, ast.ClassDef) else "function"
                question = f"What does the {what} {module}.{node.name}{_signature(node)} do?"
                text = f"<|user|>{question}<|end|>\n<|assistant|>{answer}<|end|>\n"
                out.append({"text": text, "module": module, "name": node.name, "kind": what})
    out.sort(key=lambda r: (r["module"], r["name"]))
    out = out[:MAX_RECORDS]
    if out:
        out[0]["python"] = platform.python_version()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT))
    args = parser.parse_args(argv)
    rows = records()
    with open(args.output, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} records to {args.output}")


if __name__ == "__main__":
    main()
