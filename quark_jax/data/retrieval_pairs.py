"""Standard-library retrieval data: passages, queries with their relevant passages, and training pairs.

Built deterministically from :mod:`quark_jax.data.corpus` (the running interpreter's standard library,
parsed with ``ast``), for two tasks named after the issue's pairs:

* ``"code"`` — docstring summary ↔ function source. One **code passage** per documented function, method or
  class: id = its qualified name (``json.decoder.JSONDecoder.decode``), text = its source with **every
  docstring inside it removed** (the query's words are not copied verbatim into its passage) and dedented,
  cut to :data:`MAX_PASSAGE_CHARS`. Its **query** is the docstring's summary: the first sentence of the
  first paragraph, whitespace joined (``"Return the Python representation of s."``).
* ``"docs"`` — API question ↔ docstring. One **docstring passage** per documented entity: id =
  ``"doc:" + qualified name``, text = the name on the first line, then the cleaned docstring (the form of the
  ``stdlib_docstrings`` corpus documents), cut to :data:`MAX_PASSAGE_CHARS`. Its **query** is a question
  about the entity from a fixed set of templates (``"What does json.dumps do?"``), the template chosen by a
  hash of the name.

Passages carry ``metadata = {"module", "entity", "source" (path relative to the stdlib), "split", "task"}``.

Splits are by module: every entity of a file is in the split of its path (:func:`quark_jax.data.splits.split_of`,
the same rule as the language-model corpus, so a validation module was never seen in pre-training either).
Well-posed queries only: a summary is dropped when it is trivial (fewer than :data:`MIN_SUMMARY_WORDS` words,
or a call signature such as ``"f(x) -> y"``) or when several entities share it (``"Return self."``,
``"Implement iter(self)."``: no single passage is the answer); a code passage whose text equals another's
(after the docstrings are removed) is kept once, and its queries are dropped.

Sizes on CPython 3.11.7 (they depend on the interpreter's library; ``python -m quark_jax.data.retrieval_pairs``
prints them): train 553 files, 6 591 code passages and 5 361 summary queries, 6 683 docstring passages and
API questions; validation 19 files (``asyncio.futures``, ``gettext``, ``ipaddress``, ``pickle``, ``uuid`` ...),
284 code passages and 237 summary queries, 287 docstring passages and API questions. Building them takes about
2 s after the corpus is cached.

:func:`benchmark` returns a query set and a passage pool (the relevant passages plus distractors from every
module, both splits, of the same task); :func:`training_pairs` the ``(query, passage)`` texts that
``quark_jax.training.objectives.contrastive.ContrastiveEmbedding`` trains on.
"""

from __future__ import annotations

import ast
import collections
import dataclasses
import functools
import hashlib
import re
import textwrap
from typing import Any

from quark_jax.data import corpus
from quark_jax.data.records import Passage
from quark_jax.data.splits import SPLITS

TASKS = ("code", "docs")
MAX_PASSAGE_CHARS = 1500
MIN_SUMMARY_WORDS = 4
MAX_SUMMARY_CHARS = 300
DOC_PREFIX = "doc:"
QUESTION_TEMPLATES = (
    "What does {name} do?",
    "What is {name} for?",
    "How do I use {name}?",
    "Explain {name}.",
    "What is the purpose of {name}?",
)
_DEFINITIONS = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
_SIGNATURE = re.compile(r"^[\w.]+\(.*\)(\s*->.*)?$")


@dataclasses.dataclass(frozen=True)
class Entity:
    """One documented function, method or class of the library."""

    name: str  # qualified: module.Class.method
    module: str
    source: str  # path relative to the stdlib root
    split: str
    code: str  # source without docstrings, dedented, capped
    docstring: str  # cleaned (ast.get_docstring)


@dataclasses.dataclass(frozen=True)
class Query:
    """A benchmark or training query: its text and the ids of the passages that answer it."""

    id: str
    text: str
    relevant: tuple[str, ...]
    task: str
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)


