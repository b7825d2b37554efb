"""Builds the built-in evaluation suites (task YAML + JSONL data under ``evals/tasks/``) offline.

Everything comes from what every machine has: the running interpreter's standard library (through the same
scan as the training corpus, :mod:`quark_jax.data.corpus`), the project's held-out instruction set
(``data/instructions/validation.jsonl``) and a small set of function specs written here. Nothing the model was
trained on goes in: every corpus-derived example carries a ``source`` field, the corpus key of the document it
comes from (a stdlib relative path), and only documents that :func:`quark_jax.data.splits.split_of` puts in
``validation`` are used (``tests/evaluation/test_suites.py`` recomputes the split for every example).

Suites (one YAML each):

* ``stdlib_qa`` (generate_until): "which module defines `f`?" and "what does `m.f` do?" questions.
* ``stdlib_summarize`` (generate_until): a function or class with its docstring removed -> the summary line.
* ``code_doctest`` (generate_until, sandboxed): complete a function whose doctest examples are its tests.
* ``stdlib_mc`` (multiple_choice): which module defines a name / which function a docstring describes.
* ``perplexity_code``, ``perplexity_prose``, ``perplexity_chat`` (loglikelihood_rolling).
* ``stdlib_retrieval`` (retrieval): held-out API questions ("What does uuid.uuid4 do?") against a pool of
  docstring passages — every relevant one plus distractors from both splits
  (:func:`quark_jax.data.retrieval_pairs.benchmark`, task ``docs``); the pool goes to
  ``data/stdlib_retrieval_passages.jsonl``.

``python -m quark_jax.evaluation.suites --output evals/tasks`` rewrites every file; the build is
deterministic (sorted inputs, string-seeded ``random.Random``), so the shipped files equal a fresh build on
the same Python version (the stdlib differs between versions; ``data/MANIFEST.json`` records the one used).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import pathlib
import random
import re
import sys
import textwrap
from collections.abc import Iterator

from quark_jax import resources
from quark_jax.data import chat, corpus
from quark_jax.data.splits import split_of

REPO = pathlib.Path(__file__).resolve().parents[2]
INSTRUCTIONS_VALIDATION = resources.shipped("data/instructions/validation.jsonl")
SEED = "quark-evals-v1"
DATA_DIR = "data"

# Generated tables and platform-specific stubs say little about the library; their docstrings are boilerplate.
_SKIP_PREFIXES = ("encodings/",)
_DEF_RE = re.compile(r"^(?:async\s+def|def|class)\s+([A-Za-z_]\w*)", re.MULTILINE)


# ---- helpers over the corpus -----------------------------------------------------------------------


def validation_files() -> list[corpus.SourceFile]:
    """The corpus files of the validation split that the suites draw on (sorted by path)."""
    return [f for f in corpus.stdlib_files("validation") if not f.relpath.startswith(_SKIP_PREFIXES)]


def module_name(relpath: str) -> str:
    """'json/decoder.py' -> 'json.decoder' (the corpus' own rule)."""
    return corpus._module_name(relpath)


def _importable(module: str) -> bool:
    return all(part.isidentifier() and not part.startswith("_") for part in module.split("."))


def first_sentence(doc: str, max_chars: int = 100) -> str | None:
    """The first sentence of a docstring's first paragraph (one line), or None when too short/long/odd."""
    paragraph = " ".join(line.strip() for line in doc.strip().split("\n\n")[0].splitlines())
    match = re.match(r"(.+?[.!?])(\s|$)", paragraph)
    sentence = (match.group(1) if match else paragraph).strip()
    if not 12 <= len(sentence) <= max_chars or not sentence[0].isalpha() or "`" in sentence:
        return None
    return sentence


def summary_line(doc: str, max_chars: int = 100) -> str | None:
    """A docstring's summary line (its first line), or None when it is not a one-line summary."""
    lines = doc.strip().splitlines()
    line = lines[0].strip() if lines else ""
    if len(lines) > 1 and lines[1].strip():
        return None  # the summary wraps onto a second line
    if not 12 <= len(line) <= max_chars or not line[0].isalpha():
        return None
    return line


def top_level_definers() -> dict[str, set[str]]:
    """name -> the stdlib modules (any split) that define it at top level (a def or class at column 0).

    A regular expression over the text, not a parse: fast, and good enough to tell whether a name is
    unambiguous (defined by one module only).
    """
    definers: dict[str, set[str]] = {}
    for f in corpus._scan().files:
        module = module_name(f.relpath)
        for name in _DEF_RE.findall(f.text):
            definers.setdefault(name, set()).add(module)
    return definers


class Definition:
    """A documented top-level function or class (or a method) of a validation module."""

    def __init__(self, source: corpus.SourceFile, node: ast.AST, qualname: str, lines: list[str]):
        self.source, self.node, self.qualname = source, node, qualname
        self.module = module_name(source.relpath)
        self.name = node.name
        self.kind = "class" if isinstance(node, ast.ClassDef) else "function"
        self.doc = ast.get_docstring(node, clean=True) or ""
        self.lines = lines


def definitions() -> list[Definition]:
    """Every documented public def/class (top level and one level of methods) of the validation modules."""
    found = []
    for f in validation_files():
        module = module_name(f.relpath)
        if not _importable(module):
            continue
        tree = corpus.parse(f)
        if tree is None:
            continue
        lines = f.text.splitlines()
        for node in tree.body:
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            if node.name.startswith("_"):
                continue
            if ast.get_docstring(node):
                found.append(Definition(f, node, f"{module}.{node.name}", lines))
            if isinstance(node, ast.ClassDef):
                for sub in node.body:
                    if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)) and not sub.name.startswith("_") \
                            and ast.get_docstring(sub):
                        found.append(Definition(f, sub, f"{module}.{node.name}.{sub.name}", lines))
    return found


