"""Evaluation reports: results JSON, per-example samples, a Markdown and a self-contained HTML table, plots.

``write_report(results, out_dir)`` takes one :func:`~quark_jax.evaluation.harness.evaluate` result, or a list of
them (several checkpoints of one run: one ``results_step<N>.json`` each, and per-metric curves over steps).

    out_dir/results.json            every checkpoint's results without the per-example samples
    out_dir/results_step<N>.json    (several checkpoints) each one's results, samples included
    out_dir/samples_<task>.jsonl    per-example records of the newest checkpoint (step<N>_ prefixed when several)
    out_dir/report.md               the table: task, metric, value [CI] (one value column per checkpoint)
    out_dir/report.html             the same table with the plots embedded (base64 PNG; no external file)
    out_dir/bars_<task>.png         per-task bars with CI error bars (newest checkpoint)
    out_dir/curve_<task>_<metric>.png   (several checkpoints) the metric over steps, with its CI band
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
from collections.abc import Sequence
from typing import Any


def _as_list(results: dict | Sequence[dict]) -> list[dict]:
    runs = [results] if isinstance(results, dict) else list(results)
    if not runs:
        raise ValueError("no results to report")
    return sorted(runs, key=lambda r: r.get("step") or 0)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _format(value: float) -> str:
    if value != value:  # NaN
        return "nan"
    magnitude = abs(value)
    if magnitude >= 1000 or (0 < magnitude < 1e-3):
        return f"{value:.3g}"
    if magnitude >= 100:
        return f"{value:.1f}"
    return f"{value:.3f}" if magnitude < 10 else f"{value:.2f}"


def format_figure(figure: dict[str, float]) -> str:
    """``value [low, high]``."""
    return f"{_format(figure['value'])} [{_format(figure['ci_low'])}, {_format(figure['ci_high'])}]"


def table_rows(runs: list[dict]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the results table: task, metric, n, then value [CI] per checkpoint."""
    steps = [r.get("step") for r in runs]
    header = ["task", "metric", "n"] + ([f"step {s}" for s in steps] if len(runs) > 1 else ["value [CI]"])
    rows = []
    tasks = list(dict.fromkeys(name for r in runs for name in r["tasks"]))
    for task in tasks:
        metrics = list(dict.fromkeys(m for r in runs if task in r["tasks"] for m in r["tasks"][task]["metrics"]))
        for metric in metrics:
            cells = []
            for r in runs:
                figure = r["tasks"].get(task, {}).get("metrics", {}).get(metric)
                cells.append(format_figure(figure) if figure else "-")
            n = next(r["tasks"][task]["n"] for r in reversed(runs) if task in r["tasks"])
            rows.append([task, metric, str(n), *cells])
    return header, rows


def markdown_table(results: dict | Sequence[dict]) -> str:
    """The results table in Markdown (intervals at the confidence of the run's config)."""
    runs = _as_list(results)
    header, rows = table_rows(runs)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _without_samples(result: dict) -> dict:
    return {**result, "tasks": {name: {k: v for k, v in t.items() if k != "samples"}
                                for name, t in result["tasks"].items()}}


