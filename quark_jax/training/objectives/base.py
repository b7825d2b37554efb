"""What a post-training objective is: its data, its trainable and frozen parameters, its loss.

Every run trains an :class:`Objective`: language modelling (``lm.py``: pre-training, fine-tuning, SFT; what
``TrainConfig.objective = None`` means) or a post-training objective bound in gin
(``configs/runs/{distill,reward,dpo,ppo}.gin``, LoRA as a switch on finetune/sft). The one
:class:`~quark_jax.training.trainer.Trainer` runs them all through :func:`quark_jax.training.sharded.build`:
same mesh and sharding rules, optimizer, orbax checkpoints, metrics, progress bar, SIGTERM handling and exact
resume.

An objective sees the run through a :class:`RunContext` (the model, the mesh, the vocabulary and a loader for
other runs' parameters) and supplies:

* ``init_params(model_params, key)`` → the trainable tree (the model's parameters, possibly with extra heads
  under ``"heads"``, or only LoRA adapters), with ``param_shardings`` and ``decay_mask`` for the same tree;
* ``frozen()`` → ``(tree, shardings)`` of parameters it reads but never updates (a teacher, a reference model);
* ``loss(params, frozen, batch)`` → ``(scalar, metrics)``, a pure function differentiated w.r.t. ``params``;
* ``batches(split, start_batch, shuffle)`` → numpy batches; ``prepare`` may turn one into the step's input on
  the host (PPO's rollouts through the compiled generate function);
* ``evaluate(params, frozen)`` → held-out metrics; ``model_params(params, frozen)`` → plain model parameters
  (for sample generations and ``qj.load``).

The step is jitted once with explicit shardings for all three inputs; state is donated.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from quark_jax import runs
from quark_jax import sharding as sh
from quark_jax.models.config import ModelConfig

Batch = dict[str, jax.Array]


@dataclasses.dataclass
class RunContext:
    """What an objective may use of the run: config, mesh, model, vocabulary and parameter loading."""

    config: Any  # TrainConfig
    mesh: jax.sharding.Mesh
    graphdef: nnx.GraphDef
    param_shardings: Any  # of the model's parameters (pure dict)
    decay_mask: Any  # of the model's parameters (pure dict)
    vocabulary: Any

    @property
    def model_config(self) -> ModelConfig:
        return self.config.model

    def load_run(self, run_dir: str, what: str, with_heads: bool = False) -> tuple[ModelConfig, nnx.GraphDef, Any, Any]:
        """``(config, graphdef, params, shardings)`` of another run's newest checkpoint, sharded on this run's
        mesh with the same logical rules (:func:`quark_jax.runs.load_sharded`); ``what`` names the role
        (``"teacher"`` ...) in errors."""
        return runs.load_sharded(run_dir, self.mesh, what, with_heads)


def split_heads(params: Mapping[str, Any]) -> tuple[dict, dict]:
    """(transformer parameters, extra heads) of a trainable tree that may carry ``"heads"``."""
    params = dict(params)
    heads = params.pop("heads", {})
    return params, heads


def token_logprobs(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """log p(target) per position, in float32: ``[B, T, V], [B, T] -> [B, T]``."""
    logits = logits.astype(jnp.float32)
    return jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0] - jax.nn.logsumexp(logits, axis=-1)


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of ``x`` over the positions (or rows) where ``mask`` is 1; 0 when there are none."""
    return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def moe_loss(run: RunContext, aux: Mapping[str, jax.Array]) -> jax.Array | float:
    """The weighted MoE load-balancing and router z-losses of a model's auxiliary values (0 for a dense model)."""
    if not aux:
        return 0.0
    cfg = run.model_config
    return cfg.load_balance_loss_weight * aux["load_balance_loss"] + cfg.router_z_loss_weight * aux["router_z_loss"]


def add_moe_loss(run: RunContext, total: jax.Array, metrics: dict, aux: Mapping[str, jax.Array] | None
                 ) -> tuple[jax.Array, dict]:
    """``(total, metrics)`` with an MoE model's weighted auxiliary loss added to the total and reported as
    ``metrics["moe_aux_loss"]``; unchanged for a dense model (no aux values)."""
    if not aux:
        return total, metrics
    metrics["moe_aux_loss"] = moe_loss(run, aux)
    return total + metrics["moe_aux_loss"], metrics


