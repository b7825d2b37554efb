"""The search space: a small YAML or JSON file mapping gin bindings to distributions, and gin text back.

    quark_jax.OptimizerConfig.learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
    quark_jax.ModelConfig.num_layers: {type: int, low: 1, high: 4}
    TASK_FEATURE_LENGTHS: {type: categorical, raw: true, choices: ["{'targets': 128}", "{'targets': 256}"]}

A ``categorical`` choice is a number, a bool or a string; strings are quoted for gin unless ``raw: true``
says the choices are gin text already (dicts, ``@references``).

Two more kinds of entry make shapes valid by construction and tie settings to the trial's length:

    mlp_ratio: {type: float, low: 2.0, high: 4.0, bind: false}      # sampled, but no gin binding of its own
    quark_jax.ModelConfig.num_heads: {derive: "d_model // 64"}       # computed, not sampled
    quark_jax.ModelConfig.mlp_dim: {derive: "round(d_model * mlp_ratio / 32) * 32"}
    quark_jax.OptimizerConfig.warmup_steps: {derive: "max(1, round(warmup_fraction * TRAIN_STEPS))"}

``bind: false`` samples a variable that only derived entries read. A ``derive`` expression
(:mod:`quark_jax.tuning.expressions`: arithmetic, comparisons, ``a if c else b``, round/int/float/min/max) reads
entries above it, by full name or by the part after the last dot when that is unambiguous, and ``TRAIN_STEPS``:
the trial's step count (set by the time budget, or the run's own).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from quark_jax.tuning import expressions

KINDS = ("float", "int", "categorical")
# Values a trial supplies to derived entries besides the space's own.
CONTEXT_NAMES = ("TRAIN_STEPS",)


class SearchSpaceError(ValueError):
    """The search-space file is malformed; the message names the file, the binding and the fix."""


@dataclasses.dataclass(frozen=True)
class Dimension:
    """One searched binding: its gin name and distribution."""

    binding: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple = ()
    raw: bool = False
    derive: str | None = None  # an expression over earlier entries: computed, never sampled
    bind: bool = True  # False: a sampled variable that only derived entries read

    @property
    def short_name(self) -> str:
        return self.binding.rsplit(".", 1)[-1]

    def suggest(self, trial: Any) -> Any:
        """The value an Optuna trial samples for this dimension."""
        if self.kind == "float":
            return trial.suggest_float(self.binding, self.low, self.high, log=self.log)
        if self.kind == "int":
            return trial.suggest_int(self.binding, int(self.low), int(self.high), log=self.log)
        return trial.suggest_categorical(self.binding, list(self.choices))

    def gin_value(self, value: Any) -> str:
        """``value`` as a gin literal."""
        if isinstance(value, bool):
            return str(value)
        if self.kind == "categorical" and self.raw:
            return str(value)
        if isinstance(value, str):
            return repr(value)
        if isinstance(value, float):
            return repr(float(value))
        return str(value)

    def clip(self, value: float) -> float:
        """``value`` inside [low, high] (an int dimension rounds)."""
        clipped = min(max(value, self.low), self.high)
        return int(round(clipped)) if self.kind == "int" else float(clipped)

    def unit(self, value: float) -> float:
        """Where ``value`` lies in [low, high] as a number in [0, 1] (on the log scale if ``log``)."""
        if self.kind == "categorical":
            return self.choices.index(value) / max(len(self.choices) - 1, 1)
        low, high, x = float(self.low), float(self.high), float(value)
        if self.log:
            low, high, x = math.log(low), math.log(high), math.log(x)
        return (x - low) / (high - low) if high > low else 0.0


def _number(value: Any) -> Any:
    """YAML 1.1 reads ``1e-2`` (no dot) as a string: such a string is taken as the number it spells."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _dimension(path: str, binding: str, spec: Any) -> Dimension:
    where = f"{path}: {binding}"
    if not isinstance(spec, Mapping):
        raise SearchSpaceError(f"{where}: expected a mapping like {{type: float, low: 1e-4, high: 1e-2}}")
    if "derive" in spec:
        if set(spec) - {"derive", "type"} or spec.get("type", "derived") != "derived":
            raise SearchSpaceError(f"{where}: a derived entry has only derive: \"<expression>\", got keys "
                                   f"{', '.join(sorted(spec))}")
        try:
            expressions.parse(spec["derive"])
        except expressions.ExpressionError as e:
            raise SearchSpaceError(f"{where}: {e}") from None
        return Dimension(binding, "derived", derive=spec["derive"].strip())
    kind = spec.get("type")
    if kind not in KINDS:
        raise SearchSpaceError(f"{where}: type {kind!r} must be one of {', '.join(KINDS)} (or derive: \"<expression>\")")
    unknown = sorted(set(spec) - {"type", "low", "high", "log", "choices", "raw", "bind"})
    if unknown:
        raise SearchSpaceError(f"{where}: unknown key(s) {', '.join(unknown)}; use type, low, high, log, choices, raw, "
                               "bind (or derive)")
    if not isinstance(spec.get("bind", True), bool):
        raise SearchSpaceError(f"{where}: bind must be true or false, got {spec['bind']!r}")
    return dataclasses.replace(_sampled_dimension(where, binding, kind, spec), bind=spec.get("bind", True))


