"""The base-then-SFT training the chat benches share (bench/rag.py, bench/agent_arithmetic.py): a tiny model
pre-trained here (or ``init_from`` an existing run), then fine-tuned with configs/runs/sft.gin on a chat task
already registered under ``task``. Quiet (no progress bar, no samples, no periodic evaluation)."""

from __future__ import annotations

import os
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train(gin_file: str, model_dir: str, steps: int, extra: list[str], sequence: int) -> None:
    """One quiet Trainer run of ``gin_file`` (relative to the repository) for ``steps`` steps."""
    import quark_jax as qj

    overrides = [f"MODEL_DIR={model_dir!r}", f"TRAIN_STEPS={steps}", f"TASK_FEATURE_LENGTHS={{'targets': {sequence}}}",
                 f"CHECKPOINT_PERIOD={steps}", "quark_jax.TrainConfig.eval_every=0",
                 "quark_jax.TrainConfig.sample_prompts=()", "quark_jax.TrainConfig.progress_bar=False", *extra]
    qj.Trainer.from_gin(os.path.join(REPO, gin_file), overrides).run()


def pretrain_then_sft(work: str, init_from: str | None, pretrain_steps: int, sft_steps: int, task: str,
                      sequence: int, timings: dict) -> str:
    """The SFT run's directory under ``work``; ``timings`` gains ``pretrain_s`` and ``sft_s``."""
    t = time.perf_counter()
    base = init_from
    if base is None:
        base = os.path.join(work, "pretrain")
        train("configs/runs/tiny_base.gin", base, pretrain_steps, [], sequence)
    timings["pretrain_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    sft_dir = os.path.join(work, "sft")
    train("configs/runs/sft.gin", sft_dir, sft_steps, [f"INIT_FROM={base!r}", f"MIXTURE_OR_TASK_NAME={task!r}"],
          sequence)
    timings["sft_s"] = round(time.perf_counter() - t, 1)
    return sft_dir
