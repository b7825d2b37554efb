"""``quark improve``: server feedback → preference pairs → a short DPO run → the regression gate → promote.

    quark improve --feedback LOG_DIR/feedback.jsonl --base RUN --out DIR --baseline evals/baselines/B.json \\
        [--stage production] [--steps 20] [--gin.NAME=VALUE ...]

1. ``DIR/pairs``: :func:`quark_jax.serving.feedback.feedback_to_pairs_main` (what ``quark data feedback``
   does), with ``source.json`` naming the feedback file and its SHA-256;
2. ``DIR/dpo``: ``configs/runs/dpo.gin`` warm-started from and referenced against ``--base``, with the base's
   own model config (its ``model_config.json`` as ``ModelConfig`` bindings) and the pairs as
   ``PREFERENCES_DIR``; its ``lineage.json`` names the base (init_from, reference) and the pairs' and the
   feedback file's hashes;
3. the base and the DPO run are registered in the ledger; the DPO run is gated against ``--baseline`` and
   promoted to ``--stage``, or rejected (:class:`~quark_jax.registry.promote.PromotionRefused`).

The same as commands: ``quark data feedback``, ``quark train --gin_file=configs/runs/dpo.gin ...``,
``quark runs promote``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from quark_jax import run_paths
from quark_jax.registry import promote as promotion
from quark_jax.registry.ledger import Ledger

DPO_CONFIG = os.path.join("configs", "runs", "dpo.gin")


def model_bindings(base: str) -> list[str]:
    """``quark_jax.ModelConfig.FIELD=VALUE`` bindings reproducing the base run's ``model_config.json``."""
    from quark_jax import runs

    config = json.loads(run_paths.read_text(run_paths.safe_path(base, runs.MODEL_CONFIG_FILE)))
    return [f"quark_jax.ModelConfig.{name}={value!r}" for name, value in sorted(config.items())]


def dpo_bindings(base: str, pairs_dir: str, dpo_dir: str, steps: int, has_validation: bool) -> list[str]:
    """The bindings of the DPO run (before the user's own, which override them)."""
    bindings = [*model_bindings(base), f"INIT_FROM={base!r}", f"MODEL_DIR={dpo_dir!r}",
                f"PREFERENCES_DIR={pairs_dir!r}", f"TRAIN_STEPS={steps}", f"CHECKPOINT_PERIOD={steps}"]
    if not has_validation:  # a single prompt: every pair is training data
        bindings.append("quark_jax.TrainConfig.eval_every=0")
        bindings.append("quark_jax.TrainConfig.eval_batches=0")
    return bindings


def improve(feedback: str, base: str, out: str, baseline: str, ledger: Ledger, stage: str = "production",
            steps: int = 20, bindings: Sequence[str] = (), tasks: str | None = None, limit: int | None = None,
            validation_fraction: float = 0.1, seed: int = 0, batch_size: int = 16) -> dict:
    """Runs the loop (module docstring); returns ``{"pairs", "dpo", "promoted": event}``. Raises
    :class:`PromotionRefused` when the gate fails (the ledger then holds ``rejected``), ValueError for bad
    feedback, gin configuration errors from the trainer."""
    from quark_jax import gin_utils
    from quark_jax.serving import feedback as feedback_lib
    from quark_jax.training.trainer import Trainer

    if steps < 1:
        raise ValueError(f"--steps={steps}: must be >= 1")
    base = promotion.run_dir_of(base)
    ledger.verify()
    promotion.register(base, ledger)
    out = os.path.abspath(out)
    pairs_dir, dpo_dir = os.path.join(out, "pairs"), os.path.join(out, "dpo")
    feedback_lib.feedback_to_pairs_main(feedback, pairs_dir, validation_fraction, seed)
    has_validation = os.path.getsize(os.path.join(pairs_dir, "validation.jsonl")) > 0
    config = os.path.join(gin_utils.REPO_ROOT, DPO_CONFIG)
    trainer = Trainer.from_gin(config, [*dpo_bindings(base, pairs_dir, dpo_dir, steps, has_validation), *bindings])
    trainer.run()
    promotion.register(dpo_dir, ledger)
    promoted = promotion.promote(dpo_dir, stage, ledger, baseline, tasks, limit, seed, batch_size)
    return {"pairs": pairs_dir, "dpo": dpo_dir, "promoted": promoted}