def _sampled_dimension(where: str, binding: str, kind: str, spec: Mapping) -> Dimension:
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise SearchSpaceError(f"{where}: a categorical needs a non-empty list of choices")
        if any(not isinstance(c, (str, int, float, bool)) and c is not None for c in choices):
            raise SearchSpaceError(f"{where}: choices must be numbers, bools or strings (gin text with raw: true)")
        return Dimension(binding, kind, choices=tuple(choices), raw=bool(spec.get("raw", False)))
    low, high = _number(spec.get("low")), _number(spec.get("high"))
    if not isinstance(low, (int, float)) or not isinstance(high, (int, float)) or isinstance(low, bool) \
            or isinstance(high, bool) or not low < high:
        raise SearchSpaceError(f"{where}: needs numbers low < high, got low={low!r} high={high!r}")
    log = bool(spec.get("log", False))
    if log and low <= 0:
        raise SearchSpaceError(f"{where}: log: true needs low > 0, got {low!r}")
    if kind == "int" and (int(low) != low or int(high) != high):
        raise SearchSpaceError(f"{where}: an int dimension needs whole-number bounds, got {low!r}..{high!r}")
    return Dimension(binding, kind, float(low) if kind == "float" else int(low),
                     float(high) if kind == "float" else int(high), log)


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """The searched bindings, in file order."""

    dimensions: tuple[Dimension, ...]

    def __getitem__(self, binding: str) -> Dimension:
        for dimension in self.dimensions:
            if dimension.binding == binding:
                return dimension
        raise KeyError(binding)

    @property
    def sampled(self) -> tuple[Dimension, ...]:
        """The entries a sampler chooses (all but the derived ones)."""
        return tuple(d for d in self.dimensions if d.derive is None)

    def uses_train_steps(self) -> bool:
        """Whether a derived entry reads ``TRAIN_STEPS``."""
        return any(d.derive is not None and "TRAIN_STEPS" in expressions.names(expressions.parse(d.derive))
                   for d in self.dimensions)

    def suggest(self, trial: Any) -> dict[str, Any]:
        """{binding: value} sampled by an Optuna trial (the sampled entries only)."""
        return {d.binding: d.suggest(trial) for d in self.sampled}

    def values(self, params: Mapping[str, Any], context: Mapping[str, Any] = ()) -> dict[str, Any]:
        """Every entry's value: the sampled ``params`` and, in file order, the derived entries computed from the
        entries above them and ``context`` (``{"TRAIN_STEPS": n}``). A sampled entry missing from ``params`` is
        left out, and so is a derived one that reads a missing value."""
        context = dict(context)
        values: dict[str, Any] = {}
        scope: dict[str, Any] = dict(context)
        for d in self.dimensions:
            if d.derive is None:
                if d.binding not in params:
                    continue
                value = params[d.binding]
            else:
                tree = expressions.parse(d.derive)
                if not expressions.names(tree) <= set(scope):
                    continue
                try:
                    value = expressions.evaluate(tree, scope)
                except expressions.ExpressionError as e:
                    raise SearchSpaceError(f"{d.binding}: {e}") from None
            values[d.binding] = value
            scope[d.binding] = value
            if self._short_name_unique(d):
                scope[d.short_name] = value
        return values

    def _short_name_unique(self, dimension: Dimension) -> bool:
        return sum(d.short_name == dimension.short_name for d in self.dimensions) == 1

    def bindings(self, params: Mapping[str, Any], context: Mapping[str, Any] = ()) -> list[str]:
        """``NAME=VALUE`` gin bindings of sampled ``params`` and the derived entries (``context`` gives
        ``TRAIN_STEPS``); variables (``bind: false``) are not bindings."""
        values = self.values(params, context)
        return [f"{d.binding}={d.gin_value(values[d.binding])}" for d in self.dimensions
                if d.bind and d.binding in values]

    def to_json(self) -> dict:
        out = {}
        for d in self.dimensions:
            spec: dict[str, Any]
            if d.derive is not None:
                spec = {"derive": d.derive}
            elif d.kind == "categorical":
                spec = {"type": d.kind, "choices": list(d.choices), "raw": d.raw}
            else:
                spec = {"type": d.kind, "low": d.low, "high": d.high, "log": d.log}
            if not d.bind:
                spec["bind"] = False
            out[d.binding] = spec
        return out


def parse_space(data: Any, path: str = "<search space>") -> SearchSpace:
    """A :class:`SearchSpace` from the decoded file (a mapping of binding to spec)."""
    if not isinstance(data, Mapping) or not data:
        raise SearchSpaceError(f"{path}: expected a mapping of gin bindings to distributions, e.g. "
                               "quark_jax.OptimizerConfig.learning_rate: {type: float, low: 1e-4, high: 1e-2, log: true}")
    dims = []
    for binding, spec in data.items():
        if not isinstance(binding, str) or not binding or "=" in binding or any(c.isspace() for c in binding):
            raise SearchSpaceError(f"{path}: {binding!r} is not a gin binding name (e.g. quark_jax.ModelConfig.d_model)")
        dims.append(_dimension(path, binding, spec))
    _check_derived_names(path, dims)
    return SearchSpace(tuple(dims))


