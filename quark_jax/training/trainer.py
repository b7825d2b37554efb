"""The training loop: sharded init or resume, the compiled step, logging, evaluation and checkpoints.

Everything the run does is determined by a :class:`TrainConfig` (built by gin from the run's config files)
and its seed, so re-running the same command resumes the same run and reproduces the same losses.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from quark_jax import lineage, run_paths, runs
from quark_jax import sharding as sh
from quark_jax.training import checkpoint as ckpt
from quark_jax.training import metrics as qm
from quark_jax.training import preemption
from quark_jax.training import run_lock
from quark_jax.training import sharded
from quark_jax.training.config import TrainConfig
from quark_jax.training.state import TrainState

log = logging.getLogger(__name__)


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, permissions, a failing bucket): the run stops at the next
    step boundary; the message is one line naming the directory and the OS error. Earlier checkpoints are
    kept."""


class NonFiniteLossError(RuntimeError):
    """Raised when a step produces a NaN or Inf loss or gradient norm and ``on_nonfinite == 'stop'``, or when
    ``on_nonfinite == 'skip'`` has skipped more than ``max_consecutive_skips`` updates in a row."""


def _nonfinite_quantity(values: Mapping[str, float]) -> str:
    """Names what is not finite in a step's metrics: "loss nan", or "gradient norm nan (loss 8.3177)"."""
    import math

    loss, grad_norm = values.get("loss", float("nan")), values.get("grad_norm", float("nan"))
    if not math.isfinite(loss):
        return f"non-finite loss {loss} (gradient norm {grad_norm})"
    return f"non-finite gradient norm {grad_norm} (loss {loss:.4f})"


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



SUMMARY_FILE = "summary.json"


def _has_os_error(error: BaseException | None) -> bool:
    while error is not None:
        if isinstance(error, OSError):
            return True
        error = error.__cause__ or error.__context__
    return False


def _read_records(model_dir: str) -> list[dict]:
    """The records of metrics.jsonl (none before the first is written); ``metrics.read_metrics`` explains."""
    try:
        return qm.read_metrics(model_dir)
    except FileNotFoundError:
        return []


def _last_logged(model_dir: str) -> dict[str, float]:
    """The newest training record of metrics.jsonl (a finished run's last metrics, read back on completion)."""
    train = [r for r in _read_records(model_dir) if "loss" in r]
    return {k: v for k, v in train[-1].items() if k != "step"} if train else {}


def _logged_eval(model_dir: str, step: int) -> bool:
    """Whether metrics.jsonl holds an evaluation record (one without a training ``loss``, other than the task
    suites' ``eval/...`` record) of ``step``."""
    return any(r.get("step") == step and "loss" not in r and any(k != "step" and not k.startswith("eval/") for k in r)
               for r in _read_records(model_dir))


def _sampled(model_dir: str, step: int) -> bool:
    """Whether samples.txt holds the samples of ``step``."""
    path = run_paths.safe_path(model_dir, "samples.txt")
    if not run_paths.exists(path):
        return False
    return f"--- step {step}\n" in run_paths.read_text(path)


