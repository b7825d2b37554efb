"""Validation loss and perplexity of a trained run on a seqio task or mixture."""

from __future__ import annotations

from typing import Any

import jax

from quark_jax.training.losses import evaluate_lm, make_eval_step


def perplexity(
    model: Any,
    mixture_or_task_name: str = "stdlib",
    split: str = "validation",
    sequence_length: int = 256,
    batch_size: int = 8,
    max_batches: int = 0,
    progress_bar: bool = True,
) -> dict[str, float]:
    """Token-weighted loss, perplexity and next-token accuracy of ``model`` (a ``qj.load`` result).

    Reads the split once, in order (no shuffling), packed exactly as in training; ``max_batches=0``
    covers the whole split. Returns ``loss``, ``perplexity``, ``accuracy``, ``tokens`` and ``batches``.
    """
    from quark_jax.data import pipeline

    eval_step = jax.jit(make_eval_step(model.graphdef))
    batches = pipeline.batch_iterator(
        mixture_or_task_name, {"targets": sequence_length}, batch_size, split=split, shuffle=False, repeat=False
    )
    progress = None
    if progress_bar:
        from tqdm.auto import tqdm

        progress = tqdm(desc=f"eval {mixture_or_task_name}/{split}", unit="batch", total=max_batches or None)
    try:
        result = evaluate_lm(eval_step, model.params, batches, max_batches, progress)
    finally:
        if progress is not None:
            progress.close()
    if result["tokens"] == 0:
        raise ValueError(f"{mixture_or_task_name!r} split {split!r} produced no tokens to evaluate")
    return result
