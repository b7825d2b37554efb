"""The training loop: sharded init or resume, the compiled step, logging, evaluation and checkpoints.

Everything the run does is determined by a :class:`TrainConfig` (built by gin from the run's config files)
and its seed, so re-running the same command resumes the same run and reproduces the same losses.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from quark_jax import sharding as sh
from quark_jax.inference.generate import Generator
from quark_jax.models.config import ModelConfig
from quark_jax.models.transformer import Transformer, abstract_model
from quark_jax.training import checkpoint as ckpt
from quark_jax.training import metrics as qm
from quark_jax.training.objectives.base import OBJECTIVE_FILE, RunContext, lm_validation
from quark_jax.training.optim import OptimizerConfig, make_optimizer, weight_decay_mask
from quark_jax.training.state import TrainState
from quark_jax.training.steps import make_train_step

log = logging.getLogger(__name__)


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
    sample_prompts: Sequence[str] = ("def ", "import os\n", "class ")
    sample_max_new_tokens: int = 32
    on_nonfinite: str = "stop"  # "stop": raise naming the step; "skip": drop that update and go on
    # Warm start: a run directory (or its checkpoints/) whose newest parameters initialise this run when it
    # has no checkpoint of its own. The optimizer starts fresh; parameters the source lacks keep their
    # initialisation; a shape mismatch is an error naming every mismatching parameter.
    init_from: str | None = None
    # A post-training objective (quark_jax.training.objectives: Distill, RewardModel, DPO, PPO, or LoRA on
    # the language-modelling objective); None is pre-training / fine-tuning with the LM loss.
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
        if self.steps < 1:
            raise ValueError(f"TrainConfig.steps={self.steps} must be >= 1")
        if not self.model_dir:
            raise ValueError("TrainConfig.model_dir is empty: set MODEL_DIR, e.g. --gin.MODEL_DIR=\"'/tmp/run'\"")


class _PreemptionGuard:
    """Turns SIGTERM into a flag the training loop checks after each step (main thread only)."""

    def __init__(self):
        import signal
        import threading

        self._signal = signal
        self.requested = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def __call__(self) -> bool:
        return self.requested

    def restore(self) -> None:
        if self._previous is not None:
            self._signal.signal(self._signal.SIGTERM, self._previous)
            self._previous = None


class NonFiniteLossError(RuntimeError):
    """Raised when a step produces a NaN or Inf loss and ``on_nonfinite == 'stop'``."""


def _flatten(tree: Any) -> list[tuple[str, Any]]:
    """(dotted path, leaf) pairs of a nested dict of arrays (or array metadata)."""
    leaves = jax.tree_util.tree_leaves_with_path(tree, is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))
    return [(".".join(str(getattr(k, "key", k)) for k in path), leaf) for path, leaf in leaves]


def _unflatten_like(tree: Any, flat: Mapping[str, Any]) -> Any:
    """A tree shaped like ``tree`` whose leaves are ``flat[dotted path]``."""
    is_leaf = lambda x: hasattr(x, "shape") and hasattr(x, "dtype")
    paths = [".".join(str(getattr(k, "key", k)) for k in path)
             for path, _ in jax.tree_util.tree_leaves_with_path(tree, is_leaf=is_leaf)]
    treedef = jax.tree.structure(tree, is_leaf=is_leaf)
    return jax.tree.unflatten(treedef, [flat[p] for p in paths])


def _tokens_per_step(config: TrainConfig) -> int:
    return config.data.batch_size * config.data.task_feature_lengths["targets"]


class Trainer:
    """Runs a :class:`TrainConfig`: ``Trainer(config).run()`` or ``Trainer.from_gin(files, overrides).run()``."""

    def __init__(self, config: TrainConfig, gin_config_text: str = ""):
        self.config = config
        self.gin_config_text = gin_config_text

    @classmethod
    def from_gin(
        cls, gin_files: str | Sequence[str], overrides: Sequence[str] = (), search_paths: Sequence[str] = ()
    ) -> Trainer:
        """Parses gin files and ``NAME=VALUE`` bindings (errors name the file, line and binding)."""
        from quark_jax import gin_utils

        if isinstance(gin_files, str):
            gin_files = [gin_files]
        gin_utils.parse(gin_files, overrides, search_paths)
        return cls(gin_utils.build_train_config(), gin_utils.config_text())

    # ---- set-up ------------------------------------------------------------------------------------
    def _setup(self) -> None:
        from quark_jax.data import pipeline  # resolves names through quark_jax.data.catalogue
        from quark_jax.data.tokenizer import get_vocabulary

        cfg = self.config
        self.vocabulary = get_vocabulary()
        if cfg.model.vocab_size < self.vocabulary.vocab_size:
            raise ValueError(
                f"ModelConfig.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's "
                f"{self.vocabulary.vocab_size} tokens; bind ModelConfig.vocab_size >= {self.vocabulary.vocab_size}"
            )
        self.pipeline = pipeline
        os.makedirs(cfg.model_dir, exist_ok=True)
        self.mesh = sh.make_mesh(cfg.mesh_shape)
        log.info("mesh %s; logical axis rules:\n%s", dict(self.mesh.shape), sh.describe_rules())

        # Abstract model → graph definition, parameter shardings, optimizer.
        abstract_model = abstract_model(cfg.model)
        self.graphdef, abstract_state = nnx.split(abstract_model)
        self.param_shardings = nnx.to_pure_dict(sh.state_shardings(abstract_state, self.mesh))
        decay_mask = weight_decay_mask(abstract_state)
        self.objective = cfg.objective
        self.frozen, self.frozen_shardings = {}, {}
        self.run_context = RunContext(cfg, self.mesh, self.graphdef, self.param_shardings, decay_mask, self.vocabulary)
        if self.objective is not None:
            self.objective.setup(self.run_context)
            self.param_shardings = self.objective.param_shardings(self.param_shardings)
            decay_mask = self.objective.decay_mask(decay_mask)
            self.frozen, self.frozen_shardings = self.objective.frozen()
        # An objective may apply several optimizer updates per step (PPO: epochs × minibatches); the schedule
        # counts updates.
        updates_per_step = getattr(self.objective, "updates_per_step", 1)
        self.tx, self.schedule = make_optimizer(cfg.optimizer, cfg.steps * updates_per_step, decay_mask)
        objective = self.objective

        def init(key):
            model = Transformer(cfg.model, rngs=nnx.Rngs(params=key))
            params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
            if objective is not None:
                params = objective.init_params(params, jax.random.fold_in(key, 1))
            return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=self.tx.init(params))

        self._init = init
        abstract = jax.eval_shape(init, jax.random.key(0))
        replicated = sh.replicated(self.mesh)
        opt_shardings = optax.tree_map_params(
            self.tx, lambda _, s: s, abstract.opt_state, self.param_shardings,
            transform_non_params=lambda _: replicated,
        )
        self.state_shardings = TrainState(step=replicated, params=self.param_shardings, opt_state=opt_shardings)
        self.abstract_state = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, self.state_shardings
        )
        self.batch_sharding = sh.batch_sharding(self.mesh)

    def _write_run_files(self) -> None:
        cfg = self.config
        if jax.process_index() != 0:
            return
        config_path = os.path.join(cfg.model_dir, "model_config.json")
        if os.path.exists(config_path) and os.path.isdir(os.path.join(cfg.model_dir, "checkpoints")):
            with open(config_path) as f:
                previous = json.load(f)
            changed = {k: (previous.get(k), v) for k, v in dataclasses.asdict(cfg.model).items() if previous.get(k) != v}
            if changed:
                raise ValueError(
                    f"MODEL_DIR {cfg.model_dir} holds checkpoints of a different model "
                    f"({', '.join(f'{k}: {a!r} there, {b!r} now' for k, (a, b) in changed.items())}); "
                    "use a new MODEL_DIR, or INIT_FROM to warm-start from it"
                )
        with open(config_path, "w") as f:
            f.write(cfg.model.to_json())
        objective_path = os.path.join(cfg.model_dir, OBJECTIVE_FILE)
        if self.objective is not None:
            with open(objective_path, "w") as f:
                json.dump(self.objective.objective_info(), f, indent=2)
        elif os.path.exists(objective_path):
            os.remove(objective_path)
        if self.gin_config_text:
            with open(os.path.join(cfg.model_dir, "config.gin"), "w") as f:
                f.write(self.gin_config_text)
        # The checkpoint directory carries its own tokenizer so that `qj.load(model_dir)` needs nothing else.
        shutil.copyfile(self.vocabulary.sentencepiece_model_file, os.path.join(cfg.model_dir, "tokenizer.model"))

    def _init_or_restore(self) -> tuple[TrainState, int]:
        """Restores the newest readable checkpoint, or initialises sharded parameters from the seed."""
        step = self.checkpointer.latest_step()
        if step is not None:
            step, params, opt_state, meta = self.checkpointer.restore(
                self.abstract_state.params, self.abstract_state.opt_state
            )
            log.info("resumed from %s step %d", self.checkpointer.directory, step)
            state = TrainState(
                step=jax.device_put(jnp.int32(meta["step"]), self.state_shardings.step), params=params,
                opt_state=opt_state,
            )
            return state, int(meta["data_position"])
        init = jax.jit(self._init, out_shardings=self.state_shardings)
        state = init(jax.random.key(self.config.seed))
        if self.config.init_from and (self.objective is None or self.objective.warm_start()):
            state = dataclasses.replace(state, params=self._warm_start_params(state.params))
        return state, 0

    def _warm_start_params(self, params: Any) -> Any:
        """``params`` with every parameter that the ``init_from`` checkpoint holds replaced by its value."""
        source_dir = self.config.init_from.rstrip("/")
        if os.path.basename(source_dir) == "checkpoints":
            source_dir = os.path.dirname(source_dir)
        if not os.path.isdir(os.path.join(source_dir, "checkpoints")):
            raise FileNotFoundError(f"TrainConfig.init_from={self.config.init_from!r}: no checkpoints/ directory there")
        source = ckpt.Checkpointer(source_dir, async_save=False)
        try:
            step, metadata = source.param_metadata()
            flat_meta = dict(_flatten(metadata))
            flat_params = dict(_flatten(params))
            mismatched = [
                f"{name}: checkpoint {tuple(flat_meta[name].shape)} vs model {tuple(value.shape)}"
                for name, value in flat_params.items()
                if name in flat_meta and tuple(flat_meta[name].shape) != tuple(value.shape)
            ]
            if mismatched:
                raise ValueError(
                    f"cannot warm-start from {source_dir} step {step}: {len(mismatched)} parameter shape(s) differ "
                    "(is the model config the same?):\n  " + "\n  ".join(mismatched)
                )
            shardings = dict(_flatten(self.param_shardings))
            replicated = sh.replicated(self.mesh)
            abstract = _unflatten_like(metadata, {
                name: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=shardings.get(name, replicated))
                for name, m in flat_meta.items()
            })
            _, restored, _ = source.restore_params(abstract, step)
        finally:
            source.close()
        flat_restored = dict(_flatten(restored))
        missing = sorted(set(flat_params) - set(flat_restored))
        unused = sorted(set(flat_restored) - set(flat_params))
        if missing:
            log.warning("warm start: %d parameter(s) not in the checkpoint keep their initialisation: %s",
                        len(missing), ", ".join(missing))
        if unused:
            log.warning("warm start: %d checkpoint parameter(s) unused by this model: %s", len(unused), ", ".join(unused))
        log.info("warm-started %d parameters from %s step %d", len(flat_params) - len(missing), source_dir, step)
        merged = {name: flat_restored.get(name, value) for name, value in flat_params.items()}
        return _unflatten_like(params, merged)

    def _batch_shardings(self, batch: Mapping[str, Any]) -> dict[str, jax.sharding.NamedSharding]:
        """Per array: the leading (batch) axis over the data-parallel mesh axes (any rank; LM batches are 2-D)."""
        return {k: sh.batch_sharding(self.mesh, ndim=np.ndim(v)) for k, v in batch.items()}

    def _device_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        shardings = self._batch_shardings(batch)
        return {k: jax.make_array_from_process_local_data(shardings[k], v) for k, v in batch.items()}

    def _compile(self, state: TrainState, batch: dict[str, jax.Array]):
        cfg = self.config
        if self.objective is None:
            step_fn = make_train_step(
                self.graphdef, self.tx, self.schedule, z_loss=cfg.z_loss,
                grad_accum_steps=cfg.optimizer.grad_accum_steps, skip_nonfinite=cfg.on_nonfinite == "skip",
            )
            in_shardings, args = (self.state_shardings, self.batch_sharding), (state, batch)
        else:
            if cfg.optimizer.grad_accum_steps != 1:
                raise ValueError("OptimizerConfig.grad_accum_steps > 1 is supported by the language-modelling "
                                 "objective only; lower BATCH_SIZE instead")
            step_fn = self.objective.make_train_step(self.tx, self.schedule, cfg.on_nonfinite == "skip")
            in_shardings = (self.state_shardings, self.frozen_shardings, self._batch_shardings(batch))
            args = (state, self.frozen, batch)
        jitted = jax.jit(step_fn, in_shardings=in_shardings, out_shardings=(self.state_shardings, sh.replicated(self.mesh)),
                         donate_argnums=0)
        start = time.perf_counter()
        compiled = jitted.lower(*args).compile()
        log.info("compiled train step in %.1f s", time.perf_counter() - start)
        try:
            mem = compiled.memory_analysis()
            if mem is not None:
                log.info("train step memory per device: args %.1f MiB, temps %.1f MiB",
                         mem.argument_size_in_bytes / 2**20, mem.temp_size_in_bytes / 2**20)
        except Exception:  # noqa: BLE001 -- not every backend reports memory
            pass
        return compiled

    # ---- evaluation --------------------------------------------------------------------------------
    def evaluate(self, params: Any) -> dict[str, float]:
        """Validation loss, perplexity and accuracy over ``eval_batches`` fixed batches (or the objective's own
        held-out figures)."""
        if self.objective is not None:
            return self.objective.evaluate(params, self.frozen)
        return lm_validation(self.run_context, params)

    def sample(self, params: Any) -> list[tuple[str, str]]:
        """Greedy continuations of the configured sample prompts."""
        cfg = self.config
        if not cfg.sample_prompts:
            return []
        if jax.process_count() > 1:  # the generator fetches whole arrays to one host
            log.info("multi-host run: skipping sample generation (use `quark generate` on the checkpoint)")
            return []
        if self.objective is not None:
            params = self.objective.model_params(params, self.frozen)
        if not hasattr(self, "_generator"):
            self._generator = Generator(self.graphdef, params, self.vocabulary)
        self._generator.params = params
        outputs = self._generator.generate(list(cfg.sample_prompts), max_new_tokens=cfg.sample_max_new_tokens)
        return list(zip(cfg.sample_prompts, outputs))

    def _evaluate_and_log(self, step: int, params: Any) -> dict[str, float]:
        with sh.activate(self.mesh):
            values = self.evaluate(params)
            samples = self.sample(params)
        self.writer.write(step, values)
        text = "\n\n".join(f"{prompt!r} → {out!r}" for prompt, out in samples)
        if samples and jax.process_index() == 0:
            self.writer.write_text(step, "samples", text)
            with open(os.path.join(self.config.model_dir, "samples.txt"), "a") as f:
                f.write(f"--- step {step}\n{text}\n")
        if "val_perplexity" in values:
            log.info("step %d: validation loss %.4f (perplexity %.2f)%s", step, values["val_loss"],
                     values["val_perplexity"], "\n" + text if samples else "")
        else:
            log.info("step %d: %s%s", step, ", ".join(f"{k} {v:.4f}" for k, v in values.items()),
                     "\n" + text if samples else "")
        self.last_samples = samples
        return values

    # ---- the loop ----------------------------------------------------------------------------------
    def _save(self, state: TrainState, step: int, force: bool = False) -> None:
        meta = {"step": step, "data_position": step, "seed": self.config.seed,
                "tokenizer": "tokenizer.model", "mixture_or_task_name": self.config.data.mixture_or_task_name}
        self.checkpointer.save(step, state.params, state.opt_state, meta, force=force)

    def run(self) -> dict[str, Any]:
        """Trains to ``config.steps`` (resuming if checkpoints exist) and returns a summary."""
        cfg = self.config
        self._setup()
        self._write_run_files()
        self.checkpointer = ckpt.Checkpointer(cfg.model_dir, cfg.checkpoint.max_to_keep, cfg.checkpoint.async_save)
        peak = cfg.peak_flops_per_s or qm.measure_matmul_flops()
        flops_per_token = cfg.model.flops_per_token(cfg.data.task_feature_lengths["targets"])

        with sh.activate(self.mesh):
            state, data_position = self._init_or_restore()
        start_step = int(jax.device_get(state.step))
        self.writer = qm.MetricsWriter(cfg.model_dir, resume_step=start_step)
        summary: dict[str, Any] = {"start_step": start_step, "model_dir": cfg.model_dir}
        if start_step >= cfg.steps:
            log.info("nothing to do: checkpoint step %d >= steps %d", start_step, cfg.steps)
            self.writer.close()
            self.checkpointer.close()
            summary.update(final_step=start_step, params=state.params)
            return summary

        objective = self.objective
        if objective is None:
            batches = self.pipeline.batch_iterator(
                cfg.data.mixture_or_task_name, dict(cfg.data.task_feature_lengths), cfg.data.batch_size,
                split="train", seed=cfg.seed, shuffle=cfg.data.shuffle, start_batch=data_position,
                shard_index=jax.process_index(), num_shards=jax.process_count(),
            )
            next_batch = lambda step: self._device_batch(next(batches))
        else:
            batches = objective.batches("train", data_position, cfg.data.shuffle)

            def next_batch(step):  # the host-side hook (PPO: rollouts with the parameters before `step`)
                with sh.activate(self.mesh):
                    return self._device_batch(objective.prepare(state.params, self.frozen, next(batches), step))

        batch = next_batch(start_step + 1)
        # tokens/s and MFU count the trained model's tokens (an objective says how many its batches hold;
        # frozen models' forward passes are not counted).
        tokens_per_step = _tokens_per_step(cfg) if objective is None else objective.tokens_in(batch)
        with sh.activate(self.mesh):
            train_step = self._compile(state, batch)
        step_inputs = (lambda b: (state, b)) if objective is None else (lambda b: (state, self.frozen, b))

        progress = None
        if cfg.progress_bar and jax.process_index() == 0:
            from tqdm.auto import tqdm

            progress = tqdm(total=cfg.steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)

        window_start, window_steps = time.perf_counter(), 0
        pending: tuple[int, Any] | None = None  # metrics of the previous step, fetched one step late
        last: dict[str, float] = {}

        def handle(step: int, device_metrics) -> None:
            nonlocal window_start, window_steps, last
            values = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
            if not values.pop("finite") > 0:
                if cfg.on_nonfinite == "stop":
                    raise NonFiniteLossError(
                        f"non-finite loss {values['loss']} (grad norm {values['grad_norm']}) at step {step}; "
                        "lower the learning rate, or bind TrainConfig.on_nonfinite='skip' to drop such updates"
                    )
                log.warning("step %d: non-finite loss, update skipped", step)
                values["skipped"] = 1.0
            last = values
            window_steps += 1
            if step % cfg.log_every == 0 or step == cfg.steps:
                elapsed = time.perf_counter() - window_start
                tokens_per_s = window_steps * tokens_per_step / max(elapsed, 1e-9)
                values["tokens_per_s"] = tokens_per_s
                values["mfu"] = flops_per_token * tokens_per_s / (peak * jax.device_count())
                self.writer.write(step, values)
                window_start, window_steps = time.perf_counter(), 0
            if progress is not None:
                progress.set_postfix(loss=f"{values['loss']:.3f}", refresh=False)

        stop_requested = _PreemptionGuard()
        try:
            for step in range(start_step + 1, cfg.steps + 1):
                state, metrics = train_step(*step_inputs(batch))
                if pending is not None:
                    handle(*pending)
                pending = (step, metrics)
                if step < cfg.steps:
                    batch = next_batch(step + 1)  # overlaps with the running step
                if progress is not None:
                    progress.update(1)
                is_ckpt = step % cfg.checkpoint.period == 0 or step == cfg.steps
                is_eval = cfg.eval_batches > 0 and (
                    (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps
                )
                if is_ckpt or is_eval:
                    handle(*pending)  # a checkpoint never holds a state whose loss we have not checked
                    pending = None
                if is_ckpt:
                    self._save(state, step, force=step == cfg.steps)
                if is_eval:
                    summary.update(self._evaluate_and_log(step, state.params))
                if stop_requested() and step < cfg.steps:
                    # SIGTERM (e.g. a preempted TPU VM or a cluster scheduler): checkpoint and leave cleanly.
                    handle(*pending)
                    pending = None
                    if not is_ckpt:
                        self._save(state, step, force=True)
                    log.warning("SIGTERM: saved a checkpoint at step %d; re-run the same command to resume", step)
                    summary.update(preempted=True, final_step=step, last_metrics=last, params=state.params)
                    return summary
            if pending is not None:
                handle(*pending)
        except KeyboardInterrupt:
            step = int(jax.device_get(state.step))
            try:
                log.warning("interrupted: saving a checkpoint at step %d before exiting", step)
                self._save(state, step, force=True)
            except Exception as e:  # noqa: BLE001 -- interrupted inside the step: its donated state is gone
                log.warning("could not save the interrupted step (%s); the newest checkpoint is step %s",
                            e, self.checkpointer.latest_step())
            raise
        finally:
            stop_requested.restore()
            if progress is not None:
                progress.close()
            self.checkpointer.close()
            self.writer.close()

        if jax.process_index() == 0:
            summary["loss_curve"] = qm.plot_loss_curve(cfg.model_dir)
        summary.update(final_step=cfg.steps, last_metrics=last, params=state.params)
        if jax.process_index() == 0:
            with open(os.path.join(cfg.model_dir, "summary.json"), "w") as f:
                json.dump({k: v for k, v in summary.items() if k != "params"}, f, indent=2, default=str)
        return summary
