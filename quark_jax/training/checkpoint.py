"""Orbax checkpoints: one directory per step, written atomically and asynchronously, the last N kept.

A checkpoint holds three items: ``params``, ``opt_state`` (both sharded arrays) and ``meta`` (JSON: the step,
the data position, the tokenizer reference, anything else the trainer wants to resume exactly).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class Checkpointer:
    """A thin layer over ``ocp.CheckpointManager`` that knows quark_jax's items and skips broken steps."""

    def __init__(self, directory: str, max_to_keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(os.path.join(directory, "checkpoints"))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=async_save, create=True
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)
        self._warn_about_partial_writes()

    def _warn_about_partial_writes(self) -> None:
        if not os.path.isdir(self.directory):
            return
        partial = sorted(n for n in os.listdir(self.directory) if ".orbax-checkpoint-tmp" in n)
        if partial:
            log.warning(
                "ignoring %d half-written checkpoint(s) in %s (a run was killed while saving): %s",
                len(partial), self.directory, ", ".join(partial),
            )

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def save(self, step: int, params: Any, opt_state: Any, meta: dict, force: bool = False) -> bool:
        """Starts an (asynchronous) save; returns whether a checkpoint was started."""
        args = ocp.args.Composite(
            params=ocp.args.StandardSave(params),
            opt_state=ocp.args.StandardSave(opt_state),
            meta=ocp.args.JsonSave(meta),
        )
        return self._manager.save(step, args=args, force=force)

    def _restore_latest_good(self, make_args, step: int | None) -> tuple[int, Any]:
        steps = [step] if step is not None else list(reversed(self.all_steps()))
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        errors = []
        for candidate in steps:
            try:
                restored = self._manager.restore(candidate, args=make_args())
                self._quarantine(errors)
                return candidate, restored
            except Exception as e:  # noqa: BLE001 -- any unreadable checkpoint falls back to the previous one
                if step is not None:
                    raise
                log.warning("checkpoint step %d in %s is unreadable (%s: %s); trying the previous one",
                            candidate, self.directory, type(e).__name__, str(e).splitlines()[0][:200])
                errors.append(candidate)
        raise RuntimeError(f"every checkpoint in {self.directory} is unreadable (steps {errors})")

    def _quarantine(self, steps: list[int]) -> None:
        """Moves unreadable checkpoints out of the way, so the resumed run can write those steps again.

        They go to ``MODEL_DIR/checkpoints_unreadable/`` (kept for inspection, never deleted).
        """
        if not steps or jax.process_index() != 0:
            return
        target_root = os.path.join(os.path.dirname(self.directory), "checkpoints_unreadable")
        os.makedirs(target_root, exist_ok=True)
        for step in steps:
            target = os.path.join(target_root, f"{step}-{int(time.time())}")
            os.rename(os.path.join(self.directory, str(step)), target)
            log.warning("moved unreadable checkpoint step %d to %s", step, target)
        self._manager.reload()

    def restore(self, abstract_params: Any, abstract_opt_state: Any, step: int | None = None) -> tuple[int, Any, Any, dict]:
        """Restores ``(step, params, opt_state, meta)`` from the newest readable checkpoint.

        The abstract trees' leaves are ``jax.ShapeDtypeStruct`` with shardings: arrays are restored directly
        into that layout, on whatever mesh it names (resharding if the checkpoint was written on another).
        """
        make_args = lambda: ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract_params),
            opt_state=ocp.args.StandardRestore(abstract_opt_state),
            meta=ocp.args.JsonRestore(),
        )
        step, restored = self._restore_latest_good(make_args, step)
        return step, restored.params, restored.opt_state, dict(restored.meta)

    def restore_params(self, abstract_params: Any, step: int | None = None) -> tuple[int, Any, dict]:
        """Restores only the parameters and metadata (for inference and warm starts)."""
        make_args = lambda: ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract_params), meta=ocp.args.JsonRestore()
        )
        step, restored = self._restore_latest_good(make_args, step)
        return step, restored.params, dict(restored.meta)

    def restore_model_params(self, abstract_params: Any, heads_sharding: Any, step: int | None = None
                             ) -> tuple[int, Any, Any]:
        """Restores ``(step, transformer params, heads or None)``. A post-training run saves scalar heads
        (reward, value) beside the transformer as ``params["heads"]``; orbax restores whole trees, so they are
        read (onto ``heads_sharding``) and returned apart, for the caller to keep or drop."""
        import jax

        _, metadata = self.param_metadata(step)
        abstract = dict(abstract_params)
        if "heads" in metadata:
            abstract["heads"] = jax.tree.map(
                lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=heads_sharding), metadata["heads"],
                is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))
        step, params, _ = self.restore_params(abstract, step)
        params = dict(params)
        heads = params.pop("heads", None)
        return step, params, heads

    def param_metadata(self, step: int | None = None) -> tuple[int, Any]:
        """(step, tree of array metadata with ``.shape``/``.dtype``) of a checkpoint's parameters, unread."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        # The handler reads the item's own tree metadata; the Checkpointer-level call would also look for a
        # step-level _CHECKPOINT_METADATA inside the item directory and warn on every load that it is missing.
        from etils import epath

        return step, ocp.StandardCheckpointHandler().metadata(epath.Path(self.directory) / str(step) / "params")

    def check_for_errors(self) -> None:
        """Raises the error of a failed asynchronous save (once) if one has finished with an error; never
        waits for a save in progress."""
        self._manager.check_for_errors()
        if not self._manager.is_saving_in_progress():
            self._manager.wait_until_finished()  # returns at once; re-raises a failed commit's error

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are committed."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