def _check_derived_names(path: str, dims: Sequence[Dimension]) -> None:
    """Each derived entry reads only entries above it (by full or unambiguous short name) and TRAIN_STEPS."""
    short_counts: dict[str, int] = {}
    for d in dims:
        short_counts[d.short_name] = short_counts.get(d.short_name, 0) + 1
    known: set[str] = set(CONTEXT_NAMES)
    for d in dims:
        if d.derive is not None:
            for name in sorted(expressions.names(expressions.parse(d.derive))):
                if name in known:
                    continue
                if short_counts.get(name, 0) > 1:
                    raise SearchSpaceError(f"{path}: {d.binding}: {name} names more than one entry; use the full name")
                raise SearchSpaceError(f"{path}: {d.binding}: {name} is not an entry above it (nor "
                                       f"{', '.join(CONTEXT_NAMES)}); derived entries read entries defined earlier")
        known.add(d.binding)
        if short_counts[d.short_name] == 1:
            known.add(d.short_name)


def _read_yaml_or_json(path: str, what: str, fix: str) -> Any:
    """The decoded file (JSON for ``.json``, YAML otherwise); a missing or malformed one is a SearchSpaceError
    naming ``what`` and the path (``fix``: what to write when the file is missing)."""
    import yaml

    if not os.path.isfile(path):
        raise SearchSpaceError(f"{what} {path}: no such file; {fix}")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        return json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise SearchSpaceError(f"{what} {path}: not valid {'JSON' if path.endswith('.json') else 'YAML'} "
                               f"({str(e).splitlines()[0]})") from None


def load_space(path: str) -> SearchSpace:
    """Reads a YAML (``.yaml``/``.yml``) or JSON search-space file."""
    return parse_space(_read_yaml_or_json(path, "search space", "write one like docs/tuning.md shows"), path)


def check_point(space: SearchSpace, point: Any, where: str) -> dict[str, Any]:
    """A known point to try (``quark tune --enqueue``) as ``{binding: value}``: keys are the space's sampled entries
    (the full binding, or the part after the last dot when that is unambiguous), values inside their ranges or
    among their choices; entries left out are sampled as usual."""
    if not isinstance(point, Mapping) or not point:
        raise SearchSpaceError(f"{where}: expected a mapping of searched entries to values, e.g. "
                               "{learning_rate: 1.0e-3, num_layers: 2}")
    by_name = {d.binding: d for d in space.sampled}
    by_name.update({d.short_name: d for d in space.sampled if space._short_name_unique(d)})
    out: dict[str, Any] = {}
    for key, value in point.items():
        dimension = by_name.get(key)
        if dimension is None:
            raise SearchSpaceError(f"{where}: {key!r} is not a sampled entry of the space; use one of "
                                   f"{', '.join(d.binding for d in space.sampled)}")
        if dimension.kind == "categorical":
            if value not in dimension.choices:
                raise SearchSpaceError(f"{where}: {key}={value!r} is not one of its choices {list(dimension.choices)}")
        else:
            number = _number(value)
            is_int = isinstance(number, int) or (isinstance(number, float) and number.is_integer())
            if isinstance(number, bool) or not isinstance(number, (int, float)) or (
                    dimension.kind == "int" and not is_int) or not dimension.low <= number <= dimension.high:
                raise SearchSpaceError(f"{where}: {key}={value!r} must be a{'n int' if dimension.kind == 'int' else ' number'}"
                                       f" in [{dimension.low:g}, {dimension.high:g}]")
            value = int(number) if dimension.kind == "int" else float(number)
        out[dimension.binding] = value
    return out


def load_points(path: str, space: SearchSpace) -> list[dict[str, Any]]:
    """Known points to try first, from a YAML or JSON list of mappings (:func:`check_point`)."""
    data = _read_yaml_or_json(path, "points to enqueue", "write a list such as [{learning_rate: 1.0e-3}]")
    if not isinstance(data, list) or not data:
        raise SearchSpaceError(f"points to enqueue {path}: expected a non-empty list of mappings, e.g. "
                               "[{learning_rate: 1.0e-3}]")
    return [check_point(space, point, f"{path}: point {i}") for i, point in enumerate(data)]


def best_gin_text(bindings: Sequence[str], value: float, trial_number: int, study_name: str,
                  notes: Sequence[str] = ()) -> str:
    """The text of ``best.gin``: the winning trial's bindings, one per line, after comments naming it (and
    ``notes``, e.g. the time budget's measured step time and derived step count)."""
    lines = [f"# {study_name}: best trial {trial_number}, validation loss {value:.4f}",
             *(f"# {note}" for note in notes),
             "# Use it after the run's own files: quark train --gin_file=<run.gin> --gin_file=best.gin ..."]
    lines += [b.replace("=", " = ", 1) for b in bindings]
    return "\n".join(lines) + "\n"


def write_atomic(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file in the same directory and ``os.replace``."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
