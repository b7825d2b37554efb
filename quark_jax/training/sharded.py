"""The sharded training state and jitted step of a run, built in one place.

:func:`build` turns a :class:`~quark_jax.training.config.TrainConfig` and a mesh into everything the step
needs: the objective set up on a :class:`RunContext`, parameter and optimizer-state shardings from the logical
rules, the optimizer, the jitted sharded initialiser and the step (``(state, frozen, batch) -> (state,
metrics)``, state donated). The :class:`~quark_jax.training.trainer.Trainer` runs exactly this; the planner,
the benchmarks and the tests use :func:`make_sharded_training` (a model config and a mesh, language
modelling) and can lower the step ahead of time against abstract inputs (nothing allocated), so that XLA's
``memory_analysis()`` of a pod-sized config can be read on a CPU.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from quark_jax import sharding as sh
from quark_jax.models.config import ModelConfig
from quark_jax.models.transformer import Transformer, abstract_model
from quark_jax.training.config import OptimizerConfig, TrainConfig
from quark_jax.training.objectives.base import Objective, RunContext
from quark_jax.training.objectives.lm import LanguageModel
from quark_jax.training.optim import make_optimizer, weight_decay_mask
from quark_jax.training.state import TrainState

BATCH_KEYS = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights", "decoder_segment_ids",
              "decoder_positions")


@dataclasses.dataclass
class ShardedTraining:
    """A run's objective, optimizer, shardings, jitted initialiser and train step on one mesh."""

    run: RunContext
    objective: Objective
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    state_shardings: TrainState
    abstract_state: TrainState  # ShapeDtypeStructs carrying the shardings
    frozen: Any  # parameters the objective reads but never updates (teacher, reference ...)
    frozen_shardings: Any
    init: Any  # jitted: key -> TrainState (sharded)
    train_step: Any  # (TrainState, frozen, batch) -> (TrainState, metrics), not yet jitted
    _jitted: dict = dataclasses.field(default_factory=dict)

    @property
    def mesh(self) -> Mesh:
        return self.run.mesh

    @property
    def graphdef(self) -> nnx.GraphDef:
        return self.run.graphdef

    @property
    def batch_sharding(self) -> jax.sharding.NamedSharding:
        """The sharding of a 2-D ``[batch, length]`` array."""
        return sh.batch_sharding(self.mesh)

    def batch_shardings(self, batch: Mapping[str, Any]) -> dict[str, jax.sharding.NamedSharding]:
        """Per array: the leading (batch) axis over the data-parallel mesh axes (any rank: pairs are 3-D)."""
        return {k: sh.batch_sharding(self.mesh, ndim=np.ndim(v)) for k, v in batch.items()}

    def device_batch(self, batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
        """This host's numpy rows as global arrays on the mesh."""
        shardings = self.batch_shardings(batch)
        return {k: jax.make_array_from_process_local_data(shardings[k], v) for k, v in batch.items()}

    def jitted_step(self, batch: Mapping[str, Any]):
        """The step jitted with explicit shardings for this batch's structure (cached per structure)."""
        key = tuple(sorted((k, np.ndim(v)) for k, v in batch.items()))
        if key not in self._jitted:
            self._jitted[key] = jax.jit(
                self.train_step,
                in_shardings=(self.state_shardings, self.frozen_shardings, self.batch_shardings(batch)),
                out_shardings=(self.state_shardings, sh.replicated(self.mesh)),
                donate_argnums=0,
            )
        return self._jitted[key]

    def step(self, state: TrainState, batch: Mapping[str, Any]) -> tuple[TrainState, dict]:
        """One step on ``batch`` with the run's frozen inputs (state is donated)."""
        return self.jitted_step(batch)(state, self.frozen, batch)

    def abstract_batch(self, batch_size: int, seq_len: int) -> dict[str, jax.ShapeDtypeStruct]:
        """Abstract int32 ``[batch, length]`` language-modelling inputs with the batch sharding."""
        return {k: jax.ShapeDtypeStruct((batch_size, seq_len), jnp.int32, sharding=self.batch_sharding)
                for k in BATCH_KEYS}

    def compile(self, batch_size: int, seq_len: int):
        """Lowers and compiles the step against abstract inputs; returns the compiled executable."""
        batch = self.abstract_batch(batch_size, seq_len)
        with sh.activate(self.mesh):
            return self.jitted_step(batch).lower(self.abstract_state, self.frozen, batch).compile()


def build(config: TrainConfig, mesh: Mesh, vocabulary: Any = None, rules: sh.Rules = sh.DEFAULT_RULES
          ) -> ShardedTraining:
    """Sets up ``config.objective`` (language modelling when None) on ``mesh`` and builds its sharded
    initialiser and train step. Frozen models the objective reads are loaded here, sharded with ``rules``."""
    graphdef, abstract_state = nnx.split(abstract_model(config.model))
    param_shardings = nnx.to_pure_dict(sh.state_shardings(abstract_state, mesh, rules))
    decay_mask = weight_decay_mask(abstract_state)
    run = RunContext(config, mesh, graphdef, param_shardings, decay_mask, vocabulary)
    objective = config.objective if config.objective is not None else LanguageModel()
    objective.setup(run)
    param_shardings = objective.param_shardings(param_shardings)
    frozen, frozen_shardings = objective.frozen()
    # An objective may apply several optimizer updates per step (PPO: epochs × minibatches); the schedule
    # counts updates.
    updates_per_step = getattr(objective, "updates_per_step", 1)
    tx, schedule = make_optimizer(config.optimizer, config.steps * updates_per_step, objective.decay_mask(decay_mask))

    def init(key):
        params = nnx.to_pure_dict(nnx.state(Transformer(config.model, rngs=nnx.Rngs(params=key)), nnx.Param))
        params = objective.init_params(params, jax.random.fold_in(key, 1))
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    abstract = jax.eval_shape(init, jax.random.key(0))
    replicated = sh.replicated(mesh)
    opt_shardings = optax.tree_map_params(
        tx, lambda _, s: s, abstract.opt_state, param_shardings, transform_non_params=lambda _: replicated
    )
    state_shardings = TrainState(step=replicated, params=param_shardings, opt_state=opt_shardings)
    abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_shardings
    )
    return ShardedTraining(
        run=run, objective=objective, tx=tx, schedule=schedule, state_shardings=state_shardings,
        abstract_state=abstract_state, frozen=frozen, frozen_shardings=frozen_shardings,
        init=jax.jit(init, out_shardings=state_shardings),
        train_step=objective.make_train_step(tx, schedule, config.on_nonfinite == "skip"),
    )


