"""Metric sinks (JSONL, TensorBoard, a loss-curve PNG) and the in-process matmul peak used for MFU."""

from __future__ import annotations

import json
import logging
import os
import time

import jax
import jax.numpy as jnp

log = logging.getLogger(__name__)


def measure_matmul_flops(size: int = 2048, dtype=jnp.float32, repeats: int = 10) -> float:
    """FLOP/s of a ``size``² matmul on the default device, measured now, in this process.

    MFU on a CPU is reported against this measured peak rather than a datasheet figure, so the ratio
    compares like with like on whatever machine runs it. Takes the best of ``repeats`` timings.
    """
    a = jax.random.normal(jax.random.key(0), (size, size), dtype)
    b = jax.random.normal(jax.random.key(1), (size, size), dtype)
    matmul = jax.jit(jnp.matmul)
    matmul(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


class MetricsWriter:
    """Writes ``metrics.jsonl`` (one object per logged step) and TensorBoard summaries under ``model_dir``."""

    def __init__(self, model_dir: str, resume_step: int = 0, tensorboard: bool = True):
        self.path = os.path.join(model_dir, "metrics.jsonl")
        self._file = self._tb = None
        if jax.process_index() != 0:  # multi-host: every host computes the same metrics; one writes them
            return
        self._drop_after(resume_step)
        self._file = open(self.path, "a")
        if tensorboard:
            from flax.metrics import tensorboard as flax_tb  # imports TensorFlow: keep it off the import path

            self._tb = flax_tb.SummaryWriter(os.path.join(model_dir, "tensorboard"))

    def _drop_after(self, step: int) -> None:
        """On resume, forget lines logged after the checkpoint: those steps are about to be re-run."""
        if not os.path.exists(self.path):
            return
        with open(self.path) as f:
            kept = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= step]
        with open(self.path, "w") as f:
            f.writelines(kept)

    def write(self, step: int, values: dict[str, float]) -> None:
        if self._file is None:
            return
        record = {"step": int(step), **{k: float(v) for k, v in values.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for name, value in values.items():
                self._tb.scalar(name, float(value), int(step))

    def write_text(self, step: int, name: str, text: str) -> None:
        if self._tb is not None:
            self._tb.text(name, text, int(step))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()


def read_metrics(model_dir: str) -> list[dict]:
    """All records of ``metrics.jsonl``, in order."""
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def ema(values, span: int = 20) -> list[float]:
    """Exponential moving average with the weight of a ``span``-point window, bias-corrected at the start."""
    alpha, average, weight, out = 2.0 / (span + 1), 0.0, 0.0, []
    for v in values:
        average = (1 - alpha) * average + alpha * v
        weight = (1 - alpha) * weight + alpha
        out.append(average / weight)
    return out


def plot_loss_curve(model_dir: str, filename: str = "loss_curve.png") -> str | None:
    """Draws the training loss -- each logged batch faintly, and an exponential moving average over them --
    and the validation loss (from step 0 where it was measured) against step into ``model_dir/filename``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(model_dir)
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    if not train:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    steps, losses = zip(*train)
    ax.plot(steps, losses, color="tab:blue", alpha=0.25, linewidth=0.8, label="train loss (per batch)")
    ax.plot(steps, ema(losses), color="tab:blue", label="train loss (moving average)")
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(os.path.basename(os.path.abspath(model_dir)))
    ax.grid(alpha=0.3)
    ax.legend()
    path = os.path.join(model_dir, filename)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
