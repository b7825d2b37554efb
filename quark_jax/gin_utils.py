"""gin at the edges: registers quark_jax's config dataclasses and parses run files with errors that name the culprit.

Model math never reads gin: gin only builds the frozen dataclasses (``ModelConfig``, ``TrainConfig`` ...)
that the code takes as arguments.
"""

from __future__ import annotations

import contextlib
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


def parse(gin_files: Sequence[str], bindings: Sequence[str] = (), search_paths: Sequence[str] = ()) -> None:
    """Clears gin, then parses ``gin_files`` followed by ``bindings`` (``'NAME=VALUE'`` strings).

    Raises :class:`GinConfigError` naming the file and line, or the binding, at fault. Everything is
    checked here, before any data is read or anything is compiled.
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
        for binding in bindings:
            try:
                gin.parse_config(binding)
            except Exception as e:  # noqa: BLE001
                raise GinConfigError(f"in binding --gin.{binding}: {_describe(e)}") from e


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


def config_text() -> str:
    """The bindings of this run as gin text (written beside the checkpoints)."""
    return gin.config_str()
