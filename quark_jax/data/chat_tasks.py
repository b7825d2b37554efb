"""seqio Tasks for conversations (instruction tuning), packed with per-token loss weights.

A chat task yields ``{"targets": token ids, "loss_weights": 0/1 per token}`` (see
``quark_jax.data.chat.tokenize_conversation``). :class:`WeightedLMFeatureConverter` packs both streams
together, so several conversations share a row, attention stays within each (segment ids), and only
assistant tokens carry loss. ``quark_jax.data.pipeline`` picks that converter for any task or mixture whose
output features include ``loss_weights``.

Importing this module registers nothing; ``quark_jax.data.catalogue`` registers the project's chat task
``sft_stdlib`` over :data:`INSTRUCTIONS_DIR` with :func:`register_chat_task`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping

import seqio
import tensorflow as tf

from quark_jax.data.jsonl import iter_jsonl
from quark_jax.data import chat, tokenizer
from quark_jax.resources import shipped

LOSS_WEIGHTS = "loss_weights"
# The project's instruction set (``python -m quark_jax.data.instructions``): {train,validation}.jsonl.
INSTRUCTIONS_DIR = str(shipped("data/instructions"))


class WeightedLMFeatureConverter(seqio.LMFeatureConverter):
    """seqio's decoder-only converter, with loss weights taken from a packed ``loss_weights`` feature."""

    TASK_FEATURES = {
        "targets": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
        LOSS_WEIGHTS: seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
    }

    def _convert_example(self, features: Mapping[str, tf.Tensor]) -> Mapping[str, tf.Tensor]:
        converted = dict(super()._convert_example(features))
        # Stored as weight + 1 (see _conversation_dataset); packing padding is 0 and stays weight 0.
        converted["decoder_loss_weights"] = tf.maximum(features[LOSS_WEIGHTS] - 1, 0)
        return converted


def read_jsonl(path: str, check=None,
               missing_hint: str = "build the instruction set: python -m quark_jax.data.instructions") -> list[dict]:
    """Records of a JSONL file; a malformed line raises naming the file and line number.

    ``check(record)`` may return an error message for a record (raised as ``path:line: message``);
    ``missing_hint`` says how to make a missing file.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found ({missing_hint})")
    records = []
    for number, record in iter_jsonl(path):
        problem = check(record) if check else None
        if problem:
            raise ValueError(f"{path}:{number}: {problem}")
        records.append(record)
    return records


@functools.lru_cache(maxsize=None)
def _tokenized(path: str, vocabulary_path: str | None) -> tuple[tuple[list[int], ...], tuple[list[int], ...]]:
    vocabulary = tokenizer.get_vocabulary(vocabulary_path)
    tokens, weights = [], []
    for number, record in enumerate(read_jsonl(path), 1):
        try:
            t, w = chat.tokenize_conversation(chat.messages_of(record), vocabulary)
        except ValueError as e:
            raise ValueError(f"{path}:{number}: {e}") from e
        tokens.append(t)
        weights.append(w)
    return tuple(tokens), tuple(weights)


def _conversation_dataset(paths: Mapping[str, str], vocabulary_path: str | None, split: str, shuffle_files: bool,
                          seed: int | None = None) -> tf.data.Dataset:
    tokens, weights = _tokenized(paths[split], vocabulary_path)
    # seqio's packing treats 0 as padding and drops it, which would misalign a 0/1 stream with the tokens;
    # weights travel as 1 (no loss) / 2 (loss) and the converter subtracts 1.
    ds = tf.data.Dataset.from_tensor_slices({
        "targets": tf.ragged.constant(tokens, dtype=tf.int32),
        LOSS_WEIGHTS: tf.ragged.constant([[w + 1 for w in row] for row in weights], dtype=tf.int32),
    }).map(lambda ex: {k: v.to_tensor() if isinstance(v, tf.RaggedTensor) else v for k, v in ex.items()})
    if shuffle_files:
        ds = ds.shuffle(len(tokens), seed=seed, reshuffle_each_iteration=True)
    return ds


def register_chat_task(name: str, jsonl_paths: Mapping[str, str], vocabulary_path: str | None = None) -> seqio.Task:
    """Registers (or replaces) a chat Task over JSONL files, one per split (``{"train": path, ...}``).

    Each record is ``{"messages": [{"role", "content"}, ...]}`` or ``{"prompt", "response"[, "system"]}``.
    """
    seqio.TaskRegistry.remove(name)
    vocabulary = tokenizer.get_vocabulary(vocabulary_path)
    source = seqio.FunctionDataSource(
        dataset_fn=functools.partial(_conversation_dataset, dict(jsonl_paths), vocabulary_path),
        splits=tuple(jsonl_paths),
    )
    return seqio.TaskRegistry.add(
        name,
        source=source,
        preprocessors=[],
        output_features={
            "targets": seqio.Feature(vocabulary=vocabulary, add_eos=False, dtype=tf.int32),
            LOSS_WEIGHTS: seqio.Feature(vocabulary=seqio.PassThroughVocabulary(3), add_eos=False, dtype=tf.int32),
        },
    )


def has_loss_weights(name: str) -> bool:
    """Whether a registered task or mixture carries per-token loss weights."""
    return LOSS_WEIGHTS in seqio.get_mixture_or_task(name).output_features

