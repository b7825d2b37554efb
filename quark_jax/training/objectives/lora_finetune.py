"""LoRA: language-model fine-tuning (finetune.gin, sft.gin) of low-rank adapters on a frozen base model.

A switch on the existing runs (``configs/runs/lora.gin``): the base is ``TrainConfig.init_from`` (or
``LoRA.base_dir``), loaded sharded on the run's mesh and passed to the step as a frozen input; the trainable
tree — what the optimizer updates and the checkpoints hold — is only the adapter tree of
:mod:`quark_jax.models.lora`. The loss is the usual token-weighted cross-entropy (+ z-loss, + MoE auxiliary
losses) of the base with the adapters applied unmerged, so data, evaluation, resume and metrics are those of
a plain fine-tuning run. ``objective.json`` records the base directory, rank, alpha and targets:
``qj.load(run_dir)`` loads the base and merges the adapters.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax

from quark_jax.models import lora
from quark_jax import run_paths, runs
from quark_jax.training.objectives.base import Objective, RunContext, lm_batches, lm_validation
from quark_jax.training.objectives.lm import lm_loss


@dataclasses.dataclass
class LoRA(Objective):
    """Train rank-``rank`` adapters (scale ``alpha / rank``) on the ``targets`` weights of a frozen base run."""

    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = lora.DEFAULT_TARGETS  # regexes fully matching dotted paths (blocks.attn.wq)
    base_dir: str | None = None  # the frozen base run; None = TrainConfig.init_from

    kind: ClassVar[str] = "lora"

    def __post_init__(self):
        self.lora = lora.LoRAConfig(self.rank, self.alpha, self.targets)

    def setup(self, run: RunContext) -> None:
        super().setup(run)
        base = self.base_dir or run.config.init_from
        if not base:
            raise ValueError("LoRA needs a base run: set INIT_FROM (TrainConfig.init_from) or LoRA.base_dir")
        self.resolved_base_dir = run_paths.absolute(runs.resolve(base, "LoRA base"))
        config, _, params, shardings = run.load_run(self.resolved_base_dir, "LoRA base")
        ours, theirs = dataclasses.asdict(run.model_config), dataclasses.asdict(config)
        changed = {k: (theirs.get(k), v) for k, v in ours.items() if theirs.get(k) != v}
        if changed:
            raise ValueError(f"the LoRA base {self.resolved_base_dir} has another model config than this run ("
                             + ", ".join(f"{k}: {a!r} there, {b!r} here" for k, (a, b) in changed.items())
                             + "); add the base's configs/models/*.gin after the run's gin files")
        lora.target_paths(params, self.lora)  # fail now, naming a target that matches nothing
        self._frozen = ({"base": params}, {"base": shardings})

    # ---- parameters ------------------------------------------------------------------------------
    def warm_start(self) -> bool:
        return False  # init_from is the frozen base, not a source for the trainable (adapter) tree

    def init_params(self, model_params: Any, key: jax.Array) -> Any:
        return lora.init_adapters(model_params, self.lora, key)

    def _abstract_adapters(self) -> Any:
        return jax.eval_shape(lambda p: lora.init_adapters(p, self.lora, jax.random.key(0)), self._frozen[0]["base"])

    def param_shardings(self, model_shardings: Any) -> Any:
        return lora.adapter_shardings(self._abstract_adapters(), model_shardings)

    def decay_mask(self, model_mask: Any) -> Any:
        # Adapters take OptimizerConfig.weight_decay like matrices do (sft.gin sets it to 0).
        return jax.tree.map(lambda _: True, self._abstract_adapters())

    def frozen(self) -> tuple[Any, Any]:
        return self._frozen

    def model_params(self, params: Any, frozen: Any) -> Any:
        return lora.merge(frozen["base"], params, self.lora)

    def objective_info(self) -> dict:
        return {"kind": self.kind, "base_dir": self.resolved_base_dir, **self.lora.to_dict()}

    # ---- data and loss ---------------------------------------------------------------------------
    def batches(self, split, start_batch, shuffle, repeat=True):
        return lm_batches(self.run, split, start_batch, shuffle, repeat)

    def loss(self, params, frozen, batch):
        return lm_loss(self.run, lora.apply(frozen["base"], params, self.lora), batch)

    def evaluate(self, params, frozen):
        return lm_validation(self.run, lora.apply(frozen["base"], params, self.lora))
