"""The sharded train step on its own (no data pipeline, no checkpoints): for the planner, benchmarks and tests.

It builds exactly what :class:`~quark_jax.training.trainer.Trainer` runs -- the same model, optimizer, step
function, parameter/optimizer shardings from the logical rules and batch sharding -- for a ``ModelConfig``
and a mesh, and can lower it ahead of time against abstract inputs (nothing allocated), so that XLA's
``memory_analysis()`` of a pod-sized config can be read on a CPU.
"""

from __future__ import annotations

import dataclasses
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
from quark_jax.training.optim import OptimizerConfig, make_optimizer, weight_decay_mask
from quark_jax.training.state import TrainState
from quark_jax.training.steps import make_train_step

BATCH_KEYS = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights", "decoder_segment_ids",
              "decoder_positions")


@dataclasses.dataclass
class ShardedTraining:
    """A model's jitted init and train step on one mesh, with their shardings and abstract state."""

    config: ModelConfig
    mesh: Mesh
    graphdef: nnx.GraphDef
    tx: optax.GradientTransformation
    state_shardings: TrainState
    batch_sharding: jax.sharding.NamedSharding
    abstract_state: TrainState  # ShapeDtypeStructs carrying the shardings
    init: Any  # jitted: key -> TrainState (sharded)
    step: Any  # jitted: (TrainState, batch) -> (TrainState, metrics), state donated

    def abstract_batch(self, batch_size: int, seq_len: int) -> dict[str, jax.ShapeDtypeStruct]:
        """Abstract int32 ``[batch, length]`` inputs with the batch sharding (for ahead-of-time lowering)."""
        return {k: jax.ShapeDtypeStruct((batch_size, seq_len), jnp.int32, sharding=self.batch_sharding)
                for k in BATCH_KEYS}

    def compile(self, batch_size: int, seq_len: int):
        """Lowers and compiles the train step against abstract inputs; returns the compiled executable."""
        with sh.activate(self.mesh):
            return self.step.lower(self.abstract_state, self.abstract_batch(batch_size, seq_len)).compile()


def make_sharded_training(
    config: ModelConfig,
    mesh: Mesh,
    optimizer: OptimizerConfig = OptimizerConfig(),
    total_steps: int = 1000,
    z_loss: float = 1e-4,
    rules: sh.Rules = sh.DEFAULT_RULES,
) -> ShardedTraining:
    """Builds the sharded init and train step of ``config`` on ``mesh`` (as the Trainer does)."""
    abstract_model = abstract_model(config)
    graphdef, abstract_params = nnx.split(abstract_model)
    param_shardings = nnx.to_pure_dict(sh.state_shardings(abstract_params, mesh, rules))
    tx, schedule = make_optimizer(optimizer, total_steps, weight_decay_mask(abstract_params))

    def init(key):
        params = nnx.to_pure_dict(nnx.state(Transformer(config, rngs=nnx.Rngs(params=key)), nnx.Param))
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
    batch_sharding = sh.batch_sharding(mesh, rules)
    step = jax.jit(
        make_train_step(graphdef, tx, schedule, z_loss=z_loss, grad_accum_steps=optimizer.grad_accum_steps),
        in_shardings=(state_shardings, batch_sharding),
        out_shardings=(state_shardings, replicated),
        donate_argnums=0,
    )
    return ShardedTraining(
        config=config, mesh=mesh, graphdef=graphdef, tx=tx, state_shardings=state_shardings,
        batch_sharding=batch_sharding, abstract_state=abstract_state,
        init=jax.jit(init, out_shardings=state_shardings), step=step,
    )


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
