"""Batches for the trainer: a seqio task or mixture → packed decoder features → numpy batches.

``batch_iterator`` is the only entry point the trainer uses. It is deterministic: the same
``(name, lengths, batch_size, split, seed, shard_index, num_shards)`` yields the same batches, and
``start_batch=k`` yields exactly what the unbroken iterator yields after its first ``k`` batches — that is
how a resumed run reads the same data as an unbroken one (the checkpoint stores the batch position).

Each batch is a dict of ``int32`` arrays of shape ``[batch_size // num_shards, length]``:

* ``decoder_input_tokens``   targets shifted right (0 = BOS/pad in seqio's convention)
* ``decoder_target_tokens``  the tokens to predict
* ``decoder_loss_weights``   1 on real tokens, 0 on padding
* ``decoder_segment_ids``    1, 2, ... per packed example; 0 on padding
* ``decoder_positions``      position within each packed example
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import seqio
import tensorflow as tf

from quark_jax.data import catalogue, chat_tasks

FEATURE_KEYS = (
    "decoder_input_tokens",
    "decoder_target_tokens",
    "decoder_loss_weights",
    "decoder_segment_ids",
    "decoder_positions",
)


def _check_name(name: str) -> None:
    catalogue.register_all()  # the project's tasks and mixtures, and $QUARK_DATA_DIRS
    known = set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
    if name not in known:
        raise ValueError(
            f"unknown seqio task or mixture {name!r}; registered: {sorted(known)}. "
            "Bind MIXTURE_OR_TASK_NAME to one of them or register it (e.g. quark_jax.data.tasks.register_text_task)."
        )


def make_dataset(
    name: str,
    task_feature_lengths: Mapping[str, int],
    batch_size: int,
    split: str = "train",
    seed: int = 0,
    shuffle: bool = True,
    start_batch: int = 0,
    repeat: bool = True,
    shard_index: int = 0,
    num_shards: int = 1,
    pack: bool = True,
) -> tf.data.Dataset:
    """The batched, packed ``tf.data.Dataset`` behind :func:`batch_iterator` (same arguments)."""
    _check_name(name)
    if batch_size % num_shards:
        raise ValueError(
            f"global batch size {batch_size} is not divisible by the {num_shards} data shards (hosts); "
            f"bind BATCH_SIZE to a multiple of {num_shards}"
        )
    if "targets" not in task_feature_lengths:
        raise ValueError(f"task_feature_lengths={dict(task_feature_lengths)} needs a 'targets' length")
    lengths = dict(task_feature_lengths)
    if chat_tasks.has_loss_weights(name):
        # Conversations: per-token loss weights (assistant turns only) are packed alongside the tokens.
        lengths[chat_tasks.LOSS_WEIGHTS] = lengths["targets"]
        converter = chat_tasks.WeightedLMFeatureConverter(pack=pack)
    else:
        converter = seqio.DecoderFeatureConverter(pack=pack)
    ds = seqio.get_dataset(
        name,
        task_feature_lengths=lengths,
        feature_converter=converter,
        dataset_split=split,
        shuffle=shuffle,
        num_epochs=None if repeat else 1,
        shard_info=seqio.ShardInfo(index=shard_index, num_shards=num_shards) if num_shards > 1 else None,
        seed=seed,
        verbose=False,
    )
    ds = ds.map(lambda ex: {k: tf.cast(ex[k], tf.int32) for k in FEATURE_KEYS})
    ds = ds.batch(batch_size // num_shards, drop_remainder=True)
    if start_batch:
        ds = ds.skip(start_batch)
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options).prefetch(2)


def batch_iterator(
    name: str,
    task_feature_lengths: Mapping[str, int],
    batch_size: int,
    split: str = "train",
    seed: int = 0,
    shuffle: bool = True,
    start_batch: int = 0,
    repeat: bool = True,
    shard_index: int = 0,
    num_shards: int = 1,
    pack: bool = True,
) -> Iterator[dict[str, np.ndarray]]:
    """Numpy batches of packed decoder features for this host (see the module docstring).

    Args:
      name: a registered seqio Task or Mixture (e.g. ``"stdlib"``).
      task_feature_lengths: ``{"targets": sequence_length}``.
      batch_size: the *global* batch; each of ``num_shards`` hosts gets ``batch_size // num_shards`` rows.
      split: ``"train"`` or ``"validation"``.
      seed: shuffling and mixing seed; same seed, same order.
      shuffle: shuffle documents (and chunks) with ``seed``.
      start_batch: skip this many batches first (resume position).
      repeat: cycle forever; otherwise stop after one pass.
      shard_index, num_shards: this host's slice of the data (``jax.process_index()/process_count()``).
      pack: pack several examples per row (seqio's packing); False pads each example to the length.
    """
    ds = make_dataset(
        name, task_feature_lengths, batch_size, split=split, seed=seed, shuffle=shuffle,
        start_batch=start_batch, repeat=repeat, shard_index=shard_index, num_shards=num_shards, pack=pack,
    )
    return ds.as_numpy_iterator()


def packing_efficiency(batch: Mapping[str, np.ndarray]) -> float:
    """Fraction of token slots holding real tokens (non-pad) in a batch."""
    return float((np.asarray(batch["decoder_segment_ids"]) > 0).mean())