def _stable(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")


def summary(docstring: str) -> str:
    """The first sentence of a docstring's first paragraph, whitespace joined (the whole paragraph when it
    has no sentence end), at most :data:`MAX_SUMMARY_CHARS` characters."""
    paragraph = " ".join(docstring.strip().split("\n\n", 1)[0].split())
    match = re.search(r"(?<=[.!?])\s", paragraph)
    sentence = paragraph[: match.start()] if match else paragraph
    return sentence[:MAX_SUMMARY_CHARS].strip()


def is_trivial(text: str) -> bool:
    """Whether a summary says too little to identify a function: too few words, or a call signature."""
    return len(re.findall(r"\w+", text)) < MIN_SUMMARY_WORDS or bool(_SIGNATURE.match(text))


def _docstring_lines(node: ast.AST) -> set[int]:
    """1-based line numbers of every docstring inside ``node`` (a module: all of the file's)."""
    lines: set[int] = set()
    for inner in ast.walk(node):
        if isinstance(inner, (*_DEFINITIONS, ast.Module)) and inner.body:
            first = inner.body[0]
            if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                    and isinstance(first.value.value, str)):
                lines.update(range(first.lineno, first.end_lineno + 1))
    return lines


def _code_text(lines: list[str], node: ast.AST, doc_lines: set[int]) -> str | None:
    """The definition's source (decorators included) without the docstring lines in it (its own and its nested
    definitions'; ``doc_lines`` holds the file's), dedented and capped; None when a docstring shares a line
    with code (``def f(): "doc"``), which a line cut cannot remove."""
    start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    if node.lineno in doc_lines:
        return None
    kept = [lines[i - 1] for i in range(start, node.end_lineno + 1) if i not in doc_lines]
    text = textwrap.dedent("".join(kept)).strip("\n")
    return text[:MAX_PASSAGE_CHARS]


def _walk(body: list[ast.stmt], prefix: str):
    """(qualified name, node) of every definition in a statement list, in source order, also inside
    classes, functions and platform branches (``if`` / ``try``)."""
    for stmt in body:
        if isinstance(stmt, _DEFINITIONS):
            name = f"{prefix}.{stmt.name}"
            yield name, stmt
            yield from _walk(stmt.body, name)
        elif isinstance(stmt, (ast.If, ast.Try)):
            for block in (stmt.body, stmt.orelse, getattr(stmt, "finalbody", [])):
                yield from _walk(block, prefix)


def _file_entities(source: corpus.SourceFile, split: str) -> list[Entity]:
    tree = corpus.parse(source)
    if tree is None:
        return []
    module = corpus._module_name(source.relpath)
    lines = source.text.splitlines(keepends=True)
    doc_lines = _docstring_lines(tree)
    found = []
    for name, node in _walk(tree.body, module):
        docstring = ast.get_docstring(node, clean=True)
        if not docstring:
            continue
        code = _code_text(lines, node, doc_lines)
        if code:
            found.append(Entity(name, module, source.relpath, split, code, docstring))
    return found


@functools.lru_cache(maxsize=None)
def entities(split: str) -> tuple[Entity, ...]:
    """Every documented definition of a split's files, in path then source order; a name defined twice
    (platform variants) is kept once, the first."""
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; expected one of {SPLITS}.")
    seen, found = set(), []
    for source in corpus.stdlib_files(split):
        for entity in _file_entities(source, split):
            if entity.name not in seen:
                seen.add(entity.name)
                found.append(entity)
    return tuple(found)


@functools.lru_cache(maxsize=None)
def _shared_texts() -> tuple[frozenset[str], frozenset[str]]:
    """(summaries of more than one entity, code texts of more than one entity), over both splits."""
    everything = [e for split in SPLITS for e in entities(split)]
    summaries = collections.Counter(summary(e.docstring).lower() for e in everything)
    codes = collections.Counter(e.code for e in everything)
    return (frozenset(s for s, n in summaries.items() if n > 1), frozenset(c for c, n in codes.items() if n > 1))


def _meta(entity: Entity, task: str) -> dict[str, Any]:
    return {"module": entity.module, "entity": entity.name, "source": entity.source, "split": entity.split,
            "task": task}


