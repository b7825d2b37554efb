"""Validation loss and perplexity of a trained run on a seqio task or mixture."""

from __future__ import annotations

import math
from typing import Any

import jax

from quark_jax.training.steps import make_eval_step


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
    nll = correct = weight = 0.0
    count = 0
    for batch in batches:
        sums = jax.device_get(eval_step(model.params, batch))
        nll, correct, weight = nll + float(sums["nll_sum"]), correct + float(sums["correct_sum"]), weight + float(sums["weight_sum"])
        count += 1
        if progress is not None:
            progress.update(1)
        if max_batches and count >= max_batches:
            break
    if progress is not None:
        progress.close()
    if weight == 0:
        raise ValueError(f"{mixture_or_task_name!r} split {split!r} produced no tokens to evaluate")
    loss = nll / weight
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "accuracy": correct / weight,
            "tokens": weight, "batches": count}