def make_sharded_training(
    config: ModelConfig,
    mesh: Mesh,
    optimizer: OptimizerConfig = OptimizerConfig(),
    total_steps: int = 1000,
    z_loss: float = 1e-4,
    rules: sh.Rules = sh.DEFAULT_RULES,
) -> ShardedTraining:
    """:func:`build` for language modelling of ``config`` on ``mesh`` without a run directory (planner,
    benchmarks, tests): the step the Trainer would run."""
    train_config = TrainConfig(model_dir="(not written)", model=config, optimizer=optimizer, steps=total_steps,
                               z_loss=z_loss)
    return build(train_config, mesh, rules=rules)


def synthetic_batch(vocab_size: int, batch_size: int, seq_len: int, seed: int = 0,
                    segments: int = 2) -> dict[str, np.ndarray]:
    """A random packed batch: each row holds ``segments`` documents (positions restart, segment ids 1..n),
    with the last 8th of each row padding (segment 0, loss weight 0)."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(4, vocab_size, (batch_size, seq_len + 1), dtype=np.int32)
    used = seq_len - seq_len // 8
    bounds = np.linspace(0, used, segments + 1).astype(int)
    segment_ids = np.zeros((batch_size, seq_len), np.int32)
    positions = np.zeros((batch_size, seq_len), np.int32)
    for i in range(segments):
        segment_ids[:, bounds[i]:bounds[i + 1]] = i + 1
        positions[:, bounds[i]:bounds[i + 1]] = np.arange(bounds[i + 1] - bounds[i])
    return {
        "decoder_input_tokens": tokens[:, :-1] * (segment_ids > 0), "decoder_target_tokens": tokens[:, 1:] * (segment_ids > 0),
        "decoder_loss_weights": (segment_ids > 0).astype(np.int32), "decoder_segment_ids": segment_ids,
        "decoder_positions": positions,
    }
