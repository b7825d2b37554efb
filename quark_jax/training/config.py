"""The dataclasses that describe a run, bound by gin (``configs/runs/*.gin``): a leaf module.

``TrainConfig`` holds the whole run: the model (``ModelConfig``), data, optimizer, checkpoints and the
objective. Nothing here imports the training loop, so gin registration, the CLI and the planner can read
configs without pulling in the trainer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from quark_jax.models.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """Optimizer and schedule hyper-parameters (bound in gin)."""

    learning_rate: float = 3e-3
    warmup_steps: int = 50
    decay_steps: int | None = None  # None: decay over the whole run
    end_learning_rate_ratio: float = 0.1
    weight_decay: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    clip_norm: float | None = 1.0
    grad_accum_steps: int = 1
    # Zero weights stay zero: every update is multiplied by (weight != 0), so a pruned model's recovery
    # fine-tune keeps its sparsity pattern (quark prune --recover_steps; configs/runs/prune_recover.gin).
    keep_zero_weights: bool = False

    def __post_init__(self):
        if self.grad_accum_steps < 1:
            raise ValueError(f"OptimizerConfig.grad_accum_steps={self.grad_accum_steps} must be >= 1")
        if self.learning_rate <= 0:
            raise ValueError(f"OptimizerConfig.learning_rate={self.learning_rate} must be > 0")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which seqio task or mixture feeds the run, and how it is batched."""

    mixture_or_task_name: str = "stdlib"
    task_feature_lengths: Mapping[str, int] = dataclasses.field(default_factory=lambda: {"targets": 256})
    batch_size: int = 8  # global batch, in packed sequences
    eval_split: str = "validation"
    shuffle: bool = True


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """How often checkpoints are written and how many are kept."""

    period: int = 100
    max_to_keep: int = 3
    async_save: bool = True


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A whole run. Bound in gin by ``configs/runs/*.gin``; see ``configs/runs/pretrain.gin``."""

    model_dir: str
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    steps: int = 1000
    seed: int = 0
    mesh_shape: str = "data=-1"
    z_loss: float = 1e-4
    log_every: int = 10
    eval_every: int = 100  # 0 disables periodic evaluation (the final one still runs if eval_batches > 0)
    eval_batches: int = 4
    # Evaluation suites (quark_jax.evaluation: built-in task names or task YAML paths) run every
    # eval_tasks_every steps (0: never) on the first eval_tasks_limit examples of each task; each figure goes to
    # metrics.jsonl and TensorBoard as eval/<task>/<metric>.
    eval_tasks: Sequence[str] = ()
    eval_tasks_every: int = 0
    eval_tasks_limit: int = 32
    sample_prompts: Sequence[str] = ("def ", "import os\n", "class ")
    sample_max_new_tokens: int = 32
    on_nonfinite: str = "stop"  # "stop": raise naming the step; "skip": drop that update and go on
    # With on_nonfinite='skip': this many skipped updates in a row stop the run (NonFiniteLossError): a run
    # whose every update is NaN is broken, not unlucky.
    max_consecutive_skips: int = 10
    # The run directory's writer lease (training/run_lock.py): a lease whose heartbeat is older than this many
    # seconds is stale and is taken over by the next writer.
    lease_stale_after_s: float = 60.0
    # Warm start: a run directory (or its checkpoints/) whose newest parameters initialise this run when it
    # has no checkpoint of its own. The optimizer starts fresh; parameters the source lacks keep their
    # initialisation; a shape mismatch is an error naming every mismatching parameter.
    init_from: str | None = None
    # An architecture upgrade applied to the init_from parameters (quark_jax.training.init_transforms):
    # 'upcycle' (dense -> MoE, experts copied from the MLP) or 'grow_depth' (more layers, new ones identity).
    init_transform: str | None = None
    # What the run optimises (quark_jax.training.objectives: LanguageModel, Distill, RewardModel, DPO, PPO,
    # LoRA); None is the language-modelling objective of pre-training and fine-tuning.
    objective: Any = None
    peak_flops_per_s: float | None = None  # per device; None measures a 2048² matmul at start-up
    progress_bar: bool = True

    def __post_init__(self):
        if not isinstance(self.model_dir, str):
            raise ValueError("MODEL_DIR is not set: pass e.g. --gin.MODEL_DIR=\"'/tmp/run'\"")
        if not isinstance(self.steps, int):
            raise ValueError("TRAIN_STEPS is not set (or not an integer): pass e.g. --gin.TRAIN_STEPS=1000")
        if self.on_nonfinite not in ("stop", "skip"):
            raise ValueError(f"TrainConfig.on_nonfinite={self.on_nonfinite!r} must be 'stop' or 'skip'")
        if self.max_consecutive_skips < 1:
            raise ValueError(f"TrainConfig.max_consecutive_skips={self.max_consecutive_skips} must be >= 1")
        if self.lease_stale_after_s <= 0:
            raise ValueError(f"TrainConfig.lease_stale_after_s={self.lease_stale_after_s} must be > 0")
        if self.steps < 1:
            raise ValueError(f"TrainConfig.steps={self.steps} must be >= 1")
        if isinstance(self.eval_tasks, str):  # "a,b" or a list of names / YAML paths
            object.__setattr__(self, "eval_tasks", tuple(t.strip() for t in self.eval_tasks.split(",") if t.strip()))
        else:
            object.__setattr__(self, "eval_tasks", tuple(self.eval_tasks))
        if self.eval_tasks_every < 0 or self.eval_tasks_limit < 1:
            raise ValueError(f"TrainConfig.eval_tasks_every={self.eval_tasks_every} must be >= 0 and "
                             f"eval_tasks_limit={self.eval_tasks_limit} >= 1")
        if self.init_transform is not None and not self.init_from:
            raise ValueError(f"TrainConfig.init_transform={self.init_transform!r} needs INIT_FROM (the run to upgrade)")
        if not self.model_dir:
            raise ValueError("TrainConfig.model_dir is empty: set MODEL_DIR, e.g. --gin.MODEL_DIR=\"'/tmp/run'\"")
