"""Post-training objectives run by the same Trainer as pre-training (see ``base.py``).

Each is a gin-configurable dataclass bound to ``TrainConfig.objective`` by a ``configs/runs/*.gin`` file.
"""

from quark_jax.training.objectives.base import Objective, RunContext
from quark_jax.training.objectives.distill import Distill
from quark_jax.training.objectives.lora import LoRA

ALL = (Distill, LoRA)

__all__ = ["ALL", "Distill", "Objective", "RunContext"]
