"""A short recovery fine-tune of a pruned run, through the ordinary :class:`~quark_jax.training.trainer.Trainer`.

The pruned run (``runs.save_pruned``) is the warm start (``init_from``); the optimizer multiplies every update
by ``weight != 0`` (``OptimizerConfig.keep_zero_weights``), so the zeros of the pruning stay zero through
training and weight decay: the mask is kept during training, not re-applied afterwards. The result is a
normal training run whose ``pruning.json`` records the pruning and the sparsity measured after recovery.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from quark_jax import run_paths, runs
from quark_jax.training.config import CheckpointConfig, DataConfig, OptimizerConfig, TrainConfig

log = logging.getLogger(__name__)


def recovery_config(pruned_dir: str, out_dir: str, steps: int, learning_rate: float = 3e-4,
                    mixture_or_task_name: str = "stdlib", batch_size: int = 8, sequence_length: int | None = None,
                    eval_batches: int = 4, peak_flops_per_s: float | None = None) -> TrainConfig:
    """The :class:`TrainConfig` of a recovery run: the pruned run's model warm-started into ``out_dir``, language
    modelling on ``mixture_or_task_name`` for ``steps`` steps at ``learning_rate`` (a short warm-up, cosine
    decay), zero weights held at zero. ``sequence_length`` defaults to the run's trained context (else 256)."""
    pruned_dir = runs.resolve(pruned_dir, "pruned run")
    length = sequence_length or runs.read_run_info(pruned_dir).get("trained_context") or 256
    return TrainConfig(
        model_dir=out_dir,
        model=runs.read_model_config(pruned_dir),
        data=DataConfig(mixture_or_task_name=mixture_or_task_name, task_feature_lengths={"targets": int(length)},
                        batch_size=batch_size),
        optimizer=OptimizerConfig(learning_rate=learning_rate, warmup_steps=max(1, min(20, steps // 10)),
                                  keep_zero_weights=True),
        checkpoint=CheckpointConfig(period=steps, max_to_keep=1, async_save=False),
        steps=steps,
        init_from=pruned_dir,
        eval_every=0,
        eval_batches=eval_batches,
        sample_prompts=(),
        peak_flops_per_s=peak_flops_per_s,
        progress_bar=False,
    )


def recover(pruned_dir: str, out_dir: str, steps: int, **kwargs: Any) -> dict:
    """Fine-tunes the pruned run ``pruned_dir`` into the new run directory ``out_dir`` (see
    :func:`recovery_config` for ``kwargs``); returns the trainer's summary. ``pruning.json`` is carried over
    with ``recover_steps`` and the sparsity measured on the final checkpoint."""
    from quark_jax.inference import prune
    from quark_jax.training.trainer import Trainer

    if steps < 1:
        raise ValueError(f"recover steps={steps}: must be >= 1")
    config = recovery_config(pruned_dir, out_dir, steps, **kwargs)
    summary = Trainer(config).run()
    info = runs.read_pruning_info(config.init_from)
    measured = prune.sparsity_of(runs.load(out_dir).params)["total"]
    if measured + 1e-9 < info.get("measured_sparsity", 0.0):
        raise RuntimeError(f"recovery lost sparsity: {measured:.4f} zeros after, "
                           f"{info['measured_sparsity']:.4f} before (is keep_zero_weights on?)")
    runs.write_pruning_info(out_dir, {**info, "recover_steps": steps, "measured_sparsity": measured,
                                      "recover_learning_rate": config.optimizer.learning_rate,
                                      "recover_data": config.data.mixture_or_task_name})
    return summary


def prune_and_recover(run_dir: str, out_dir: str, sparsity: float, method: str = "magnitude", scope: str = "layer",
                      recover_steps: int = 0, step: int | None = None, **kwargs: Any) -> str:
    """One-shot pruning (``runs.save_pruned``), then, with ``recover_steps``, a recovery fine-tune of it into
    ``out_dir`` (the one-shot run is built in a temporary directory beside ``out_dir`` and removed)."""
    if not recover_steps:
        return runs.save_pruned(run_dir, out_dir, sparsity, method, scope, step)
    out_dir = run_paths.absolute(out_dir)
    if run_paths.exists(out_dir) and run_paths.listdir(out_dir):
        raise runs.RunDirError(f"--out {out_dir} is not empty; write the pruned run to a new directory")
    if not run_paths.is_local(out_dir):
        staging = out_dir.rstrip("/") + ".one_shot"
    else:
        import tempfile

        parent = os.path.dirname(out_dir)
        os.makedirs(parent, exist_ok=True)
        staging = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(out_dir)}.one_shot-")
        os.rmdir(staging)  # save_pruned renames its own temporary directory onto this name
    try:
        runs.save_pruned(run_dir, staging, sparsity, method, scope, step)
        recover(staging, out_dir, recover_steps, **kwargs)
    finally:
        run_paths.rmtree(staging)
    return out_dir
