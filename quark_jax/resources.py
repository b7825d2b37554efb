"""Files shipped with quark_jax: the tokenizer, the gin configs, the built data sets and the evaluation suites.

In a source checkout they are the repository's top-level ``tokenizers/``, ``configs/``, ``data/`` and ``evals/``; an
installed wheel carries the same trees as package data under ``quark_jax/_shipped/`` (see ``setup.py``).
:func:`shipped` is the one place that knows both layouts.
"""

from __future__ import annotations

import functools
import importlib.resources
import pathlib

_PACKAGE_DIR = pathlib.Path(__file__).resolve().parent
SHIPPED_TREES = ("configs", "tokenizers", "data", "evals")


@functools.cache
def _roots() -> tuple[pathlib.Path, ...]:
    roots = []
    packaged = pathlib.Path(str(importlib.resources.files("quark_jax") / "_shipped"))
    if packaged.is_dir():
        roots.append(packaged)
    checkout = _PACKAGE_DIR.parent
    if (checkout / "setup.py").is_file():
        roots.append(checkout)
    return tuple(roots)


def shipped(relative: str) -> pathlib.Path:
    """The shipped file or directory ``relative`` (e.g. ``"tokenizers/quark_stdlib_4k.model"``).

    Returns the first root that holds it (package data, then a source checkout); if none does, the path it
    would have in the first root, so that callers' own "not found" errors name a sensible place."""
    if relative.split("/", 1)[0] not in SHIPPED_TREES:
        raise ValueError(f"{relative!r} is not under a shipped tree {SHIPPED_TREES}")
    roots = _roots()
    for root in roots:
        if (root / relative).exists():
            return root / relative
    return (roots[0] if roots else _PACKAGE_DIR / "_shipped") / relative


def search_root() -> pathlib.Path:
    """The directory that holds ``configs/`` (for gin ``include 'configs/...'`` lookups)."""
    return shipped("configs").parent