class Trainer:
    """Runs a :class:`TrainConfig`: ``Trainer(config).run()`` or ``Trainer.from_gin(files, overrides).run()``."""

    def __init__(self, config: TrainConfig, gin_config_text: str = ""):
        self.config = config
        self.gin_config_text = gin_config_text
        # Called as on_eval(step, values) after each periodic evaluation (values: val_loss ...); a true result
        # stops the run cleanly at that step (checkpointed; the summary says ``stopped_early``). Hyper-parameter
        # search (quark_jax.tuning) reports to its pruner and keeps its time budget through it.
        self.on_eval: Callable[[int, dict[str, float]], bool] | None = None

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
        from quark_jax.data.tokenizer import get_vocabulary

        cfg = self.config
        self.vocabulary = get_vocabulary()
        if cfg.model.vocab_size < self.vocabulary.vocab_size:
            raise ValueError(
                f"ModelConfig.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's "
                f"{self.vocabulary.vocab_size} tokens; bind ModelConfig.vocab_size >= {self.vocabulary.vocab_size}"
            )
        run_paths.makedirs(cfg.model_dir)
        self.mesh = sh.make_mesh(cfg.mesh_shape)
        log.debug("mesh %s; logical axis rules:\n%s", dict(self.mesh.shape), sh.describe_rules())
        self.training = sharded.build(cfg, self.mesh, self.vocabulary)
        self.objective = self.training.objective
        self.graphdef = self.training.graphdef

    def _write_run_files(self) -> None:
        cfg = self.config
        if jax.process_index() != 0:
            return
        runs.write_model_config(cfg.model_dir, cfg.model)
        runs.write_objective_info(cfg.model_dir, self.objective.objective_info())
        runs.write_run_info(cfg.model_dir, trained_context=int(cfg.data.task_feature_lengths["targets"]))
        if self.gin_config_text:
            runs.write_gin_config(cfg.model_dir, self.gin_config_text)
        runs.copy_tokenizer(self.vocabulary.sentencepiece_model_file, cfg.model_dir)
        lineage.record_training(cfg.model_dir, cfg.init_from, cfg.data.mixture_or_task_name,
                                {**self.objective.objective_info(),
                                 **lineage.objective_parents(self.objective)}, self.gin_config_text)

    def _check_checkpoint_shapes(self) -> None:
        """Refuses checkpoints whose parameter shapes differ from this run's (from the checkpoint's own metadata,
        so it holds when ``model_config.json`` is missing), before a restore would call every one unreadable."""
        if self.checkpointer.latest_step() is None:
            return
        try:
            step, metadata = self.checkpointer.param_metadata()
        except Exception:  # noqa: BLE001 -- unreadable metadata: the restore's fallback deals with that step
            return
        expected = dict(_flatten(self.training.abstract_state.params))
        found = dict(_flatten(metadata))
        differ = [f"{name}: checkpoint {tuple(found[name].shape) if name in found else 'absent'} vs this run "
                  f"{tuple(expected[name].shape) if name in expected else 'absent'}"
                  for name in sorted(set(expected) | set(found))
                  if name not in found or name not in expected or tuple(found[name].shape) != tuple(expected[name].shape)]
        if differ:
            raise ValueError(
                f"MODEL_DIR {self.config.model_dir} holds checkpoints (step {step}) of a different model; "
                f"{len(differ)} parameter(s) differ: {'; '.join(differ[:5])}{' ...' if len(differ) > 5 else ''}. "
                "Use the run's own model config, a new MODEL_DIR, or INIT_FROM to warm-start from it"
            )

    def _init_or_restore(self) -> tuple[TrainState, int]:
        """Restores the newest readable checkpoint, or initialises sharded parameters from the seed."""
        step = self.checkpointer.latest_step()
        if step is not None:
            abstract = self.training.abstract_state
            step, params, opt_state, meta = self.checkpointer.restore(abstract.params, abstract.opt_state)
            log.info("resumed from %s step %d", self.checkpointer.directory, step)
            state = TrainState(
                step=jax.device_put(jnp.int32(meta["step"]), self.training.state_shardings.step), params=params,
                opt_state=opt_state,
            )
            return state, int(meta["data_position"])
        state = self.training.init(jax.random.key(self.config.seed))
        if self.config.init_from and self.objective.warm_start():
            state = dataclasses.replace(state, params=self._warm_start_params(state.params))
        return state, 0

    def _warm_start_params(self, params: Any) -> Any:
        """``params`` with every parameter that the ``init_from`` checkpoint holds replaced by its value."""
        source_dir = runs.resolve(self.config.init_from, "TrainConfig.init_from")
        if self.config.init_transform:
            return self._transformed_warm_start(params, source_dir)
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
            shardings = dict(_flatten(self.training.state_shardings.params))
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

    def _transformed_warm_start(self, params: Any, source_dir: str) -> Any:
        """``params`` replaced by ``init_transform`` applied to the ``init_from`` run's parameters."""
        from quark_jax.training import init_transforms

        transform = init_transforms.get(self.config.init_transform)
        source_config = runs.read_model_config(source_dir)
        source = ckpt.Checkpointer(source_dir, async_save=False)
        try:
            step, metadata = source.param_metadata()
            replicated = sh.replicated(self.mesh)
            abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=replicated),
                                    metadata, is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))
            _, restored, _ = source.restore_params(abstract, step)
        finally:
            source.close()
        flat_params = dict(_flatten(params))
        flat = transform(dict(_flatten(restored)), source_config, self.config.model, flat_params)
        wrong = sorted(n for n in flat_params if n not in flat or tuple(flat[n].shape) != tuple(flat_params[n].shape))
        if wrong:
            raise ValueError(f"init_transform={self.config.init_transform!r} from {source_dir} gave the wrong "
                             f"parameters for this model: {', '.join(wrong[:5])}")
        shardings = dict(_flatten(self.training.state_shardings.params))
        placed = {n: jax.device_put(jnp.asarray(flat[n], flat_params[n].dtype), shardings[n]) for n in flat_params}
        log.info("warm-started with init_transform=%r from %s step %d", self.config.init_transform, source_dir, step)
        return _unflatten_like(params, placed)

    def _compile(self, state: TrainState, batch: dict[str, jax.Array]):
        start = time.perf_counter()
        compiled = self.training.jitted_step(batch).lower(state, self.training.frozen, batch).compile()
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
        """The objective's held-out figures (language modelling: validation loss, perplexity and accuracy over
        ``eval_batches`` fixed batches)."""
        return self.objective.evaluate(params, self.training.frozen)

    def sample(self, params: Any) -> list[tuple[str, str]]:
        """Greedy continuations of the configured sample prompts."""
        cfg = self.config
        if not cfg.sample_prompts:
            return []
        if jax.process_count() > 1:  # the generator fetches whole arrays to one host
            log.info("multi-host run: skipping sample generation (use `quark generate` on the checkpoint)")
            return []
        params = self.objective.model_params(params, self.training.frozen)
        if not hasattr(self, "_generator"):
            from quark_jax.inference.generate import Generator

            self._generator = Generator(self.graphdef, params, self.vocabulary)
        self._generator.params = params
        outputs = self._generator.generate(list(cfg.sample_prompts), max_new_tokens=cfg.sample_max_new_tokens)
        return list(zip(cfg.sample_prompts, outputs))

    def _resolve_eval_tasks(self) -> list:
        """The ``eval_tasks`` of the config, loaded and checked before the first step (a bad name or file fails
        now, not after hours of training)."""
        cfg = self.config
        if not (cfg.eval_tasks and cfg.eval_tasks_every):
            return []
        from quark_jax.evaluation import tasks as task_lib

        selected = task_lib.find_tasks(",".join(cfg.eval_tasks))
        for task in selected:
            task_lib.load_examples(task, cfg.eval_tasks_limit)
        return selected

    def evaluate_tasks(self, params: Any, step: int) -> dict[str, float]:
        """Runs the configured evaluation suites (:mod:`quark_jax.evaluation.harness`) on ``params`` through the
        same generator as the samples; returns ``{"eval/<task>/<metric>": value}``."""
        import types

        from quark_jax.evaluation import harness

        cfg = self.config
        if not getattr(self, "_eval_tasks", None):
            return {}
        if jax.process_count() > 1:  # the generator fetches whole arrays to one host
            log.info("multi-host run: skipping the evaluation suites (use `quark eval --tasks` on the checkpoint)")
            return {}
        params = self.objective.model_params(params, self.training.frozen)
        if not hasattr(self, "_generator"):
            from quark_jax.inference.generate import Generator

            self._generator = Generator(self.graphdef, params, self.vocabulary)
        self._generator.params = params
        view = types.SimpleNamespace(generator=self._generator, step=step, model_dir=cfg.model_dir,
                                     trained_context=int(cfg.data.task_feature_lengths["targets"]))
        with sh.activate(self.mesh):
            results = harness.evaluate(view, self._eval_tasks, limit=cfg.eval_tasks_limit, progress=False,
                                       seed=cfg.seed, model_dir=cfg.model_dir)
        values = {f"eval/{name}/{metric}": figure["value"]
                  for name, task in results["tasks"].items() for metric, figure in task["metrics"].items()}
        self.last_task_results = results
        if jax.process_index() == 0:
            lineage.append_evaluation(cfg.model_dir, {"step": step, "source": "training",
                                                      "tasks": lineage.task_figures(results),
                                                      "limit": cfg.eval_tasks_limit, "seed": cfg.seed})
        log.info("step %d: %s", step, ", ".join(f"{k} {v:.4g}" for k, v in values.items()))
        return values

    def _evaluate_and_log(self, step: int, params: Any, completing: bool = False) -> dict[str, float]:
        """Evaluates and samples; ``completing``: a re-run completing a final evaluation that a killed run may
        have partly logged -- what is already in metrics.jsonl / samples.txt for ``step`` is not written again."""
        with sh.activate(self.mesh):
            values = self.evaluate(params)
            samples = self.sample(params)
        if not (completing and _logged_eval(self.config.model_dir, step)):
            self.writer.write(step, values)
        text = "\n\n".join(f"{prompt!r} → {out!r}" for prompt, out in samples)
        if completing and samples and _sampled(self.config.model_dir, step):
            samples = []
        if samples and jax.process_index() == 0:
            self.writer.write_text(step, "samples", text)
            run_paths.append_text(run_paths.safe_path(self.config.model_dir, "samples.txt"),
                                  f"--- step {step}\n{text}\n")
        if "val_perplexity" in values:
            log.info("step %d: validation loss %.4f (perplexity %.2f)", step, values["val_loss"],
                     values["val_perplexity"])
        else:
            log.info("step %d: %s", step, ", ".join(f"{k} {v:.4f}" for k, v in values.items()))
        if samples:  # also in samples.txt and TensorBoard
            log.debug("step %d samples:\n%s", step, text)
        self.last_samples = samples
        return values

    # ---- the loop ----------------------------------------------------------------------------------
    def _save(self, state: TrainState, step: int, force: bool = False) -> None:
        meta = {"step": step, "data_position": step, "seed": self.config.seed,
                "tokenizer": "tokenizer.model", "mixture_or_task_name": self.config.data.mixture_or_task_name}
        self.checkpointer.save(step, state.params, state.opt_state, meta, force=force)

    def run(self) -> dict[str, Any]:
        """Trains to ``config.steps`` (resuming if checkpoints exist) and returns a summary of figures (steps,
        last metrics, validation); the final state stays on the trainer (``trainer.params``).

        The run holds the directory's writer lease (:mod:`quark_jax.training.run_lock`) from before it writes
        anything until it returns or raises: a second writer gets :class:`run_lock.RunDirBusyError`."""
        cfg = self.config
        guard = preemption.PreemptionGuard()
        self._lease = None
        try:
            run_paths.makedirs(cfg.model_dir)
            run_paths.check_tree(cfg.model_dir)  # no link or special file anywhere in it: nothing is followed
            if jax.process_index() == 0:  # multi-host: process 0 holds the lease for all hosts
                self._lease = run_lock.RunLease(cfg.model_dir, stale_after_s=cfg.lease_stale_after_s).acquire()
            return self._run(guard)
        finally:
            writer, self.writer = getattr(self, "writer", None), None
            if writer is not None:
                writer.close()
            if self._lease is not None:
                self._lease.release()
            guard.restore()

    def _check_background(self) -> None:
        """At a step boundary: stop if the lease was lost or an asynchronous save failed."""
        if self._lease is not None:
            self._lease.check()
        try:
            self.checkpointer.check_for_errors()
        except Exception as e:  # noqa: BLE001 -- the commit thread's error, whatever orbax wraps it in
            raise self._write_error(e) from e

    def _write_error(self, error: BaseException) -> CheckpointWriteError:
        cause: BaseException | None = error
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__cause__ or cause.__context__
        what = f"[Errno {cause.errno}] {cause.strerror}" if cause is not None and cause.strerror else \
            f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
        directory = self.checkpointer.directory
        kept = [int(n) for n in run_paths.listdir(directory) if n.isdigit()]
        newest = max(kept) if kept else None  # orbax renames a step's directory into place once it is complete
        self._discard_failed_saves()
        return CheckpointWriteError(
            cause.errno if cause is not None else None,
            f"could not write a checkpoint to {self.checkpointer.directory}: {what}; "
            f"the newest complete checkpoint is step {newest}" if newest is not None else
            f"could not write a checkpoint to {self.checkpointer.directory}: {what}; no complete checkpoint yet",
        )

    def _discard_failed_saves(self) -> None:
        """Removes the temporary directories of saves that failed, so that a re-run does not take them for the
        leftovers of a killed run (orbax ignores them either way)."""
        directory = self.checkpointer.directory
        if jax.process_index() != 0:
            return
        for name in run_paths.listdir(directory):
            if ".orbax-checkpoint-tmp" in name:
                run_paths.rmtree(run_paths.join(directory, name))

    def _save_checked(self, state: TrainState, step: int, force: bool = False) -> None:
        try:
            self._save(state, step, force=force)
        except OSError as e:
            raise self._write_error(e) from e
        except Exception as e:  # noqa: BLE001 -- a previous async save's error surfaces in the next save
            if _has_os_error(e):
                raise self._write_error(e) from e
            raise

    def _wait_for_saves(self) -> None:
        try:
            self.checkpointer.wait()
        except Exception as e:  # noqa: BLE001
            if _has_os_error(e):
                raise self._write_error(e) from e
            raise
        self._check_background()

    def _run(self, stop_requested: preemption.PreemptionGuard) -> dict[str, Any]:
        cfg = self.config
        self._eval_tasks = self._resolve_eval_tasks()
        self._setup()
        # Nothing of the run's own files is written until the directory is known to hold this model: a failed
        # attempt with another config must not overwrite the run files that the right command needs.
        runs.check_model_config(cfg.model_dir, cfg.model)
        self.checkpointer = ckpt.Checkpointer(cfg.model_dir, cfg.checkpoint.max_to_keep, cfg.checkpoint.async_save)
        self._check_checkpoint_shapes()
        peak = cfg.peak_flops_per_s or qm.measure_matmul_flops()
        flops_per_token = cfg.model.flops_per_token(cfg.data.task_feature_lengths["targets"])

        with sh.activate(self.mesh):
            state, data_position = self._init_or_restore()
        self._write_run_files()
        start_step = int(jax.device_get(state.step))
        self.writer = qm.MetricsWriter(cfg.model_dir, resume_step=start_step)
        summary: dict[str, Any] = {"start_step": start_step, "model_dir": cfg.model_dir}
        if start_step >= cfg.steps:
            self.state = state
            try:
                if self._finished(cfg.model_dir):
                    log.info("nothing to do: checkpoint step %d >= steps %d", start_step, cfg.steps)
                    summary.update(final_step=start_step)
                    return summary
                # The final checkpoint was committed but the run stopped before its final artefacts.
                log.warning("step %d was checkpointed but the run's final evaluation, summary.json and loss curve "
                            "are missing: completing them", start_step)
                return self._finish(state, summary, start_step, _last_logged(cfg.model_dir))
            finally:
                self.checkpointer.close()

        objective, frozen = self.objective, self.training.frozen
        batches = objective.batches("train", data_position, cfg.data.shuffle)

        def next_batch(step):  # the host-side hook (PPO: rollouts with the parameters before `step`)
            with sh.activate(self.mesh):
                return self.training.device_batch(objective.prepare(state.params, frozen, next(batches), step))

        progress = None
        pending: tuple[int, Any] | None = None  # metrics of the previous step, fetched one step late
        last: dict[str, float] = {}
        consecutive_skips = 0

        def handle(step: int, device_metrics) -> None:
            nonlocal window_start, window_steps, last, consecutive_skips
            values = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
            if not values.pop("finite") > 0:
                what = _nonfinite_quantity(values)
                if cfg.on_nonfinite == "stop":
                    raise NonFiniteLossError(
                        f"{what} at step {step}; "
                        "lower the learning rate, or bind TrainConfig.on_nonfinite='skip' to drop such updates"
                    )
                consecutive_skips += 1
                if consecutive_skips > cfg.max_consecutive_skips:
                    raise NonFiniteLossError(
                        f"{consecutive_skips} consecutive updates skipped ({what} at step {step}), more than "
                        f"TrainConfig.max_consecutive_skips={cfg.max_consecutive_skips}; the run is diverging: "
                        "lower the learning rate and resume from an earlier checkpoint"
                    )
                log.warning("step %d: %s, update skipped", step, what)
                values["skipped"] = 1.0
            else:
                consecutive_skips = 0
            last = values
            window_steps += 1
            if step % cfg.log_every == 0 or step == cfg.steps:
                elapsed = time.perf_counter() - window_start
                tokens_per_s = window_steps * tokens_per_step / max(elapsed, 1e-9)
                values["tokens_per_s"] = tokens_per_s
                values["mfu"] = flops_per_token * tokens_per_s / (peak * jax.device_count())
                self.writer.write(step, values)
                window_start, window_steps = time.perf_counter(), 0
            if progress is not None:  # metrics arrive one step late: say which step the loss belongs to
                progress.set_postfix_str(f"loss {values['loss']:.3f} (step {step})", refresh=False)

        def preempted(step: int) -> dict[str, Any]:
            log.warning("SIGTERM: saved a checkpoint at step %d; re-run the same command to resume", step)
            self.state = state
            summary.update(preempted=True, final_step=step, last_metrics=last)
            return summary

        # Multi-host: a SIGTERM may reach one host only; every host must stop at the same step, or the others
        # wait for it in a collective save that never comes. The hosts agree through an all-reduce of the flag.
        agreed = preemption.StopAgreement(stop_requested)
        try:
            if agreed.now():  # SIGTERM during set-up: nothing new to save
                return preempted(start_step)
            batch = next_batch(start_step + 1)
            # tokens/s and MFU count the trained model's tokens (an objective says how many its batches hold;
            # frozen models' forward passes are not counted).
            tokens_per_step = objective.tokens_in(batch)
            with sh.activate(self.mesh):
                train_step = self._compile(state, batch)

            if cfg.progress_bar and jax.process_index() == 0:
                from tqdm.auto import tqdm

                progress = tqdm(total=cfg.steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)

            if start_step == 0 and cfg.eval_batches > 0 and cfg.eval_every:
                # The loss curve starts from the initial model's validation loss (a fresh run only).
                with sh.activate(self.mesh):
                    self.writer.write(0, self.evaluate(state.params))

            window_start, window_steps = time.perf_counter(), 0
            for step in range(start_step + 1, cfg.steps + 1):
                state, metrics = train_step(state, frozen, batch)
                if pending is not None:
                    handle(*pending)
                pending = (step, metrics)
                self._check_background()
                if step < cfg.steps:
                    batch = next_batch(step + 1)  # overlaps with the running step
                if progress is not None:
                    progress.update(1)
                is_ckpt = step % cfg.checkpoint.period == 0 or step == cfg.steps
                is_eval = cfg.eval_batches > 0 and (cfg.eval_every and step % cfg.eval_every == 0) \
                    and step < cfg.steps  # the final evaluation is part of _finish
                is_task_eval = bool(self._eval_tasks) and step % cfg.eval_tasks_every == 0
                stopping = agreed.at_step()  # read once: a SIGTERM may arrive anywhere in this iteration
                if is_ckpt or is_eval or is_task_eval or stopping:
                    handle(*pending)  # a checkpoint never holds a state whose loss we have not checked
                    pending = None
                if is_ckpt or stopping:
                    self._save_checked(state, step, force=step == cfg.steps or not is_ckpt)
                if is_eval:
                    eval_values = self._evaluate_and_log(step, state.params)
                    summary.update(eval_values)
                    if self.on_eval is not None and self.on_eval(step, eval_values):
                        if not is_ckpt:
                            self._save_checked(state, step, force=True)
                        self._wait_for_saves()
                        self.state = state
                        summary.update(stopped_early=True, final_step=step, last_metrics=last)
                        return summary
                if is_task_eval:
                    task_values = self.evaluate_tasks(state.params, step)
                    if task_values:
                        self.writer.write(step, task_values)
                        summary.update(task_values)
                if stopping:
                    # SIGTERM (e.g. a preempted TPU VM or a cluster scheduler): the step is checkpointed; wait
                    # for the commit and leave cleanly (exit 143 from the CLI). A second SIGTERM changes nothing.
                    self._wait_for_saves()
                    return preempted(step)
            if pending is not None:
                handle(*pending)
            self._wait_for_saves()
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
            if progress is not None:
                progress.close()
            self.checkpointer.close()

        self.state = state
        if agreed.now():  # SIGTERM after the final checkpoint: a re-run completes the final artefacts
            return preempted(cfg.steps)
        return self._finish(state, summary, cfg.steps, last)

    def _finish(self, state: TrainState, summary: dict[str, Any], step: int, last: dict[str, float]) -> dict[str, Any]:
        """The final artefacts of a run whose last step is checkpointed: the final validation (and samples),
        the loss curve and ``summary.json``, written last (atomically): its presence marks a finished run."""
        cfg = self.config
        if cfg.eval_batches > 0:
            summary.update(self._evaluate_and_log(step, state.params, completing=step == summary["start_step"]))
        self.state = state
        summary.update(final_step=step, last_metrics=last)
        if jax.process_index() == 0:
            held_out = {k: v for k, v in summary.items() if k.startswith("val_") and isinstance(v, (int, float))}
            if held_out:
                lineage.append_evaluation(cfg.model_dir, {"step": step, "source": "validation", "figures": held_out})
            summary["loss_curve"] = qm.plot_loss_curve(cfg.model_dir)
            run_paths.write_text(run_paths.safe_path(cfg.model_dir, SUMMARY_FILE),  # atomic, local or not
                                 json.dumps(summary, indent=2, default=str))
        return summary

    @staticmethod
    def _finished(model_dir: str) -> bool:
        """Whether the run wrote summary.json; process 0 (which writes it) decides for every host, since the
        final evaluation runs on all of them."""
        finished = run_paths.exists(run_paths.safe_path(model_dir, SUMMARY_FILE))
        if jax.process_count() > 1:
            import numpy as np
            from jax.experimental import multihost_utils

            finished = bool(multihost_utils.broadcast_one_to_all(np.int32(finished)))
        return finished

    @property
    def params(self) -> Any:
        """The trained parameters after :meth:`run` (sharded on the run's mesh)."""
        return self.state.params
