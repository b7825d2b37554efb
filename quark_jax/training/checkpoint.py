"""Orbax checkpoints: one directory per step, written atomically and asynchronously, the last N kept.

A checkpoint holds ``params``, ``opt_state`` (both sharded arrays), ``meta`` (JSON: the step, the data
position, the tokenizer reference, anything else the trainer wants to resume exactly) and ``checksums``: a
CRC-32 of every array shard that was saved, one ``checksums.<process>.json`` per process (each covers the
shards its process wrote: its addressable shards with ``replica_id`` 0), keyed by item, dotted parameter path
and shard index. The checksums are computed from the device arrays when the save starts (before the next step
can change or donate them) and written as an item of the same orbax save, so they are committed exactly when
the arrays are. A restore checksums what it read and compares; a mismatch makes the checkpoint unreadable
(quarantined, the previous one used) with the parameter named. A checkpoint without checksums (saved before
they existed) restores unverified.

The run directory may be local or a URL (``gs://bucket/run``): orbax takes the URL as it is (its array writes go
through tensorstore, whose storage driver is chosen from the path), and the files written here go through
:mod:`quark_jax.run_paths`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import zlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from quark_jax import run_paths

log = logging.getLogger(__name__)

CHECKSUMS_ITEM = "checksums"
_CHECKSUM_FORMAT = 1


class ChecksumMismatchError(ValueError):
    """A restored array differs from what was saved (the checkpoint's data changed on disk). A ``ValueError``,
    so that ``quark generate --step N`` of a damaged step is one line on stderr and exit status 2."""


# ---- checksums ----------------------------------------------------------------------------------------------
def _is_array(x: Any) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype")


def _leaves(tree: Any) -> list[tuple[str, Any]]:
    """(dotted path, leaf) pairs; the same names for a saved tree and the tree restored into its structure."""
    def name(key: Any) -> str:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                return str(getattr(key, attr))
        return str(key)

    return [(".".join(name(k) for k in path), leaf)
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree, is_leaf=_is_array)]


def _shard_key(index: tuple, shape: tuple) -> str:
    """``"0:64,0:128"``: where a shard lies in its array (independent of devices and meshes)."""
    return ",".join(f"{s.indices(n)[0]}:{s.indices(n)[1]}" for s, n in zip(index, shape)) or "scalar"


def _key_slices(key: str) -> tuple[slice, ...]:
    if key == "scalar":
        return ()
    return tuple(slice(*map(int, part.split(":"))) for part in key.split(","))


def _crc32(value: Any) -> int:
    data = np.ascontiguousarray(np.asarray(value))
    return zlib.crc32(data.reshape(-1).view(np.uint8))


def compute_checksums(tree: Any) -> dict[str, dict]:
    """``{dotted path: {"dtype", "shape", "shards": {shard index: crc32}}}`` of the shards this process saves:
    its addressable shards with ``replica_id`` 0 (non-JAX leaves: process 0 only). Reads the arrays now."""
    out = {}
    for path, leaf in _leaves(tree):
        if isinstance(leaf, jax.Array):
            shards = {_shard_key(s.index, leaf.shape): _crc32(s.data) for s in leaf.addressable_shards
                      if s.replica_id == 0}
        elif jax.process_index() == 0:
            leaf = np.asarray(leaf)
            shards = {_shard_key(tuple(slice(None) for _ in leaf.shape), leaf.shape): _crc32(leaf)}
        else:
            continue
        if shards:
            out[path] = {"dtype": str(leaf.dtype), "shape": list(leaf.shape), "shards": shards}
    return out


def verify_checksums(item: str, tree: Any, recorded: dict[str, dict]) -> int:
    """Checksums the restored ``tree``'s local data the way :func:`compute_checksums` did at save time and
    compares with ``recorded``; returns how many shards were compared, raises :class:`ChecksumMismatchError`
    naming the parameter. Shards of a restore into another layout are compared where a local shard holds them
    whole (always on one host); leaves restored as another dtype or shape are not compared."""
    compared = 0
    for path, leaf in _leaves(tree):
        record = recorded.get(path)
        if record is None or str(leaf.dtype) != record["dtype"] or list(leaf.shape) != record["shape"]:
            continue
        if not isinstance(leaf, jax.Array) or leaf.is_fully_addressable:
            whole = np.asarray(leaf)
            local = [(tuple(slice(0, n) for n in whole.shape), whole)]
        else:
            local = [(tuple(slice(*s.indices(n)[:2]) for s, n in zip(sh.index, leaf.shape)), sh.data)
                     for sh in leaf.addressable_shards]
        for key, want in record["shards"].items():
            region = _key_slices(key)
            for bounds, data in local:
                if all(b.start <= r.start and r.stop <= b.stop for b, r in zip(bounds, region)):
                    got = _crc32(np.asarray(data)[tuple(slice(r.start - b.start, r.stop - b.start)
                                                         for b, r in zip(bounds, region))])
                    if got != want:
                        raise ChecksumMismatchError(
                            f"{item} parameter {path}: shard [{key}] reads with CRC-32 {got:#010x}, the checkpoint "
                            f"recorded {want:#010x} when it was saved (its data changed on disk)"
                        )
                    compared += 1
                    break
    return compared


def read_checksums(step_dir: str) -> dict[str, dict[str, dict]] | None:
    """The merged ``checksums.<process>.json`` files of a step directory (``{item: {path: record}}``), or None
    for a checkpoint saved without them."""
    directory = run_paths.safe_path(step_dir, CHECKSUMS_ITEM)
    if not run_paths.isdir(directory):
        return None
    merged: dict[str, dict[str, dict]] = {}
    for name in sorted(run_paths.listdir(directory)):
        if not (name.startswith("checksums.") and name.endswith(".json")):
            continue
        written = json.loads(run_paths.read_text(run_paths.safe_path(directory, name)))
        for item, records in written["items"].items():
            for path, record in records.items():
                into = merged.setdefault(item, {}).setdefault(path, {**record, "shards": {}})
                into["shards"].update(record["shards"])
    return merged


class _ChecksumHandler(ocp.CheckpointHandler):
    """Writes this process's ``checksums.<process>.json`` into the (temporary) item directory of a save, on
    every process: orbax commits it with the rest of the step."""

    def save(self, directory, args: ChecksumArgs) -> None:
        directory = str(directory)
        run_paths.makedirs(directory)
        path = run_paths.join(directory, f"checksums.{jax.process_index()}.json")
        run_paths.write_text(path, json.dumps({"format": _CHECKSUM_FORMAT, "algorithm": "crc32",
                                               "process": jax.process_index(), "items": args.items}))

    def restore(self, directory, args: ChecksumArgs | None = None) -> dict:
        return read_checksums(str(directory).rstrip("/").rsplit("/", 1)[0]) or {}

    def metadata(self, directory) -> None:
        return None

    def finalize(self, directory) -> None:
        pass

    def close(self) -> None:
        pass


@ocp.args.register_with_handler(_ChecksumHandler, for_save=True, for_restore=True)
@dataclasses.dataclass
class ChecksumArgs(ocp.args.CheckpointArgs):
    items: dict = dataclasses.field(default_factory=dict)


class Checkpointer:
    """A thin layer over ``ocp.CheckpointManager`` that knows quark_jax's items and skips broken steps."""

    def __init__(self, directory: str, max_to_keep: int = 3, async_save: bool = True):
        self.run_dir = run_paths.absolute(directory)
        self.directory = run_paths.join(self.run_dir, run_paths.CHECKPOINTS_DIR)
        # Before orbax lists (or creates) anything: no link or FIFO in checkpoints/ is followed or opened.
        run_paths.check_tree(self.run_dir, run_paths.CHECKPOINTS_DIR)
        run_paths.safe_path(self.run_dir, run_paths.UNREADABLE_CHECKPOINTS_DIR)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=async_save, create=True
        )
        self._manager = ocp.CheckpointManager(run_paths.as_epath(self.directory), options=options)
        self._warn_about_partial_writes()

    def _warn_about_partial_writes(self) -> None:
        partial = sorted(n for n in run_paths.listdir(self.directory) if ".orbax-checkpoint-tmp" in n)
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
        if not force and not self._manager.should_save(step):
            return False
        checksums = ChecksumArgs({"params": compute_checksums(params), "opt_state": compute_checksums(opt_state)})
        args = ocp.args.Composite(
            params=ocp.args.StandardSave(params),
            opt_state=ocp.args.StandardSave(opt_state),
            meta=ocp.args.JsonSave(meta),
            **{CHECKSUMS_ITEM: checksums},
        )
        return self._manager.save(step, args=args, force=force)

    def _verify(self, step: int, restored: Any) -> None:
        recorded = read_checksums(run_paths.join(self.directory, str(step)))
        if recorded is None:
            log.debug("checkpoint step %d has no checksums (saved before they were written): not verified", step)
            return
        compared = sum(verify_checksums(item, restored[item], recorded.get(item, {}))
                       for item in ("params", "opt_state") if item in restored)
        log.debug("checkpoint step %d: %d shard checksums verified", step, compared)

    def _restore_latest_good(self, make_args, step: int | None) -> tuple[int, Any]:
        steps = [step] if step is not None else list(reversed(self.all_steps()))
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        errors: list[tuple[int, str]] = []
        for candidate in steps:
            # A link or FIFO in the step is an error naming it, never "unreadable" (not quarantined).
            run_paths.check_tree(self.run_dir, os.path.join(run_paths.CHECKPOINTS_DIR, str(candidate)))
            try:
                restored = self._manager.restore(candidate, args=make_args())
                self._verify(candidate, restored)
            except Exception as e:  # noqa: BLE001 -- any unreadable checkpoint falls back to the previous one
                if step is not None:
                    raise
                reason = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
                log.warning("checkpoint step %d in %s is unreadable (%s); trying the previous one",
                            candidate, self.directory, reason)
                errors.append((candidate, reason))
                continue
            self._quarantine(errors)
            return candidate, restored
        raise RuntimeError(f"every checkpoint in {self.directory} is unreadable (steps {[s for s, _ in errors]})")

    def _quarantine(self, steps: list[tuple[int, str]]) -> None:
        """Moves unreadable checkpoints out of the way, so the resumed run can write those steps again.

        They go to ``MODEL_DIR/checkpoints_unreadable/<step>-<time>/`` (kept for inspection, never deleted),
        each with a ``quarantine_reason.txt`` saying why.
        """
        if not steps or jax.process_index() != 0:
            return
        target_root = run_paths.safe_path(self.run_dir, run_paths.UNREADABLE_CHECKPOINTS_DIR)
        run_paths.makedirs(target_root)
        for step, reason in steps:
            target = run_paths.join(target_root, f"{step}-{int(time.time())}")
            while (os.path.lexists(target) if run_paths.is_local(target) else run_paths.exists(target)):
                target += "+"
            run_paths.move_tree(run_paths.join(self.directory, str(step)), target)
            run_paths.write_text(run_paths.join(target, "quarantine_reason.txt"), reason + "\n")
            log.warning("moved unreadable checkpoint step %d to %s (%s)", step, target, reason)
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
        run_paths.check_tree(self.run_dir, os.path.join(run_paths.CHECKPOINTS_DIR, str(step)))

        return step, ocp.StandardCheckpointHandler().metadata(run_paths.as_epath(self.directory) / str(step) / "params")

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
