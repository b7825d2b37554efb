"""Metric sinks (JSONL, TensorBoard, a loss-curve PNG) and the in-process matmul peak used for MFU."""

from __future__ import annotations

import io
import json
import logging
import os
import time

import jax
import jax.numpy as jnp

from quark_jax import run_paths

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


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
    """Writes ``metrics.jsonl`` (one object per logged step) and TensorBoard summaries under ``model_dir``.

    In a local run directory lines are appended and flushed as they come. On an object store (no append) the
    whole object is rewritten, at most every ``upload_every_s`` seconds and on :meth:`close`; TensorBoard
    events are written to a local staging directory and their files copied up at the same moments, so the
    event writer never needs the store's credentials or file-system plugin."""

    def __init__(self, model_dir: str, resume_step: int = 0, tensorboard: bool = True,
                 upload_every_s: float = 30.0):
        self.path = run_paths.safe_path(model_dir, METRICS_FILE)
        self._file = self._tb = None
        self._remote = not run_paths.is_local(self.path)
        self._lines: list[str] = []
        self._tb_dir = run_paths.safe_path(model_dir, "tensorboard")
        self._tb_staging: str | None = None
        self._upload_every_s = upload_every_s
        self._uploaded = 0.0
        if jax.process_index() != 0:  # multi-host: every host computes the same metrics; one writes them
            return
        self._drop_after(resume_step)
        if not self._remote:
            self._file = open(self.path, "a")
        if tensorboard:
            from flax.metrics import tensorboard as flax_tb  # imports TensorFlow: keep it off the import path

            if self._remote:
                import tempfile

                self._tb_staging = tempfile.mkdtemp(prefix="quark-tensorboard-")
            self._tb = flax_tb.SummaryWriter(self._tb_staging or self._tb_dir)

    def _drop_after(self, step: int) -> None:
        """On resume, forget lines logged after the checkpoint: those steps are about to be re-run. A torn last
        line (the run died mid-write) is dropped with a warning. The file is replaced atomically."""
        if not run_paths.exists(self.path):
            return
        self._lines = [json.dumps(r) + "\n" for r in _parse_metrics(self.path) if r.get("step", 0) <= step]
        run_paths.write_text(self.path, "".join(self._lines))

    def write(self, step: int, values: dict[str, float]) -> None:
        if self._file is None and not (self._remote and jax.process_index() == 0):
            return
        record = {"step": int(step), **{k: float(v) for k, v in values.items()}}
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        else:
            self._lines.append(json.dumps(record) + "\n")
        if self._tb is not None:
            for name, value in values.items():
                self._tb.scalar(name, float(value), int(step))
        if self._remote and time.monotonic() - self._uploaded >= self._upload_every_s:
            self.upload()

    def upload(self) -> None:
        """On an object store: writes ``metrics.jsonl`` whole and copies the TensorBoard event files up."""
        if not self._remote or jax.process_index() != 0:
            return
        run_paths.write_text(self.path, "".join(self._lines))
        if self._tb is not None:
            self._tb.flush()
        if self._tb_staging is not None:
            for root, _, files in os.walk(self._tb_staging):
                for name in files:
                    local = os.path.join(root, name)
                    relative = os.path.relpath(local, self._tb_staging).replace(os.sep, "/")
                    run_paths.copy_file(local, run_paths.join(self._tb_dir, relative))
        self._uploaded = time.monotonic()

    def write_text(self, step: int, name: str, text: str) -> None:
        if self._tb is not None:
            self._tb.text(name, text, int(step))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
            self._tb = None
        self.upload()
        if self._tb_staging is not None:
            import shutil

            shutil.rmtree(self._tb_staging, ignore_errors=True)
            self._tb_staging = None


def _parse_metrics(path: str) -> list[dict]:
    """The records of a ``metrics.jsonl``; a torn last line (a crash mid-write) is left out with a warning, a
    damaged line before the end is a ``ValueError`` naming the file and line."""
    lines = run_paths.read_bytes(path).split(b"\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError(f"a JSON {type(record).__name__}, not an object")
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            if any(rest.strip() for rest in lines[number:]):
                raise ValueError(f"{path} line {number} is not a JSON object ({e}); the lines after it are "
                                 "intact, so this is not a torn last line: fix or delete that line") from None
            log.warning("%s: dropping its torn last line %d (a run stopped while writing it): %r", path, number,
                        line[:80])
            continue
        records.append(record)
    return records


def read_metrics(model_dir: str) -> list[dict]:
    """All records of ``metrics.jsonl``, in order (a torn last line left out, with a warning)."""
    return _parse_metrics(run_paths.safe_path(model_dir, METRICS_FILE))


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
    ax.set_title(run_paths.absolute(model_dir).rsplit("/", 1)[-1])
    ax.grid(alpha=0.3)
    ax.legend()
    path = run_paths.safe_path(model_dir, filename)
    fig.tight_layout()
    image = io.BytesIO()  # through run_paths, so that a gs:// run directory gets its curve too
    fig.savefig(image, format="png", dpi=100)
    plt.close(fig)
    run_paths.write_bytes(path, image.getvalue())
    return path
