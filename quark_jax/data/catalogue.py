"""The catalogue: every task and mixture the project registers, in one place, registered on request.

:func:`register_all` registers (importing this module registers nothing):

* ``stdlib_code``, ``stdlib_docstrings`` — the interpreter's standard library (``corpus.py``), and the
  mixture ``stdlib`` of the two;
* ``sft_stdlib`` — the chat/instruction-tuning task over ``data/instructions/`` (``chat_tasks.py``);
* ``quark_demo`` — the demo mixture of four local sources (``mixtures.py``);
* every directory built by ``quark data build`` that ``$QUARK_DATA_DIRS`` (``:``-separated) names, as the
  mixture ``<mixture>_clean`` with tasks ``<name>.<task>`` (``built_tasks.py``).

It is idempotent and cheap after the first call, so every reader of the registry (``pipeline``,
``quark data list``/``build``, ``quark tokenizer train``) calls it before looking a name up. A
``$QUARK_DATA_DIRS`` entry that is not a built directory raises :class:`DataDirError`, whose message is one
line naming the directory and the fix.

The modules named above are toolkits: they never import this one.
"""

from __future__ import annotations

import functools
import os
import pathlib

import seqio

from quark_jax import run_paths
from quark_jax.data import built_tasks, chat_tasks, corpus, mixtures, tasks

DATA_DIRS_ENV = "QUARK_DATA_DIRS"
# Share of examples drawn from each stdlib task. At 1k-token sequences the code/docstring chunk counts
# are roughly 83/17, so 0.8/0.2 is near-proportional while keeping the only English prose in the mix
# clearly visible.
STDLIB_RATES = {"stdlib_code": 0.8, "stdlib_docstrings": 0.2}
SFT_TASK = "sft_stdlib"
DEMO_MIXTURE = "quark_demo"
BUILTIN_TASKS = (*corpus.KINDS, SFT_TASK)
BUILTIN_MIXTURES = ("stdlib", DEMO_MIXTURE)

# Resolved directory -> mixture name, for the $QUARK_DATA_DIRS entries already registered.
_registered_dirs: dict[str, str] = {}  # resolved local path or URL -> mixture name


class DataDirError(ValueError):
    """A ``$QUARK_DATA_DIRS`` entry that cannot be registered; the message names it and the fix."""


def register_stdlib() -> None:
    """The stdlib tasks and their mixture ``stdlib``."""
    for kind in corpus.KINDS:
        tasks.register_text_task(kind, functools.partial(corpus.stdlib_documents, kind))
    # Mixtures hold Task objects, so the mixture is re-registered after its tasks are replaced.
    tasks.register_mixture("stdlib", STDLIB_RATES)


def register_sft() -> None:
    """The chat task ``sft_stdlib`` over the shipped instruction set."""
    chat_tasks.register_chat_task(
        SFT_TASK, {s: os.path.join(chat_tasks.INSTRUCTIONS_DIR, f"{s}.jsonl") for s in ("train", "validation")})


def _registered(names, registry) -> bool:
    return set(names) <= set(registry.names())


def register_builtins() -> None:
    """The project's own tasks and mixtures; re-registers only what is missing from the registry."""
    if not (_registered(corpus.KINDS, seqio.TaskRegistry) and _registered(["stdlib"], seqio.MixtureRegistry)):
        register_stdlib()
    if not _registered([SFT_TASK], seqio.TaskRegistry):
        register_sft()
    if not _registered([DEMO_MIXTURE], seqio.MixtureRegistry):
        mixtures.register_demo(DEMO_MIXTURE)


def data_dirs(value: str | None = None) -> list[str]:
    """The entries of ``$QUARK_DATA_DIRS`` (or of ``value``), empty ones dropped."""
    value = os.environ.get(DATA_DIRS_ENV, "") if value is None else value
    entries: list[str] = []
    for piece in value.split(os.pathsep):
        # "gs://bucket/data" splits at its scheme's colon into "gs" and "//bucket/data": join them again.
        if piece.startswith("//") and entries and entries[-1].strip().isalnum():
            entries[-1] = f"{entries[-1].strip()}:{piece}"
        else:
            entries.append(piece)
    return [d.strip() for d in entries if d.strip()]


def register_data_dirs(value: str | None = None) -> list[str]:
    """Registers every built directory of ``$QUARK_DATA_DIRS`` (or ``value``); returns their mixture names.

    A directory already registered (and still in the registry) is not read again. Raises
    :class:`DataDirError` for the first entry that is not a built directory.
    """
    names = []
    for entry in data_dirs(value):
        path = str(pathlib.Path(entry).expanduser().resolve()) if run_paths.is_local(entry) else run_paths.absolute(entry)
        name = _registered_dirs.get(path)
        if name is None or name not in seqio.MixtureRegistry.names():
            try:
                if not run_paths.exists(run_paths.join(path, built_tasks.MANIFEST)):
                    raise FileNotFoundError(f"no {built_tasks.MANIFEST} in {path}")
                name = built_tasks.register_built(path)
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise DataDirError(
                    f"${DATA_DIRS_ENV} names {entry!r}, which is not a built dataset ({e}). Build it with "
                    f"`quark data build --mixture NAME --output {entry}`, or remove it from ${DATA_DIRS_ENV}."
                ) from None
            _registered_dirs[path] = name
        names.append(name)
    return names


def register_all() -> None:
    """Registers the built-in tasks and mixtures, then the ``$QUARK_DATA_DIRS`` directories (idempotent)."""
    register_builtins()
    register_data_dirs()


def members(name: str) -> list[tuple[seqio.Task, float]]:
    """``(task, rate)`` of every task of a registered mixture, or ``[(task, 1.0)]`` for a task; registers the
    catalogue first. An unknown name is a ValueError listing the registered ones."""
    register_all()
    if name in seqio.MixtureRegistry.names():
        mix = seqio.MixtureRegistry.get(name)
        return [(t, mix.get_rate(t)) for t in mix.tasks]
    if name in seqio.TaskRegistry.names():
        return [(seqio.TaskRegistry.get(name), 1.0)]
    known = sorted(set(seqio.MixtureRegistry.names()) | set(seqio.TaskRegistry.names()))
    raise ValueError(f"unknown mixture or task {name!r}; `quark data list` shows the registered ones: {known}")


def registry_table() -> list[dict[str, str]]:
    """One row per registered task and mixture (name, kind, what it reads) for ``quark data list``."""
    rows = []
    for name in sorted(seqio.TaskRegistry.names()):
        source = seqio.TaskRegistry.get(name).source
        rows.append({"name": name, "type": "task", "source": type(source).__name__,
                     "splits": ",".join(source.splits)})
    for name in sorted(seqio.MixtureRegistry.names()):
        mixture = seqio.MixtureRegistry.get(name)
        rates = ", ".join(f"{t.name}:{mixture.get_rate(t):g}" for t in mixture.tasks)
        rows.append({"name": name, "type": "mixture", "source": rates, "splits": ""})
    return rows