def _bars(result: dict, task: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = result["tasks"][task]["metrics"]
    names = list(metrics)
    values = [metrics[m]["value"] for m in names]
    low = [max(0.0, metrics[m]["value"] - metrics[m]["ci_low"]) for m in names]
    high = [max(0.0, metrics[m]["ci_high"] - metrics[m]["value"]) for m in names]
    fig, ax = plt.subplots(figsize=(max(3.0, 1.2 * len(names) + 1.5), 3.0))
    ax.bar(range(len(names)), values, yerr=[low, high], capsize=4, color="#4C72B0")
    ax.set_xticks(range(len(names)), names, rotation=20 if len(names) > 3 else 0)
    ax.set_title(f"{task} (step {result.get('step')}, n={result['tasks'][task]['n']})")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _curve(runs: list[dict], task: str, metric: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(r.get("step") or 0, r["tasks"][task]["metrics"][metric]) for r in runs
              if metric in r["tasks"].get(task, {}).get("metrics", {})]
    steps = [s for s, _ in points]
    fig, ax = plt.subplots(figsize=(4.0, 3.0))
    ax.plot(steps, [f["value"] for _, f in points], marker="o", color="#4C72B0")
    ax.fill_between(steps, [f["ci_low"] for _, f in points], [f["ci_high"] for _, f in points], alpha=0.25,
                    color="#4C72B0")
    ax.set_xlabel("step")
    ax.set_title(f"{task}: {metric}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _html(runs: list[dict], images: list[str], out_dir: str) -> str:
    header, rows = table_rows(runs)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    newest = runs[-1]
    confidence = newest.get("config", {}).get("confidence", 0.95)
    figures = []
    for name in images:
        with open(os.path.join(out_dir, name), "rb") as f:
            data = base64.b64encode(f.read()).decode("ascii")
        figures.append(f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'
                       f"<figcaption>{html.escape(name)}</figcaption></figure>")
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>quark eval</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}figure{display:inline-block;margin:8px}"
        "</style></head><body>\n"
        f"<h1>Evaluation of {html.escape(str(newest.get('model_dir')))}</h1>\n"
        f"<p>Steps: {html.escape(', '.join(str(r.get('step')) for r in runs))}. Values with "
        f"{confidence:.0%} bootstrap confidence intervals.</p>\n"
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>\n"
        + "\n".join(figures) + "\n</body></html>\n"
    )


def write_report(results: dict | Sequence[dict], out_dir: str) -> dict[str, str]:
    """Writes the report files (module docstring) under ``out_dir``; returns {kind: path}."""
    runs = _as_list(results)
    os.makedirs(out_dir, exist_ok=True)
    written: dict[str, str] = {}

    def dump(name: str, payload: Any) -> str:
        path = os.path.join(out_dir, name)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2, default=float)
        return path

    several = len(runs) > 1
    written["results"] = dump("results.json", _without_samples(runs[0]) if not several
                              else {"checkpoints": [_without_samples(r) for r in runs]})
    for r in runs:
        if several:
            written[f"results_step{r.get('step')}"] = dump(f"results_step{r.get('step')}.json", r)
        prefix = f"step{r.get('step')}_" if several else ""
        for task, t in r["tasks"].items():
            path = os.path.join(out_dir, f"samples_{prefix}{_safe(task)}.jsonl")
            with open(path, "w", encoding="utf-8") as f:
                for record in t.get("samples", []):
                    f.write(json.dumps(record, default=float) + "\n")
            written[f"samples_{prefix}{task}"] = path

    images = []
    newest = runs[-1]
    for task in newest["tasks"]:
        name = f"bars_{_safe(task)}.png"
        _bars(newest, task, os.path.join(out_dir, name))
        images.append(name)
    if several:
        for task in newest["tasks"]:
            for metric in newest["tasks"][task]["metrics"]:
                name = f"curve_{_safe(task)}_{_safe(metric)}.png"
                _curve(runs, task, metric, os.path.join(out_dir, name))
                images.append(name)
    for name in images:
        written[name] = os.path.join(out_dir, name)

    md = [f"# Evaluation of {newest.get('model_dir')}\n",
          f"Steps: {', '.join(str(r.get('step')) for r in runs)}. Values with "
          f"{newest.get('config', {}).get('confidence', 0.95):.0%} bootstrap confidence intervals "
          f"([low, high]).\n", markdown_table(runs)]
    md += [f"![{name}]({name})\n" for name in images]
    with open(os.path.join(out_dir, "report.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(md))
    written["report.md"] = os.path.join(out_dir, "report.md")
    with open(os.path.join(out_dir, "report.html"), "w", encoding="utf-8") as f:
        f.write(_html(runs, images, out_dir))
    written["report.html"] = os.path.join(out_dir, "report.html")
    return written