def passages(split: str, task: str = "code") -> list:
    """The passages of one split for ``task`` (``"code"``: sources without docstrings; ``"docs"``: docstrings
    under their names), as :class:`quark_jax.data.records.Passage` records (``id``, ``text``,
    ``metadata``). Code passages duplicated across the library are kept once (the first)."""
    _check_task(task)
    found, seen = [], set()
    for e in entities(split):
        if task == "code":
            if e.code in seen:
                continue
            seen.add(e.code)
            found.append(Passage(e.name, e.code, _meta(e, task)))
        else:
            found.append(Passage(DOC_PREFIX + e.name, f"{e.name}\n{e.docstring}"[:MAX_PASSAGE_CHARS], _meta(e, task)))
    return found


def question(name: str) -> str:
    """The API question asked about a qualified name (template chosen by a hash of the name)."""
    return QUESTION_TEMPLATES[_stable(name) % len(QUESTION_TEMPLATES)].format(name=name)


def queries(split: str, task: str = "code") -> list[Query]:
    """The well-posed queries of one split: summaries → code passage (``task="code"``; trivial, shared and
    duplicated-code entities dropped) or API questions → docstring passage (``task="docs"``)."""
    _check_task(task)
    shared_summaries, shared_code = _shared_texts()
    found = []
    for e in entities(split):
        if task == "docs":
            doc_id = DOC_PREFIX + e.name
            found.append(Query(f"q:{doc_id}", question(e.name), (doc_id,), task, _meta(e, task)))
            continue
        text = summary(e.docstring)
        if is_trivial(text) or text.lower() in shared_summaries or e.code in shared_code:
            continue
        found.append(Query(f"q:{e.name}", text, (e.name,), task, _meta(e, task)))
    return found


def benchmark(split: str = "validation", task: str = "code", max_queries: int | None = None,
              max_passages: int | None = None, seed: int = 0) -> tuple[list, list[Query]]:
    """``(passages, queries)``: up to ``max_queries`` queries of ``split`` (a deterministic sample by
    ``seed``) and a pool holding every relevant passage plus distractors of the same task from all modules of
    both splits, up to ``max_passages`` passages in all (all of them when None), in a fixed order.

    ``max_passages`` smaller than the number of relevant passages is an error (the benchmark would be unfair).
    """
    _check_task(task)
    chosen = sorted(queries(split, task), key=lambda q: _stable(f"{seed}:{q.id}"))[:max_queries]
    chosen.sort(key=lambda q: q.id)
    relevant = {pid for q in chosen for pid in q.relevant}
    pool = [p for s in SPLITS for p in passages(s, task)]
    if max_passages is not None and max_passages < len(relevant):
        raise ValueError(f"max_passages={max_passages} is fewer than the {len(relevant)} relevant passages of "
                         f"{len(chosen)} queries; raise max_passages or lower max_queries")
    distractors = sorted((p for p in pool if p.id not in relevant), key=lambda p: _stable(f"{seed}:{p.id}"))
    room = len(distractors) if max_passages is None else max_passages - len(relevant)
    kept = relevant | {p.id for p in distractors[:room]}
    return [p for p in pool if p.id in kept], chosen


def training_pairs(split: str, tasks: tuple[str, ...] = TASKS) -> list[tuple[str, str]]:
    """``(query text, passage text)`` of every well-posed query of ``split`` and ``tasks`` with its relevant
    passage, in a fixed order (code pairs first)."""
    pairs = []
    for task in tasks:
        texts = {p.id: p.text for p in passages(split, task)}
        pairs.extend((q.text, texts[q.relevant[0]]) for q in queries(split, task))
    return pairs


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"Unknown retrieval task {task!r}; expected one of {TASKS}.")


def stats() -> dict[str, int]:
    """Files, passages and queries per split and task."""
    out = {}
    for split in SPLITS:
        out[f"{split}/files"] = len(corpus.stdlib_files(split))
        for task in TASKS:
            out[f"{split}/{task}/passages"] = len(passages(split, task))
            out[f"{split}/{task}/queries"] = len(queries(split, task))
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(stats(), indent=1))
