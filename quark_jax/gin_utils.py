"""gin at the edges: registers quark_jax's config dataclasses and parses run files with errors that name the culprit.

Model math never reads gin: gin only builds the frozen dataclasses (``ModelConfig``, ``TrainConfig`` ...)
that the code takes as arguments.
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import logging
import os
from collections.abc import Iterator, Sequence

import gin

from quark_jax.models.config import ModelConfig
from quark_jax.resources import search_root
from quark_jax.training.config import CheckpointConfig, DataConfig, OptimizerConfig, TrainConfig


class GinConfigError(ValueError):
    """A gin file or binding could not be parsed or applied; the message names the file, line or binding."""


def _register() -> dict[type, object]:
    from quark_jax.training import objectives

    configurables = {}
    for cls in (ModelConfig, OptimizerConfig, DataConfig, CheckpointConfig, TrainConfig, *objectives.ALL):
        try:
            configurables[cls] = gin.external_configurable(cls, module="quark_jax")
        except ValueError:  # already registered (module re-imported)
            configurables[cls] = gin.get_configurable(f"quark_jax.{cls.__name__}")
    return configurables


_CONFIGURABLES = _register()

# Where `include 'configs/...'` and --gin_file look, besides the working directory.
REPO_ROOT = str(search_root())


def _resolve(path: str, search_paths: Sequence[str]) -> str:
    if os.path.isabs(path) or os.path.exists(path):
        return path
    for root in search_paths:
        candidate = os.path.join(root, path)
        if os.path.exists(candidate):
            return candidate
    raise GinConfigError(
        f"gin file {path!r} not found in the working directory or the search paths {list(search_paths)}; "
        "pass --gin_search_paths=DIR or a path that exists"
    )


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """gin logs every include lookup (and misses) on the root logger; our error message says it better."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        root.setLevel(level)


def parse(
    gin_files: Sequence[str], bindings: Sequence[str] = (), search_paths: Sequence[str] = (),
    defaults: Sequence[str] = (),
) -> None:
    """Clears gin, then parses ``gin_files``, ``defaults`` and ``bindings`` (``'NAME=VALUE'`` strings), in order.

    Raises :class:`GinConfigError` naming the file and line, or the binding, at fault: a value that is not a
    gin literal (with the inner-quotes hint for bare strings), and a macro binding in ``bindings`` that the
    parsed configuration never references (a misspelling: it would be silently ignored; see
    :func:`check_macro_bindings`). ``defaults`` are bindings the caller supplies on the user's behalf; they are
    not checked for use. Everything is checked here, before any data is read or anything is compiled.
    """
    search_paths = list(dict.fromkeys([*search_paths, os.getcwd(), REPO_ROOT]))  # ordered, no repeats
    gin.clear_config()
    for root in search_paths:
        gin.add_config_file_search_path(root)
    files = [_resolve(f, search_paths) for f in gin_files]
    # gin raises many types (ValueError, KeyError, IOError, tokenize.TokenError ...): all become one error.
    with _quiet_root_logger():
        for path in files:
            try:
                gin.parse_config_file(path)
            except Exception as e:  # noqa: BLE001
                raise GinConfigError(f"in gin file {path}: {_describe(e)}") from e
        for binding in [*defaults, *bindings]:
            try:
                gin.parse_config(binding)
            except Exception as e:  # noqa: BLE001
                message = _quote_hint(binding) or _describe(e)
                raise GinConfigError(f"in binding --gin.{binding}: {message}") from e
    check_macro_bindings(bindings)


def _binding_name(binding: str) -> str:
    return binding.split("=", 1)[0].strip()


