"""What a post-training objective is: its data, its trainable and frozen parameters, its loss.

Pre-training (``TrainConfig.objective = None``) runs the language-modelling step of ``steps.py``. Every other
run binds an :class:`Objective` in gin (``configs/runs/{distill,reward,dpo,ppo}.gin``, LoRA as a switch on
finetune/sft) and the same :class:`~quark_jax.training.trainer.Trainer` runs it: same mesh and sharding
rules, same optimizer, orbax checkpoints, metrics, progress bar, SIGTERM handling and exact resume.

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
import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from quark_jax import sharding as sh
from quark_jax.models.config import ModelConfig
from quark_jax.models.transformer import Transformer, abstract_model

Batch = dict[str, jax.Array]
OBJECTIVE_FILE = "objective.json"  # beside model_config.json: what `qj.load` needs to rebuild the model


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
        """``(config, graphdef, params, shardings)`` of another run's newest checkpoint, sharded on this mesh
        with the same logical rules. ``what`` names the role (``"teacher"``...) in errors. With
        ``with_heads`` the run's extra heads (e.g. a reward head) come along under ``params["heads"]``."""
        from quark_jax.training.checkpoint import Checkpointer

        run_dir = resolve_run_dir(run_dir, what)
        with open(os.path.join(run_dir, "model_config.json")) as f:
            config = ModelConfig.from_json(f.read())
        if read_objective_info(run_dir).get("kind") == "lora":
            raise ValueError(f"the {what} {run_dir} holds LoRA adapters only; merge them into a full run first "
                             "(`quark merge_lora`, i.e. quark_jax.models.lora.save_merged) and point at the merged directory")
        graphdef, params_abstract, shardings = model_abstract(config, self.mesh)
        abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), params_abstract, shardings)
        checkpointer = Checkpointer(run_dir, async_save=False)
        try:
            _, params, heads = checkpointer.restore_model_params(abstract, sh.replicated(self.mesh))
        finally:
            checkpointer.close()
        if with_heads:
            if heads is None:
                raise ValueError(f"the {what} {run_dir} has no heads (is it a reward-model run?)")
            params["heads"] = heads
            shardings = {**shardings, "heads": jax.tree.map(lambda _: sh.replicated(self.mesh), heads)}
        return config, graphdef, params, shardings


def read_objective_info(run_dir: str) -> dict:
    """The ``objective.json`` of a run directory (``{}`` for a pre-training run)."""
    path = os.path.join(run_dir, OBJECTIVE_FILE)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def resolve_run_dir(run_dir: str | None, what: str) -> str:
    """A run directory (also accepts its ``checkpoints/``), checked to hold a model and checkpoints."""
    if not run_dir:
        raise ValueError(f"no {what} run directory is set")
    run_dir = run_dir.rstrip("/")
    if os.path.basename(run_dir) == "checkpoints":
        run_dir = os.path.dirname(run_dir)
    for needed in ("model_config.json", "checkpoints"):
        if not os.path.exists(os.path.join(run_dir, needed)):
            raise FileNotFoundError(f"{what} {run_dir!r}: no {needed} there (is it a directory written by `quark train`?)")
    return run_dir


def model_abstract(config: ModelConfig, mesh: jax.sharding.Mesh) -> tuple[nnx.GraphDef, Any, Any]:
    """``(graphdef, abstract params, param shardings)`` of a model config on a mesh (nothing allocated)."""
    abstract_model = abstract_model(config)
    graphdef, state = nnx.split(abstract_model)
    return graphdef, nnx.to_pure_dict(state), nnx.to_pure_dict(sh.state_shardings(state, mesh))


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
        """``train_step(state, frozen, batch) -> (state, metrics)``; PPO overrides it (several updates)."""
        from quark_jax.training.steps import make_objective_train_step

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
    import math

    from quark_jax.training.steps import make_eval_step

    cfg = run.config
    if cfg.eval_batches <= 0:
        return {}
    sharding = sh.batch_sharding(run.mesh)
    if not hasattr(run, "_lm_eval_step"):  # compiled once per run
        run._lm_eval_step = jax.jit(make_eval_step(run.graphdef), out_shardings=sh.replicated(run.mesh))
    step = run._lm_eval_step
    totals = {"nll_sum": 0.0, "correct_sum": 0.0, "weight_sum": 0.0}
    batches = lm_batches(run, cfg.data.eval_split, 0, shuffle=False)
    for _, batch in zip(range(cfg.eval_batches), batches):
        device_batch = {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
        sums = jax.device_get(step(model_params, device_batch))
        for k in totals:
            totals[k] += float(sums[k])
    weight = max(totals["weight_sum"], 1.0)
    val_loss = totals["nll_sum"] / weight
    return {"val_loss": val_loss, "val_perplexity": math.exp(min(val_loss, 50.0)),
            "val_accuracy": totals["correct_sum"] / weight}
