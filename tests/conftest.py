"""Shared fixtures: the tiny test run (trained once per session) and helpers for `quark` subprocesses."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_CONFIG = os.path.join(REPO, "configs", "runs", "tiny_base.gin")

# One persistent XLA compilation cache for the whole session (this process and its subprocesses):
# the killed, resumed and unbroken runs of the resume test compile the same step once.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(REPO, ".cache", "jax_test_compilation"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
# The parsed standard-library corpus (quark_jax.data.corpus), read by every training process.
os.environ.setdefault("QUARK_CACHE_DIR", os.path.join(REPO, ".cache", "quark_test_cache"))

# The slowest test files (real multi-process runs, sharded runs, kill-and-resume) start first, so that with two
# workers (scripts/test.sh runs pytest-xdist, one file per worker) no long file is left alone at the end.
SLOW_FIRST = (
    "tests/plan/test_pod_configs.py", "tests/training/test_cloud_run_dir.py", "tests/inference/test_hf_import.py",
    "tests/sharding/test_objectives_sharded.py", "tests/moe/test_multihost.py", "tests/training/test_run_writers.py",
    "tests/training/test_resume.py", "tests/moe/test_parallelism.py", "tests/sharding/test_sharding.py",
    "tests/training/test_distill.py", "tests/moe/test_moe_train.py", "tests/serving/test_lm_eval.py",
    "tests/serving/test_chat_page.py", "tests/evaluation/test_baseline_gate.py", "tests/evaluation/test_harness.py",
    "tests/evaluation/test_periodic_eval.py", "tests/evaluation/test_lm_eval_interop.py",
    "tests/serving/test_serving.py", "tests/tuning/test_tune.py", "tests/inference/test_speculative.py",
    "tests/training/test_init_transforms.py", "tests/agents/test_agent_backends.py",
    "tests/inference/test_constrained.py", "tests/registry/test_improve_loop.py",
    "tests/serving/test_engine_speculative.py", "tests/training/test_distill_samples.py",
    "tests/tuning/test_time_budget.py", "tests/tuning/test_postgres_storage.py",
)


def pytest_collection_modifyitems(config, items):
    def rank(item):
        path = os.path.relpath(str(item.path), REPO)
        return SLOW_FIRST.index(path) if path in SLOW_FIRST else len(SLOW_FIRST)

    items.sort(key=rank)  # stable: the order inside a file and among the other files is kept


def tiny_overrides(model_dir: str, steps: int, **extra) -> list[str]:
    """gin bindings for a short run of the tiny model on 128-token sequences (a few seconds to compile)."""
    bindings = {
        "MODEL_DIR": repr(str(model_dir)),
        "TRAIN_STEPS": steps,
        "TASK_FEATURE_LENGTHS": "{'targets': 128}",
        "BATCH_SIZE": 8,
        "CHECKPOINT_PERIOD": 10,
        "quark_jax.OptimizerConfig.warmup_steps": 5,
        "quark_jax.TrainConfig.log_every": 1,
        "quark_jax.TrainConfig.eval_every": 0,
        "quark_jax.TrainConfig.eval_batches": 2,
        "quark_jax.TrainConfig.sample_max_new_tokens": 8,
        "quark_jax.TrainConfig.peak_flops_per_s": 1e11,  # skip the start-up matmul measurement
        "quark_jax.TrainConfig.progress_bar": False,
    }
    bindings.update(extra)
    return [f"{k}={v}" for k, v in bindings.items()]


def quark_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "quark_jax.cli", *args]


def run_quark(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Runs the ``quark`` CLI in a fresh process from the repository root."""
    return subprocess.run(
        quark_command(*args), cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True, text=True,
        timeout=timeout,
    )


def train_args(bindings: list[str]) -> list[str]:
    return ["train", f"--gin_file={RUN_CONFIG}", *[f"--gin.{b}" for b in bindings]]