def _quote_hint(binding: str) -> str | None:
    """For ``NAME=VALUE`` whose value reads as a bare word or path (``/tmp/run``, ``stdlib``): what is wrong
    and how to quote it; None when the value is not such a word.

    gin values are Python-like literals, and the shell has already removed one level of quotes, so a string
    needs a second, inner pair."""
    if "=" not in binding:
        return None
    name, value = (part.strip() for part in binding.split("=", 1))
    if not value or value[0] in "'\"[({@%":  # a string, container or reference gone wrong: gin says why
        return None
    try:
        ast.literal_eval(value)
        return None  # a valid literal (True, None, 1e-3 ...): the fault is elsewhere
    except (ValueError, SyntaxError):
        pass
    inner = value.replace("'", "\\'")
    return f"{value} is not a gin value; strings need inner quotes: --gin.{name}=\"'{inner}'\""


def _macro_key(name: str) -> tuple[str, str]:
    return (name, "gin.macro")  # gin stores `NAME = value` as parameter `value` of `NAME/gin.macro`


def referenced_macros() -> set[str]:
    """Names of the macros that the parsed configuration uses as ``%NAME`` anywhere.

    This asks gin rather than scanning text: after parsing, every binding of every file (and of every file
    they ``include``), and of every ``--gin.*`` binding, lives in gin's config table (``gin.config._CONFIG``:
    ``(scope, selector) -> {parameter: value}``), and each ``%NAME`` in a value is a ``ConfigurableReference``
    to ``NAME/gin.macro``. :func:`gin.config.iterate_references` walks those values (nested lists, dicts,
    other macros' values) the same way gin's own macro validation does, so comments, strings that merely
    contain ``%``, and files that were never included cannot fool it. The table is private to gin (pinned in
    requirements.txt); ``tests/test_cli.py`` fails if its layout changes."""
    macro_fn = gin.get_configurable(gin.config.macro)
    return {ref.config_key[0] for ref in gin.config.iterate_references(gin.config._CONFIG, to=macro_fn)}


def defined_macros() -> set[str]:
    """Names of the macros given a value (``NAME = value``) by the parsed files or bindings."""
    return {scope for scope, selector in gin.config._CONFIG if selector == "gin.macro"}


def check_macro_bindings(bindings: Sequence[str]) -> None:
    """Raises :class:`GinConfigError` for a ``NAME=VALUE`` binding of a macro that nothing references.

    gin accepts ``TRAIN_STEP=10`` as the definition of a new macro, so a misspelt command-line macro used to
    be ignored and the run used the default. A binding whose name has no ``.`` (``NAME`` or ``scope/NAME``)
    binds a macro; it must be referenced as ``%NAME`` by the parsed configuration. The error suggests the
    closest macro that the configuration references or defines."""
    names = [_binding_name(b) for b in bindings]
    macros = [n for n in names if n and "." not in n and _macro_key(n) in gin.config._CONFIG]
    if not macros:
        return
    used = referenced_macros()
    unused = [name for name in dict.fromkeys(macros) if name not in used]
    if not unused:
        return
    name = unused[0]
    known = sorted((used | defined_macros()) - set(unused))
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}?" if close else f"the configuration's macros are {', '.join(known) or 'none'}"
    raise GinConfigError(
        f"in binding --gin.{name}: no gin file uses the macro {name} (as %{name}), so binding it would change "
        f"nothing; {hint}"
    )


def _describe(error: Exception) -> str:
    if type(error).__name__ == "TokenError":  # unbalanced brackets: tokenize reports (message, (line, col))
        message, (line, _) = error.args
        return f"{message} (unclosed bracket or quote; the file ends at line {line})"
    return str(error)


def build_train_config() -> TrainConfig:
    """Instantiates ``TrainConfig`` from the parsed bindings (a missing macro or bad value names itself)."""
    try:
        config = _CONFIGURABLES[TrainConfig]()
    except (ValueError, TypeError) as e:
        raise GinConfigError(f"building TrainConfig from the gin bindings: {e}") from e
    return config


def binds_a_run() -> bool:
    """Whether the parsed files configure a run (``TrainConfig``), not only a model's sizes."""
    try:
        gin.query_parameter("quark_jax.TrainConfig.model")
    except ValueError:
        return False
    return True


def config_text() -> str:
    """The bindings of this run as gin text (written beside the checkpoints)."""
    return gin.config_str()