class Objective:
    """Base class: the defaults describe an objective that trains the model's own parameters."""

    kind: str = "lm"
    # The name of a scalar head ``w · hidden + b`` trained beside the model (``params["heads"][head]``:
    # ``w [D]``, ``b []``, both starting at zero, replicated, no weight decay), or None.
    head: str | None = None

    def setup(self, run: RunContext) -> None:
        """Loads what the objective needs (frozen models, data); called once before anything compiles."""
        self.run = run

    # ---- parameters ------------------------------------------------------------------------------
    def _with_head(self, model_tree: Any, leaf: Any) -> Any:
        if self.head is None:
            return model_tree
        return {**model_tree, "heads": {self.head: {"w": leaf, "b": leaf}}}

    def init_params(self, model_params: Any, key: jax.Array) -> Any:
        """The trainable tree, from freshly initialised (or warm-started) model parameters."""
        if self.head is None:
            return model_params
        zeros = {"w": jnp.zeros((self.run.model_config.d_model,), jnp.float32), "b": jnp.zeros((), jnp.float32)}
        return {**model_params, "heads": {self.head: zeros}}

    def param_shardings(self, model_shardings: Any) -> Any:
        return self._with_head(model_shardings, sh.replicated(self.run.mesh))

    def decay_mask(self, model_mask: Any) -> Any:
        return self._with_head(model_mask, False)

    def warm_start(self) -> bool:
        """Whether ``TrainConfig.init_from`` fills the trainable model parameters (False for LoRA)."""
        return True

    def frozen(self) -> tuple[Any, Any]:
        """``(tree, shardings)`` of parameters the loss reads but never updates; ``({}, {})`` when none."""
        return {}, {}

    def model_params(self, params: Any, frozen: Any) -> Any:
        """Plain transformer parameters of the model being trained (for samples and export)."""
        return split_heads(params)[0]

    def objective_info(self) -> dict:
        """Written to ``MODEL_DIR/objective.json`` (read by ``qj.load``)."""
        return {"kind": self.kind}

    # ---- data and loss ---------------------------------------------------------------------------
    def make_train_step(self, tx, schedule, skip_nonfinite: bool):
        """``train_step(state, frozen, batch) -> (state, metrics)``; language modelling (gradient accumulation)
        and PPO (several updates) override it."""
        from quark_jax.training.steps import make_objective_train_step

        if self.run.config.optimizer.grad_accum_steps != 1:
            raise ValueError(f"OptimizerConfig.grad_accum_steps > 1 is supported by language modelling only, not "
                             f"by {type(self).__name__}; lower BATCH_SIZE instead")

        return make_objective_train_step(self, tx, schedule, skip_nonfinite=skip_nonfinite)

    def batches(self, split: str, start_batch: int, shuffle: bool, repeat: bool = True) -> Iterator[dict[str, np.ndarray]]:
        raise NotImplementedError

    def prepare(self, params: Any, frozen: Any, batch: dict[str, np.ndarray], step: int) -> dict[str, np.ndarray]:
        """Host-side transformation of a batch before the step (default: none)."""
        return batch

    def loss(self, params: Any, frozen: Any, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        raise NotImplementedError

    def tokens_in(self, batch: Mapping[str, Any]) -> int:
        """Tokens the step processes, over all hosts (for tokens/s and MFU); default: the packed LM inputs."""
        return int(np.prod(batch["decoder_input_tokens"].shape))

    def evaluate(self, params: Any, frozen: Any) -> dict[str, float]:
        return {}


def lm_batches(run: RunContext, split: str, start_batch: int, shuffle: bool, repeat: bool = True):
    """The run's packed seqio language-modelling batches (``DataConfig``), this host's shard."""
    from quark_jax.data import pipeline

    cfg = run.config
    return pipeline.batch_iterator(
        cfg.data.mixture_or_task_name, dict(cfg.data.task_feature_lengths), cfg.data.batch_size, split=split,
        seed=cfg.seed, shuffle=shuffle, start_batch=start_batch, repeat=repeat,
        shard_index=jax.process_index(), num_shards=jax.process_count(),
    )


def lm_validation(run: RunContext, model_params: Any) -> dict[str, float]:
    """Validation loss / perplexity / accuracy of plain model parameters on the run's data (``eval_batches``)."""
    from quark_jax.training.losses import evaluate_lm, make_eval_step

    cfg = run.config
    if cfg.eval_batches <= 0:
        return {}
    sharding = sh.batch_sharding(run.mesh)
    if not hasattr(run, "_lm_eval_step"):  # compiled once per run
        run._lm_eval_step = jax.jit(make_eval_step(run.graphdef), out_shardings=sh.replicated(run.mesh))
    batches = ({k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
               for batch in lm_batches(run, cfg.data.eval_split, 0, shuffle=False))
    result = evaluate_lm(run._lm_eval_step, model_params, batches, cfg.eval_batches)
    return {"val_loss": result["loss"], "val_perplexity": result["perplexity"], "val_accuracy": result["accuracy"]}
