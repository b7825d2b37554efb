"""Questions about the standard library's API whose exact answers a retrieved passage contains: the data of
the RAG-effect measurement (``bench/rag.py``).

Every public, documented, top-level function of a public stdlib module gives one **passage** (id: its qualified
name, e.g. ``json.dumps``; text: its signature line and the first paragraph of its docstring) and up to two
**questions**, each with its gold passage id:

* ``module`` — "In which module is the function `dumps` defined?" → ``json`` (only for a function name that
  no other public module defines, so the answer is unique);
* ``parameters`` — "What are the parameters of `json.dumps`?" → ``obj, skipkeys, ensure_ascii, ...`` (the
  names in signature order, ``*args``/``**kwargs`` written with their stars; functions of 1 to 6 parameters).

Questions follow the corpus split of their module's file (:func:`quark_jax.data.splits.split_of` on its
relative path), so held-out questions are about modules the model never saw in pre-training or fine-tuning;
the passages of every split go into the index (retrieval searches the whole library).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
from collections import Counter

from quark_jax.data import corpus

MAX_PARAMETERS = 6
MAX_DOC_CHARS = 300


@dataclasses.dataclass(frozen=True)
class APIFunction:
    """One documented function: ``qualname`` (``json.dumps``), ``module``, ``name``, ``parameters`` (names in
    order, starred for ``*args``/``**kwargs``), ``signature`` (``json.dumps(obj, *, skipkeys=False, ...)``),
    ``doc`` (the docstring's first paragraph, at most :data:`MAX_DOC_CHARS`), ``relpath`` and ``split``."""

    qualname: str
    module: str
    name: str
    parameters: tuple[str, ...]
    signature: str
    doc: str
    relpath: str
    split: str

    @property
    def passage_text(self) -> str:
        """The passage: the signature line, then the docstring's first paragraph."""
        return f"{self.signature}\n{self.doc}"


@dataclasses.dataclass(frozen=True)
class APIQuestion:
    """A question with its exact ``answer``, the ``gold_id`` of the passage holding it, its ``kind``
    (``module`` or ``parameters``) and ``split``."""

    question: str
    answer: str
    gold_id: str
    kind: str
    split: str


def _parameters(args: ast.arguments) -> tuple[str, ...]:
    names = [a.arg for a in args.posonlyargs + args.args]
    if args.vararg:
        names.append("*" + args.vararg.arg)
    names += [a.arg for a in args.kwonlyargs]
    if args.kwarg:
        names.append("**" + args.kwarg.arg)
    return tuple(names)


def _first_paragraph(docstring: str) -> str:
    paragraph = " ".join(line.strip() for line in docstring.strip().split("\n\n")[0].splitlines())
    if len(paragraph) <= MAX_DOC_CHARS:
        return paragraph
    cut = paragraph[:MAX_DOC_CHARS]
    end = cut.rfind(". ")
    return cut[: end + 1] if end > 0 else cut.rsplit(" ", 1)[0]


def _is_public_module(module: str) -> bool:
    """An importable module name none of whose parts is private (``json`` yes, ``_pydecimal`` no)."""
    return all(part.isidentifier() and not part.startswith("_") for part in module.split("."))


@functools.lru_cache(maxsize=None)
def api_functions() -> tuple[APIFunction, ...]:
    """Every public, documented, top-level function of the public stdlib modules (both splits), sorted by
    qualified name."""
    found = []
    for split in corpus.SPLITS:
        for source in corpus.stdlib_files(split):
            module = corpus._module_name(source.relpath)
            if not _is_public_module(module):
                continue
            tree = corpus.parse(source)
            if tree is None:
                continue
            for node in tree.body:
                if not isinstance(node, ast.FunctionDef) or node.name.startswith("_"):
                    continue
                doc = _first_paragraph(ast.get_docstring(node) or "")
                if len(doc) < 12:
                    continue
                qualname = f"{module}.{node.name}"
                found.append(APIFunction(qualname, module, node.name, _parameters(node.args),
                                         f"{qualname}({ast.unparse(node.args)})", doc, source.relpath, split))
    unique = {f.qualname: f for f in found}  # a name defined twice in a module: the last definition wins
    return tuple(sorted(unique.values(), key=lambda f: f.qualname))


def api_questions(split: str) -> list[APIQuestion]:
    """The questions of one split (``train`` or ``validation``), in qualified-name order."""
    functions = api_functions()
    name_counts = Counter(f.name for f in functions)
    questions = []
    for f in functions:
        if f.split != split:
            continue
        if name_counts[f.name] == 1:
            questions.append(APIQuestion(f"In which module is the function `{f.name}` defined?", f.module,
                                         f.qualname, "module", split))
        if 1 <= len(f.parameters) <= MAX_PARAMETERS:
            questions.append(APIQuestion(f"What are the parameters of `{f.qualname}`?", ", ".join(f.parameters),
                                         f.qualname, "parameters", split))
    return questions