def _sample(items: list[dict], count: int, tag: str) -> list[dict]:
    """A deterministic sample of at most ``count`` items, balanced over their ``source`` documents.

    Items are shuffled within each source (seeded by ``tag``), then taken round-robin over the sources, so a
    module with hundreds of tiny functions (``operator``) cannot fill a suite alone. The result keeps the
    items' original order.
    """
    if len(items) <= count:
        return list(items)
    rng = random.Random(f"{SEED}-{tag}")
    groups: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(item["source"], []).append(i)
    queues = []
    for source in sorted(groups):
        indices = groups[source]
        rng.shuffle(indices)
        queues.append(indices)
    chosen: list[int] = []
    while len(chosen) < count:
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(queue.pop())
    return [items[i] for i in sorted(chosen)]


# ---- suites ----------------------------------------------------------------------------------------


def _gives_away(module: str, *texts: str) -> bool:
    """Whether a question text names the module it asks for (``symtable.symtable``)."""
    last = module.rsplit(".", 1)[-1].lower()
    return any(last in text.lower() for text in texts)


def stdlib_qa(defs: list[Definition], definers: dict[str, set[str]], count: int = 80) -> list[dict]:
    """Short-answer questions: the module that defines a name (answer: a module name) and what a function
    does (answer: its docstring's first sentence, at most 60 characters)."""
    which, what = [], []
    for d in defs:
        if d.qualname.count(".") != d.module.count(".") + 1:
            continue  # top-level names only
        sentence = first_sentence(d.doc, max_chars=60)
        if definers.get(d.name) == {d.module} and sentence and not _gives_away(d.module, d.name, sentence):
            which.append({
                "question": f"Which module of the Python standard library defines the {d.kind} `{d.name}` "
                            f"(\"{sentence}\")?",
                "answer": d.module, "kind": "module", "source": d.source.relpath,
            })
        if d.kind == "function" and sentence:
            what.append({"question": f"What does `{d.qualname}` do?", "answer": sentence, "kind": "docstring",
                         "source": d.source.relpath})
    return _sample(which, count // 2, "qa-which") + _sample(what, count - min(len(which), count // 2), "qa-what")


def _strip_docstring(d: Definition) -> str:
    """The definition's source (from its ``def``/``class`` line, decorators left out), dedented, without its
    docstring statement."""
    node = d.node
    doc_node = node.body[0]
    keep = [
        line for number, line in enumerate(d.lines[node.lineno - 1: node.end_lineno], start=node.lineno)
        if not doc_node.lineno <= number <= doc_node.end_lineno
    ]
    return textwrap.dedent("\n".join(keep)).rstrip() + "\n"


def stdlib_summarize(defs: list[Definition], count: int = 60, max_chars: int = 700) -> list[dict]:
    """A function or class with its docstring removed -> the docstring's one-line summary."""
    items = []
    for d in defs:
        summary = summary_line(d.doc)
        if not summary or len(d.node.body) < 2:
            continue
        code = _strip_docstring(d)
        if len(code) > max_chars or d.name in ("__init__",):
            continue
        items.append({"code": code, "summary": summary, "name": d.qualname, "source": d.source.relpath})
    return _sample(items, count, "summarize")


def stdlib_mc(defs: list[Definition], definers: dict[str, set[str]], count: int = 80) -> list[dict]:
    """Four-way multiple choice: which module defines a name; which function of a module a docstring describes."""
    rng = random.Random(f"{SEED}-mc")
    # Distractors: any public stdlib module (of either split: a module name is only a label here).
    modules = sorted({m for m in map(module_name, (f.relpath for f in corpus._scan().files))
                      if _importable(m) and "." not in m})
    by_module: dict[str, list[Definition]] = {}
    for d in defs:
        if d.kind == "function" and d.qualname.count(".") == d.module.count(".") + 1:
            by_module.setdefault(d.module, []).append(d)
    module_items, docstring_items = [], []
    for d in defs:
        if d.qualname.count(".") != d.module.count(".") + 1 or definers.get(d.name) != {d.module}:
            continue
        if _gives_away(d.module, d.name):
            continue
        others = [m for m in modules if m not in definers.get(d.name, ())]
        choices = rng.sample(others, 3) + [d.module]
        rng.shuffle(choices)
        module_items.append({"question": f"Which module of the Python standard library defines `{d.name}`?",
                             "choices": choices, "answer": choices.index(d.module), "kind": "module",
                             "source": d.source.relpath})
    for module in sorted(by_module):
        funcs = by_module[module]
        names = sorted({f.name for f in funcs})
        if len(names) < 4:
            continue
        for d in funcs:
            sentence = first_sentence(d.doc, max_chars=120)
            if not sentence or d.name in sentence:
                continue
            distractors = rng.sample([n for n in names if n != d.name], 3)
            choices = distractors + [d.name]
            rng.shuffle(choices)
            docstring_items.append({
                "question": f"Which function of the `{module}` module does this describe: \"{sentence}\"",
                "choices": choices, "answer": choices.index(d.name), "kind": "docstring", "source": d.source.relpath,
            })
    half = count // 2
    first = _sample(module_items, half, "mc-module")
    return first + _sample(docstring_items, count - len(first), "mc-docstring")


def _code_chunks(text: str, max_chars: int) -> Iterator[str]:
    """Consecutive chunks of whole lines, cut before a top-level statement once ``max_chars`` is near."""
    chunk: list[str] = []
    size = 0
    for line in text.splitlines(keepends=True):
        top = line[:1] not in (" ", "\t", "\n", ")", "]", "}", "") and not line.startswith("#")
        if chunk and (size + len(line) > max_chars or (top and size > max_chars // 2)):
            yield "".join(chunk)
            chunk, size = [], 0
        chunk.append(line)
        size += len(line)
    if chunk:
        yield "".join(chunk)


def perplexity_code(count: int = 60, max_chars: int = 1200) -> list[dict]:
    """Chunks of held-out stdlib source, at most ``max_chars`` each, a few per file."""
    items = []
    for f in validation_files():
        for i, chunk in enumerate(_code_chunks(f.text, max_chars)):
            if len(chunk.strip()) >= 200 and len(chunk) <= max_chars:
                items.append({"text": chunk, "source": f.relpath, "chunk": i})
    return _sample(items, count, "ppl-code")


def perplexity_prose(defs: list[Definition], count: int = 60, max_chars: int = 1000) -> list[dict]:
    """Held-out docstrings (module, class and function), whole paragraphs up to ``max_chars``."""
    items = []
    for f in validation_files():
        try:
            doc = ast.get_docstring(ast.parse(f.text), clean=True)
        except (SyntaxError, ValueError):
            doc = None
        if doc:
            items.append((f.relpath, module_name(f.relpath), doc))
    items += [(d.source.relpath, d.qualname, d.doc) for d in defs]
    out = []
    for relpath, name, doc in items:
        text = ""
        for paragraph in doc.strip().split("\n\n"):
            if text and len(text) + 2 + len(paragraph) > max_chars:
                break
            text = f"{text}\n\n{paragraph}" if text else paragraph
        if 150 <= len(text) <= max_chars:
            out.append({"text": text + "\n", "name": name, "source": relpath})
    return _sample(out, count, "ppl-prose")


def chat_source_key(record: dict) -> str:
    """The split key of a held-out instruction: the stdlib file a docstring/signature question is about, or
    ``arithmetic:<question>`` for a generated sum (split by a hash of the question)."""
    if record["source"] == "arithmetic":
        return f"arithmetic:{record['prompt']}"
    qualname = re.search(r"`([\w.]+)`", record["prompt"]).group(1)
    module = qualname.rsplit(".", 1)[0]
    path = module.replace(".", "/")
    names = {f.relpath for f in corpus._scan().files}
    return f"{path}.py" if f"{path}.py" in names else f"{path}/__init__.py"


def perplexity_chat(count: int = 60) -> list[dict]:
    """Held-out single-turn conversations rendered with the chat template, balanced over instruction sources."""
    with open(INSTRUCTIONS_VALIDATION, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    by_source: dict[str, list[dict]] = {}
    for r in records:
        by_source.setdefault(r["source"], []).append(r)
    out = []
    sources = sorted(by_source)
    for i, source in enumerate(sources):
        share = count // len(sources) + (1 if i < count % len(sources) else 0)
        for r in _sample(by_source[source], share, f"ppl-chat-{source}"):
            text = chat.render(chat.prompt_response(r["prompt"], r["response"]))
            out.append({"text": text, "kind": source, "source": chat_source_key(r)})
    return out


# ---- code_doctest: our own function specs ------------------------------------------------------------

# (signature, summary, [(call, expected repr)], solution body). Written for this suite, so no model was trained on
# them; the doctest examples double as the tests.
CODE_SPECS: list[tuple[str, str, list[tuple[str, str]], str]] = [
    ("clamp(x, lo, hi)", "Return x limited to the closed interval [lo, hi].",
     [("clamp(5, 0, 3)", "3"), ("clamp(-2, 0, 3)", "0"), ("clamp(2, 0, 3)", "2")],
     "return max(lo, min(x, hi))"),
    ("is_even(n)", "Return True if the integer n is even.",
     [("is_even(4)", "True"), ("is_even(7)", "False"), ("is_even(0)", "True")],
     "return n % 2 == 0"),
    ("square_all(xs)", "Return a list with the square of every number in xs.",
     [("square_all([1, 2, 3])", "[1, 4, 9]"), ("square_all([])", "[]")],
     "return [x * x for x in xs]"),
    ("count_vowels(s)", "Return how many vowels (a, e, i, o, u, either case) the string s contains.",
     [("count_vowels('hello')", "2"), ("count_vowels('AEIOU')", "5"), ("count_vowels('xyz')", "0")],
     "return sum(1 for c in s.lower() if c in 'aeiou')"),
    ("reverse_words(s)", "Return the words of s in reverse order, joined by single spaces.",
     [("reverse_words('a b c')", "'c b a'"), ("reverse_words('hello world')", "'world hello'")],
     "return ' '.join(reversed(s.split()))"),
    ("factorial(n)", "Return n! for a non-negative integer n.",
     [("factorial(0)", "1"), ("factorial(5)", "120"), ("factorial(3)", "6")],
     "result = 1\nfor i in range(2, n + 1):\n    result *= i\nreturn result"),
    ("fibonacci(n)", "Return the n-th Fibonacci number, with fibonacci(0) == 0 and fibonacci(1) == 1.",
     [("fibonacci(0)", "0"), ("fibonacci(1)", "1"), ("fibonacci(10)", "55")],
     "a, b = 0, 1\nfor _ in range(n):\n    a, b = b, a + b\nreturn a"),
    ("is_palindrome(s)", "Return True if s reads the same forwards and backwards.",
     [("is_palindrome('level')", "True"), ("is_palindrome('abc')", "False"), ("is_palindrome('')", "True")],
     "return s == s[::-1]"),
    ("flatten(lists)", "Return one list with the items of every list in lists, in order.",
     [("flatten([[1, 2], [3], []])", "[1, 2, 3]"), ("flatten([])", "[]")],
     "return [x for xs in lists for x in xs]"),
    ("unique(xs)", "Return the items of xs without repeats, keeping the first occurrence of each.",
     [("unique([3, 1, 3, 2, 1])", "[3, 1, 2]"), ("unique([])", "[]")],
     "seen = set()\nout = []\nfor x in xs:\n    if x not in seen:\n        seen.add(x)\n        out.append(x)\n"
     "return out"),
    ("word_count(s)", "Return a dict mapping each whitespace-separated word of s to how often it occurs.",
     [("word_count('a b a')", "{'a': 2, 'b': 1}"), ("word_count('')", "{}")],
     "counts = {}\nfor w in s.split():\n    counts[w] = counts.get(w, 0) + 1\nreturn counts"),
    ("max_index(xs)", "Return the index of the largest item of the non-empty list xs (the first one on ties).",
     [("max_index([1, 5, 2])", "1"), ("max_index([7, 7])", "0"), ("max_index([4])", "0")],
     "return xs.index(max(xs))"),
    ("mean(xs)", "Return the arithmetic mean of the non-empty list of numbers xs.",
     [("mean([1, 2, 3])", "2.0"), ("mean([5])", "5.0")],
     "return sum(xs) / len(xs)"),
    ("gcd(a, b)", "Return the greatest common divisor of the non-negative integers a and b.",
     [("gcd(12, 18)", "6"), ("gcd(7, 0)", "7"), ("gcd(5, 3)", "1")],
     "while b:\n    a, b = b, a % b\nreturn a"),
    ("is_prime(n)", "Return True if the integer n is a prime number.",
     [("is_prime(2)", "True"), ("is_prime(9)", "False"), ("is_prime(1)", "False"), ("is_prime(13)", "True")],
     "if n < 2:\n    return False\nfor d in range(2, int(n ** 0.5) + 1):\n    if n % d == 0:\n        return False\n"
     "return True"),
    ("capitalize_words(s)", "Return s with the first letter of every space-separated word in upper case.",
     [("capitalize_words('hello big world')", "'Hello Big World'"), ("capitalize_words('a')", "'A'")],
     "return ' '.join(w[:1].upper() + w[1:] for w in s.split(' '))"),
    ("sum_digits(n)", "Return the sum of the decimal digits of the non-negative integer n.",
     [("sum_digits(123)", "6"), ("sum_digits(0)", "0"), ("sum_digits(909)", "18")],
     "return sum(int(c) for c in str(n))"),
    ("chunks(xs, size)", "Return xs split into consecutive lists of length size (the last may be shorter).",
     [("chunks([1, 2, 3, 4, 5], 2)", "[[1, 2], [3, 4], [5]]"), ("chunks([], 3)", "[]")],
     "return [xs[i:i + size] for i in range(0, len(xs), size)]"),
    ("celsius_to_fahrenheit(c)", "Return the temperature c in degrees Celsius converted to Fahrenheit.",
     [("celsius_to_fahrenheit(0)", "32.0"), ("celsius_to_fahrenheit(100)", "212.0")],
     "return c * 9 / 5 + 32"),
    ("count_char(s, ch)", "Return how many times the character ch occurs in s.",
     [("count_char('banana', 'a')", "3"), ("count_char('', 'a')", "0")],
     "return s.count(ch)"),
    ("second_largest(xs)", "Return the second largest distinct value of xs (which has at least two).",
     [("second_largest([3, 1, 4, 4])", "3"), ("second_largest([2, 9])", "2")],
     "return sorted(set(xs))[-2]"),
    ("merge_sorted(a, b)", "Return one sorted list with the items of the sorted lists a and b.",
     [("merge_sorted([1, 4], [2, 3, 5])", "[1, 2, 3, 4, 5]"), ("merge_sorted([], [1])", "[1]")],
     "out = []\ni = j = 0\nwhile i < len(a) and j < len(b):\n    if a[i] <= b[j]:\n        out.append(a[i])\n"
     "        i += 1\n    else:\n        out.append(b[j])\n        j += 1\nreturn out + a[i:] + b[j:]"),
    ("running_sum(xs)", "Return the list of running totals of xs.",
     [("running_sum([1, 2, 3])", "[1, 3, 6]"), ("running_sum([])", "[]")],
     "out = []\ntotal = 0\nfor x in xs:\n    total += x\n    out.append(total)\nreturn out"),
    ("is_anagram(a, b)", "Return True if the strings a and b contain the same letters the same number of times.",
     [("is_anagram('listen', 'silent')", "True"), ("is_anagram('ab', 'abb')", "False")],
     "return sorted(a) == sorted(b)"),
    ("dedupe_spaces(s)", "Return s with every run of spaces replaced by a single space.",
     [("dedupe_spaces('a   b  c')", "'a b c'"), ("dedupe_spaces('x')", "'x'")],
     "while '  ' in s:\n    s = s.replace('  ', ' ')\nreturn s"),
    ("last_word(s)", "Return the last whitespace-separated word of s, or '' if there is none.",
     [("last_word('the quick fox')", "'fox'"), ("last_word('   ')", "''")],
     "words = s.split()\nreturn words[-1] if words else ''"),
    ("power_set_size(n)", "Return the number of subsets of a set with n elements.",
     [("power_set_size(0)", "1"), ("power_set_size(3)", "8")],
     "return 2 ** n"),
    ("to_binary(n)", "Return the binary digits of the non-negative integer n as a string, without a prefix.",
     [("to_binary(5)", "'101'"), ("to_binary(0)", "'0'"), ("to_binary(8)", "'1000'")],
     "return bin(n)[2:]"),
    ("rotate_left(xs, k)", "Return xs rotated k places to the left.",
     [("rotate_left([1, 2, 3, 4], 1)", "[2, 3, 4, 1]"), ("rotate_left([1, 2, 3], 3)", "[1, 2, 3]"),
      ("rotate_left([], 2)", "[]")],
     "if not xs:\n    return []\nk %= len(xs)\nreturn xs[k:] + xs[:k]"),
    ("product(xs)", "Return the product of the numbers in xs (1 for an empty list).",
     [("product([2, 3, 4])", "24"), ("product([])", "1")],
     "result = 1\nfor x in xs:\n    result *= x\nreturn result"),
    ("initials(name)", "Return the upper-case initials of the words of name, joined without spaces.",
     [("initials('ada lovelace')", "'AL'"), ("initials('Guido van Rossum')", "'GVR'")],
     "return ''.join(w[0].upper() for w in name.split())"),
    ("filter_positive(xs)", "Return the items of xs that are greater than zero, in order.",
     [("filter_positive([-1, 2, 0, 5])", "[2, 5]"), ("filter_positive([])", "[]")],
     "return [x for x in xs if x > 0]"),
    ("swap_case_pairs(pairs)", "Return a list of the (b, a) tuples for every (a, b) tuple in pairs.",
     [("swap_case_pairs([(1, 2), (3, 4)])", "[(2, 1), (4, 3)]"), ("swap_case_pairs([])", "[]")],
     "return [(b, a) for a, b in pairs]"),
    ("digits_only(s)", "Return the characters of s that are decimal digits, as a string.",
     [("digits_only('a1b22c')", "'122'"), ("digits_only('abc')", "''")],
     "return ''.join(c for c in s if c.isdigit())"),
    ("hamming(a, b)", "Return the number of positions at which the equal-length strings a and b differ.",
     [("hamming('karolin', 'kathrin')", "3"), ("hamming('abc', 'abc')", "0")],
     "return sum(1 for x, y in zip(a, b) if x != y)"),
    ("nth_triangle(n)", "Return the n-th triangular number 1 + 2 + ... + n.",
     [("nth_triangle(1)", "1"), ("nth_triangle(4)", "10"), ("nth_triangle(0)", "0")],
     "return n * (n + 1) // 2"),
]


def code_doctest() -> list[dict]:
    """One item per spec: ``prompt`` (signature + docstring with doctests), ``tests`` (asserts derived from
    the doctests), ``solution`` (a correct body, for checking the tests) and the ``entry_point`` name."""
    items = []
    for signature, summary, examples, body in CODE_SPECS:
        doctests = "".join(f"    >>> {call}\n    {expected}\n" for call, expected in examples)
        prompt = f"def {signature}:\n    \"\"\"{summary}\n\n{doctests}    \"\"\"\n"
        tests = "".join(f"assert {call} == {expected}\n" for call, expected in examples)
        items.append({"prompt": prompt, "tests": tests, "solution": textwrap.indent(body, "    ") + "\n",
                      "entry_point": signature.split("(")[0], "source": "quark_jax/evaluation/suites.py"})
    return items


# ---- task YAML --------------------------------------------------------------------------------------

_CODE_STOPS = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert "]

TASKS: dict[str, dict] = {
    "stdlib_qa": {
        "description": "Conversational QA on held-out standard-library APIs: which module defines a name, "
                       "what a function does.",
        "output_type": "generate_until", "prompt": "Q: {question}\nA:", "target": "answer", "domain": "chat",
        "until": ["\n"], "max_tokens": 32, "samples": 1, "temperature": 0.0, "metrics": ["exact_match", "rouge"],
    },
    "stdlib_summarize": {
        "description": "Summarisation: a held-out stdlib function or class without its docstring -> the "
                       "docstring's summary line.",
        "output_type": "generate_until", "prompt": "{code}# Summary:", "target": "summary", "domain": "code",
        "until": ["\n"], "max_tokens": 32, "samples": 1, "temperature": 0.0, "metrics": ["rouge", "bleu"],
    },
    "code_doctest": {
        "description": "Code assistance: complete a function whose doctest examples are its tests (run in the "
                       "sandbox).",
        "output_type": "generate_until", "prompt": "{prompt}", "target": "solution", "domain": "code",
        "until": _CODE_STOPS, "max_tokens": 48, "samples": 2, "temperature": 0.8, "tests": "tests",
        "metrics": ["pass@1", "pass@2"],
    },
    "stdlib_mc": {
        "description": "Multiple choice on held-out standard-library APIs: which module defines a name, which "
                       "function a docstring describes.",
        "output_type": "multiple_choice", "prompt": "Question: {question}\nAnswer:", "target": "answer",
        "choices": "choices", "target_delimiter": " ", "domain": "code", "metrics": ["acc", "acc_norm"],
    },
    "perplexity_code": {
        "description": "Perplexity on held-out standard-library source code.",
        "output_type": "loglikelihood_rolling", "text": "text", "domain": "code",
        "metrics": ["perplexity", "bits_per_byte"],
    },
    "perplexity_prose": {
        "description": "Perplexity on held-out standard-library docstrings (English prose).",
        "output_type": "loglikelihood_rolling", "text": "text", "domain": "prose",
        "metrics": ["perplexity", "bits_per_byte"],
    },
    "perplexity_chat": {
        "description": "Perplexity on held-out instruction conversations rendered with the chat template.",
        "output_type": "loglikelihood_rolling", "text": "text", "domain": "chat",
        "metrics": ["perplexity", "bits_per_byte"],
    },
    "stdlib_retrieval": {
        "description": "Retrieval: held-out API questions against docstring passages (the model as an embedder).",
        "output_type": "retrieval", "prompt": "{query}", "target": "relevant",
        "passages": f"{DATA_DIR}/stdlib_retrieval_passages.jsonl", "domain": "retrieval",
        "metrics": ["recall@1", "recall@10", "mrr", "ndcg@10"],
    },
}
RETRIEVAL_QUERIES, RETRIEVAL_POOL = 100, 1000

_KEY_ORDER = ("task", "description", "data", "output_type", "prompt", "target", "choices", "target_delimiter",
              "text", "passages", "domain", "until", "max_tokens", "samples", "temperature", "tests", "metrics")


def _yaml_scalar(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_yaml_scalar(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid YAML double-quoted scalar


def task_yaml(name: str) -> str:
    """The YAML text of one built-in task (keys in the documented order; strings JSON-quoted)."""
    config = {"task": name, **TASKS[name], "data": f"{DATA_DIR}/{name}.jsonl"}
    lines = ["# Built by `python -m quark_jax.evaluation.suites --output evals/tasks`; do not edit by hand",
             "# (change quark_jax/evaluation/suites.py and rebuild)."]
    lines += [f"{key}: {_yaml_scalar(config[key])}" for key in _KEY_ORDER if key in config]
    return "\n".join(lines) + "\n"


# ---- build ------------------------------------------------------------------------------------------


def stdlib_retrieval() -> tuple[list[dict], list[dict]]:
    """(queries, passage pool) of the retrieval suite: ``{"query", "relevant", "source"}`` examples and
    ``{"id", "text"}`` passages."""
    from quark_jax.data import retrieval_pairs

    pool, queries = retrieval_pairs.benchmark("validation", "docs", max_queries=RETRIEVAL_QUERIES,
                                              max_passages=RETRIEVAL_POOL)
    examples = [{"query": q.text, "relevant": list(q.relevant), "source": q.metadata["source"]} for q in queries]
    return examples, [{"id": p.id, "text": p.text} for p in pool]


def build_examples() -> dict[str, list[dict]]:
    """Every suite's examples, by task name."""
    defs = definitions()
    definers = top_level_definers()
    return {
        "stdlib_qa": stdlib_qa(defs, definers),
        "stdlib_summarize": stdlib_summarize(defs),
        "code_doctest": code_doctest(),
        "stdlib_mc": stdlib_mc(defs, definers),
        "perplexity_code": perplexity_code(),
        "perplexity_prose": perplexity_prose(defs),
        "perplexity_chat": perplexity_chat(),
        "stdlib_retrieval": stdlib_retrieval()[0],
    }


def check_held_out(name: str, examples: list[dict]) -> None:
    """Raises unless every corpus-derived example's source document is in the validation split."""
    for example in examples:
        key = example["source"]
        if name == "code_doctest" or key.startswith("arithmetic:"):
            continue  # our own specs; generated sums (split by quark_jax.data.instructions' own hash rule)
        if split_of(key) != "validation":
            raise AssertionError(f"{name}: an example comes from {key}, a training document")


def build(output: str | os.PathLike) -> dict[str, int]:
    """Writes every task YAML to ``output`` and its JSONL to ``output/data``; returns examples per task."""
    output = pathlib.Path(output)
    (output / DATA_DIR).mkdir(parents=True, exist_ok=True)
    counts = {}
    for name, examples in build_examples().items():
        check_held_out(name, examples)
        if not examples:
            raise RuntimeError(f"suite {name} came out empty on Python {sys.version.split()[0]}")
        (output / f"{name}.yaml").write_text(task_yaml(name), encoding="utf-8")
        with open(output / DATA_DIR / f"{name}.jsonl", "w", encoding="utf-8", newline="\n") as f:
            for example in examples:
                f.write(json.dumps(example, ensure_ascii=False) + "\n")
        counts[name] = len(examples)
    _, pool = stdlib_retrieval()
    with open(output / DATA_DIR / "stdlib_retrieval_passages.jsonl", "w", encoding="utf-8", newline="\n") as f:
        for passage in pool:
            f.write(json.dumps(passage, ensure_ascii=False) + "\n")
    manifest = {"python": ".".join(map(str, sys.version_info[:3])), "seed": SEED, "examples": counts}
    (output / DATA_DIR / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default=str(REPO / "evals" / "tasks"), help="directory for the task YAML files")
    args = parser.parse_args(argv)
    print(json.dumps(build(args.output)))


if __name__ == "__main__":
    main()
