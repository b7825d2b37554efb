"""The regression gate: compares evaluation results with a stored baseline under per-metric tolerances.

A baseline file (``evals/baselines/NAME.json``)::

    {"tasks": {"stdlib_mc": {"acc": {"value": 0.42, "tolerance": 0.05, "higher_is_better": true}},
               "perplexity_code": {"perplexity": {"value": 31.5, "tolerance": 1.575, "higher_is_better": false}}}}

``tolerance`` is absolute, in the metric's own unit. A metric regresses when it is worse than the baseline by
more than its tolerance: ``now < value - tolerance`` when higher is better, ``now > value + tolerance`` when
lower is better. Defaults (:func:`default_tolerance`, used by :func:`write_baseline` and for an entry without a
tolerance): 0.05 for rates in [0, 1] (acc, acc_norm, exact_match, ROUGE, pass@k), 5 points for sacreBLEU's
0-100 BLEU and chrF, 5% of the baseline value for perplexity and bits per byte (lower is better).

A task of the baseline that the results do not hold is not compared (run a subset against a full baseline);
a metric missing from a task that was evaluated is a regression (``now`` None).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

LOWER_IS_BETTER = ("perplexity", "bits_per_byte")
RELATIVE_TOLERANCE = 0.05  # of the baseline value, for LOWER_IS_BETTER metrics
RATE_TOLERANCE = 0.05
POINTS_TOLERANCE = 5.0  # sacreBLEU's 0-100 scale


@dataclasses.dataclass(frozen=True)
class Regression:
    """A metric worse than its baseline by more than the tolerance (``now`` None: not in the results)."""

    task: str
    metric: str
    baseline: float
    now: float | None
    tolerance: float
    higher_is_better: bool

    @property
    def allowed(self) -> float:
        """The worst value that would still pass."""
        return self.baseline - self.tolerance if self.higher_is_better else self.baseline + self.tolerance

    def as_dict(self) -> dict:
        """The regression as JSON-ready fields (with ``allowed``), as lineages and the registry ledger keep it."""
        return {"task": self.task, "metric": self.metric, "baseline": self.baseline, "now": self.now,
                "tolerance": self.tolerance, "allowed": self.allowed, "higher_is_better": self.higher_is_better}


def higher_is_better(metric: str) -> bool:
    return metric not in LOWER_IS_BETTER


def default_tolerance(metric: str, value: float) -> float:
    """The default absolute tolerance of ``metric`` around a baseline ``value`` (module docstring)."""
    if metric in LOWER_IS_BETTER:
        return RELATIVE_TOLERANCE * abs(value)
    if metric in ("bleu", "chrf"):
        return POINTS_TOLERANCE
    return RATE_TOLERANCE


def _newest(results: dict | Sequence[dict]) -> dict:
    if isinstance(results, dict):
        return results
    return max(results, key=lambda r: r.get("step") or 0)


def read_baseline(path: str) -> dict:
    """A baseline file, checked; a missing or malformed file is a one-line ``ValueError``."""
    try:
        with open(path, encoding="utf-8") as f:
            baseline = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{path}: baseline file not found") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: not JSON ({e.msg})") from None
    if not isinstance(baseline, dict) or not isinstance(baseline.get("tasks"), dict):
        raise ValueError(f'{path}: a baseline is {{"tasks": {{task: {{metric: {{"value": ...}}}}}}}}')
    for task, metrics in baseline["tasks"].items():
        if not isinstance(metrics, dict):
            raise ValueError(f"{path}: tasks.{task} must map metric names to entries")
        for metric, entry in metrics.items():
            if not isinstance(entry, dict) or not isinstance(entry.get("value"), (int, float)):
                raise ValueError(f'{path}: tasks.{task}.{metric} must be {{"value": number, ...}}')
    return baseline


def compare(results: dict | Sequence[dict], baseline: Mapping[str, Any],
            tolerances: Mapping[str, float] | None = None) -> list[Regression]:
    """The regressions of ``results`` (the newest checkpoint, when several) against ``baseline``.

    A metric's tolerance is ``tolerances[metric]`` when given, else the baseline entry's ``tolerance``, else
    :func:`default_tolerance`."""
    result = _newest(results)
    tolerances = dict(tolerances or {})
    regressions = []
    for task, metrics in baseline.get("tasks", {}).items():
        if task not in result["tasks"]:
            continue
        now_metrics = result["tasks"][task]["metrics"]
        for metric, entry in metrics.items():
            value = float(entry["value"])
            better = bool(entry.get("higher_is_better", higher_is_better(metric)))
            tolerance = float(tolerances.get(metric, entry.get("tolerance", default_tolerance(metric, value))))
            figure = now_metrics.get(metric)
            if figure is None:
                regressions.append(Regression(task, metric, value, None, tolerance, better))
                continue
            now = float(figure["value"])
            worse = now < value - tolerance if better else now > value + tolerance
            if worse or now != now:  # NaN never passes
                regressions.append(Regression(task, metric, value, now, tolerance, better))
    return regressions


def format_regressions(regressions: Sequence[Regression]) -> str:
    """A Markdown table naming each regression: task, metric, baseline, now, allowed (the worst passing
    value)."""
    if not regressions:
        return "no regressions\n"
    lines = [f"{len(regressions)} regression(s):", "| task | metric | baseline | now | allowed |",
             "| --- | --- | --- | --- | --- |"]
    for r in regressions:
        now = "missing" if r.now is None else f"{r.now:.4g}"
        bound = f"{'>=' if r.higher_is_better else '<='} {r.allowed:.4g}"
        lines.append(f"| {r.task} | {r.metric} | {r.baseline:.4g} | {now} | {bound} |")
    return "\n".join(lines) + "\n"


def write_baseline(results: dict | Sequence[dict], path: str, tolerances: Mapping[str, float] | None = None) -> dict:
    """Writes the results' (newest checkpoint's) figures as a baseline file with default (or the given
    per-metric) tolerances; returns it."""
    result = _newest(results)
    tolerances = dict(tolerances or {})
    baseline = {
        "model_dir": result.get("model_dir"), "step": result.get("step"),
        "config": {k: v for k, v in result.get("config", {}).items() if k != "tasks"},
        "tasks": {
            task: {metric: {"value": float(figure["value"]),
                            "tolerance": float(tolerances.get(metric, default_tolerance(metric, figure["value"]))),
                            "higher_is_better": higher_is_better(metric)}
                   for metric, figure in t["metrics"].items()}
            for task, t in result["tasks"].items()
        },
    }
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(baseline, f, indent=2)
        f.write("\n")
    return baseline