def read_metrics(model_dir) -> list[dict]:
    """The records of ``model_dir/metrics.jsonl`` (a local path or a ``gs://`` URL)."""
    from etils import epath

    text = (epath.Path(str(model_dir)) / "metrics.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def train_losses(model_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(model_dir) if "loss" in r}


def committed_steps(model_dir) -> list[int]:
    """The steps whose orbax checkpoint committed (``commit_success.txt`` present), ascending; ``model_dir`` is
    a local path or a ``gs://`` URL."""
    from etils import epath

    directory = epath.Path(str(model_dir)) / "checkpoints"
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir()
                  if p.name.isdigit() and (p / "commit_success.txt").exists())


def copy_without_newest_checkpoint(model_dir, copy_to) -> int:
    """Copies a finished run as the run killed before its newest checkpoint was committed; returns the step
    it resumes from."""
    shutil.copytree(model_dir, copy_to)
    steps = sorted(int(n) for n in os.listdir(os.path.join(copy_to, "checkpoints")) if n.isdigit())
    shutil.rmtree(os.path.join(copy_to, "checkpoints", str(steps[-1])))
    return steps[-2]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """The tiny model trained for 40 steps through ``qj.Trainer``, shared by many tests: trained once per test
    session by the first pytest-xdist worker that needs it (under a file lock), and reused by the others.
    Tests only read it; one that writes copies it first. ``summary`` is the run's ``summary.json``."""
    import fcntl

    import quark_jax as qj

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session directory all workers share
    model_dir = root / "tiny_run"
    with open(root / "tiny_run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if training fails
        if not (model_dir / "summary.json").exists():
            shutil.rmtree(model_dir, ignore_errors=True)  # what a failed attempt of another worker left
            trainer = qj.Trainer.from_gin(
                RUN_CONFIG,
                tiny_overrides(model_dir, 40, **{"quark_jax.TrainConfig.eval_every": 20, "CHECKPOINT_PERIOD": 20}),
            )
            trainer.run()
    summary = json.loads((model_dir / "summary.json").read_text())
    return {"model_dir": str(model_dir), "summary": summary}


def assert_greedy_completion(model, prompt: str, completion, max_new_tokens: int) -> None:
    """Checks a greedy ``Completion`` of ``prompt`` from a loaded model (``qj.load``) against one full forward
    pass of the model, without the KV cache or the compiled decode loop: every new token is the arg-max of the
    logits at the position before it (up to float noise), its log-probability is the log-softmax there, a row
    that stopped early stopped on EOS being the arg-max, and the text is the decoded tokens."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    generator = model.generator
    prompt_ids = list(model.tokenizer.encode(prompt))
    new = list(completion.tokens)
    assert len(new) <= max_new_tokens and len(completion.logprobs) == len(new)
    assert completion.text == model.tokenizer.decode(new)
    ended_on_eos = len(new) < max_new_tokens
    assert completion.finish_reason == ("eos" if ended_on_eos else "length")
    sequence = prompt_ids + new + ([generator.eos_id] if ended_on_eos else [])
    tokens = jnp.asarray([sequence], jnp.int32)
    positions = jnp.arange(len(sequence), dtype=jnp.int32)[None]
    logits, _ = nnx.merge(model.graphdef, model.params)(tokens, positions, jnp.ones_like(tokens))
    logprobs = np.asarray(jax.nn.log_softmax(logits[0].astype(jnp.float32), axis=-1))
    for i, token in enumerate(sequence[len(prompt_ids):]):
        row = logprobs[len(prompt_ids) + i - 1]
        assert row[token] >= row.max() - 1e-4, (i, token, int(row.argmax()))
        if i < len(new):
            assert abs(row[token] - completion.logprobs[i]) < 1e-3, (i, row[token], completion.logprobs[i])


@contextlib.contextmanager
def serve_app(app, ready_path: str = "/health", timeout_s: float = 30.0):
    """An ASGI app (the FastAPI server) served by uvicorn on a free loopback port in a daemon thread: yields its
    base URL once ``GET ready_path`` answers 200, and stops the server on exit."""
    import httpx2 as httpx  # the openai client's HTTP library
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + ready_path).status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)
