"""Post-training objectives run by the same Trainer as pre-training (see ``base.py``).

Each is a gin-configurable dataclass bound to ``TrainConfig.objective`` by a ``configs/runs/*.gin`` file.
"""

from quark_jax.training.objectives.base import Objective, RunContext
from quark_jax.training.objectives.distill import Distill
from quark_jax.training.objectives.ppo import PPO
from quark_jax.training.objectives.dpo import DPO
from quark_jax.training.objectives.reward import RewardModel
from quark_jax.training.objectives.lora import LoRA

ALL = (Distill, LoRA, RewardModel, DPO, PPO)

__all__ = ["ALL", "Distill", "PPO", "Objective", "RunContext", "DPO", "RewardModel"]
