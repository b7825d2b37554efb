"""What a run trains: language modelling (the default) and the post-training objectives (see ``base.py``).

Each is a gin-configurable dataclass bound to ``TrainConfig.objective`` by a ``configs/runs/*.gin`` file.
"""

from quark_jax.training.objectives.base import Objective, RunContext
from quark_jax.training.objectives.distill import Distill
from quark_jax.training.objectives.ppo import PPO
from quark_jax.training.objectives.dpo import DPO
from quark_jax.training.objectives.reward import RewardModel
from quark_jax.training.objectives.lora_finetune import LoRA
from quark_jax.training.objectives.lm import LanguageModel
from quark_jax.training.objectives.contrastive import ContrastiveEmbedding
from quark_jax.training.objectives.classify import SequenceClassifier

ALL = (LanguageModel, Distill, LoRA, RewardModel, DPO, PPO, ContrastiveEmbedding, SequenceClassifier)

__all__ = ["ALL", "LanguageModel", "LoRA", "Distill", "PPO", "Objective", "RunContext", "DPO", "RewardModel",
           "ContrastiveEmbedding", "SequenceClassifier"]
