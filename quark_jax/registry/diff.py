"""``quark runs diff A B``: how two runs differ in their operative gin bindings and their lineage.

The model is compared field by field from ``model_config.json`` (what the run really built, whichever gin file
set it). The bindings are read from each run's ``config.gin`` (gin's operative config: ``NAME = VALUE`` lines, a
value continued on indented lines), a macro reference replaced by the macro's value; macros are compared too. The lineage comparison covers the kind, the parents by
role (path, step, run id), the data by role (name, path, content hash, feedback it came from), the config hash,
the code commit, and the newest figure of each evaluated metric.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from quark_jax import lineage, run_paths

_BINDING = re.compile(r"^([A-Za-z_][\w.]*(?:/[\w.]+)?)\s*=\s*(.*)$")


def parse_bindings(text: str) -> dict[str, str]:
    """``{name: value text}`` of a gin operative config (comments and blank lines skipped; an indented line
    continues the value above it, whitespace collapsed)."""
    bindings: dict[str, str] = {}
    name = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            name = None if not line.strip() else name
            continue
        match = _BINDING.match(line)
        if match and not line[0].isspace():
            name = match.group(1)
            bindings[name] = match.group(2).strip()
        elif name is not None:
            bindings[name] = f"{bindings[name]} {line.strip()}"
    return bindings


def resolve_macros(bindings: Mapping[str, str]) -> dict[str, str]:
    """A binding whose value is a macro reference (``%TRAIN_STEPS``) takes the macro's value, so that two runs
    binding the same value directly and through a macro do not differ."""
    resolved = dict(bindings)
    for name, value in bindings.items():
        seen = set()
        while value.startswith("%") and value[1:] in bindings and value not in seen:
            seen.add(value)
            value = bindings[value[1:]]
        resolved[name] = value
    return resolved


def read_bindings(run_dir: str) -> dict[str, str]:
    """The run's operative bindings, macros resolved; ``ModelConfig.*`` left out (the model is compared
    whole, from ``model_config.json``)."""
    path = run_paths.safe_path(run_dir, "config.gin")
    bindings = resolve_macros(parse_bindings(run_paths.read_text(path))) if run_paths.exists(path) else {}
    return {k: v for k, v in bindings.items() if not k.split("/")[-1].startswith("ModelConfig.")}


def read_model(run_dir: str) -> dict[str, Any]:
    path = run_paths.safe_path(run_dir, "model_config.json")
    return json.loads(run_paths.read_text(path)) if run_paths.exists(path) else {}


def _compare(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, list]:
    """``{key: [value in a, value in b]}`` of every key whose values differ (None where absent)."""
    return {k: [a.get(k), b.get(k)] for k in sorted(set(a) | set(b), key=str) if a.get(k) != b.get(k)}


def _lineage_view(record: Mapping[str, Any]) -> dict[str, Any]:
    """The comparable facts of a lineage, flattened to ``{"parent.reference.step": 40, ...}``."""
    view: dict[str, Any] = {"kind": record.get("kind"),
                            "config.sha256": (record.get("config") or {}).get("sha256"),
                            "code.git_commit": (record.get("code") or {}).get("git_commit")}
    for p in record.get("parents", []):
        for field in ("path", "step", "run_id"):
            view[f"parent.{p['role']}.{field}"] = p.get(field)
    for d in record.get("data", []):
        for field in ("name", "path", "sha256"):
            if field in d:
                view[f"data.{d['role']}.{field}"] = d[field]
        if isinstance(d.get("derived_from"), dict):
            view[f"data.{d['role']}.derived_from.sha256"] = d["derived_from"].get("sha256")
    for e in record.get("evaluations", []):  # oldest first: the newest figure wins
        for task, metrics in (e.get("tasks") or {}).items():
            for metric, value in metrics.items():
                view[f"eval.{task}.{metric}"] = value
        for metric, value in (e.get("figures") or {}).items():
            view[f"eval.{e.get('source')}.{metric}"] = value
    return view


def diff_runs(run_a: str, run_b: str) -> dict[str, dict[str, list]]:
    """``{"model": {field: [a, b]}, "config": {binding: [a, b]}, "lineage": {fact: [a, b]}}`` of what differs
    between two runs."""
    return {"model": _compare(read_model(run_a), read_model(run_b)),
            "config": _compare(read_bindings(run_a), read_bindings(run_b)),
            "lineage": _compare(_lineage_view(lineage.read_lineage(run_a)), _lineage_view(lineage.read_lineage(run_b)))}


def format_diff(diff: Mapping[str, Mapping[str, list]], run_a: str, run_b: str) -> str:
    """One line per difference: ``config TrainConfig.steps: 40 -> 5``; a header naming A and B."""
    def show(value: Any) -> str:
        return "(absent)" if value is None else str(value)

    lines = [f"A = {run_a}", f"B = {run_b}"]
    for section in ("model", "config", "lineage"):
        for key, (a, b) in diff[section].items():
            lines.append(f"{section} {key}: {show(a)} -> {show(b)}")
    if len(lines) == 2:
        lines.append("no differences")
    return "\n".join(lines) + "\n"
