"""The demo mixture ``quark_demo``: four local sources, nothing downloaded (registered by ``catalogue.py``).

| task | source | kind |
| --- | --- | --- |
| ``quark_demo.stdlib_code`` | :class:`CodeRepoSource` over the interpreter's standard library (``.py``) | code |
| ``quark_demo.stdlib_docstrings`` | module/class/function docstrings (``corpus.py``) | prose |
| ``quark_demo.python_reference`` | the Python language reference topics that ship with CPython (``pydoc_data``) | prose |
| ``quark_demo.api_qa`` | :class:`JsonlSource` over ``resources/stdlib_api_qa.jsonl``, a chat-formatted question/answer corpus about stdlib APIs, built deterministically by ``python -m quark_jax.data.domain`` and committed | chat |

``quark data build --mixture quark_demo --output DIR`` cleans it into shards; ``register_demo`` makes
smaller variants (the tests use one code package instead of the whole stdlib).
"""

from __future__ import annotations

import pathlib

from quark_jax.data import corpus, sources, tasks
from quark_jax.data.splits import split_of

RESOURCES = pathlib.Path(__file__).resolve().parent / "resources"
API_QA_JSONL = RESOURCES / "stdlib_api_qa.jsonl"
DEMO_RATES = {"stdlib_code": 0.6, "stdlib_docstrings": 0.15, "python_reference": 0.1, "api_qa": 0.15}


def python_reference_documents(split: str) -> list[str]:
    """The language-reference topics bundled with CPython, one document each, split by topic name."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # A stripped interpreter without pydoc_data: the source is simply empty.
        return []
    return [f"{name}\n\n{text}" for name, text in sorted(topics.items()) if split_of(f"topic/{name}") == split]


def register_demo(name: str = "quark_demo", code_root: str | pathlib.Path | None = None) -> str:
    """Registers the four demo tasks ``<name>.<source>`` and the mixture ``name``; returns ``name``."""
    code = sources.CodeRepoSource(
        code_root or corpus.stdlib_root(), extensions=(".py",),
        # The stdlib's own test suites and bundled apps are excluded like in corpus.py.
        exclude=tuple(sorted(corpus._EXCLUDED_DIRS)), max_file_bytes=corpus.MAX_FILE_BYTES,
    )
    members = {
        "stdlib_code": code,
        "stdlib_docstrings": sources.FunctionSource(
            lambda split: corpus.stdlib_documents("stdlib_docstrings", split), "stdlib_docstrings"),
        "python_reference": sources.FunctionSource(python_reference_documents, "python_reference"),
        "api_qa": sources.JsonlSource(str(API_QA_JSONL), text_field="text", kind="chat"),
    }
    for task, source in members.items():
        sources.register_source_task(f"{name}.{task}", source)
    tasks.register_mixture(name, {f"{name}.{t}": DEMO_RATES[t] for t in members})
    return name
