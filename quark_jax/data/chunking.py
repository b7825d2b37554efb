"""Chunking long token sequences into feature-length pieces, optionally overlapping.

``tasks.split_to_feature_lengths`` cuts back to back; :func:`split_with_overlap` returns a seqio
preprocessor that repeats the last ``overlap`` tokens of each chunk at the start of the next one, so the
model sees every token with some left context even at a chunk boundary (useful for code, where a chunk
that starts mid-function is otherwise hard to predict). The cost is ``overlap / (length - 1)`` more tokens.
"""

from __future__ import annotations

from collections.abc import Mapping

import seqio
import tensorflow as tf


def chunk_starts(count: int, chunk: int, overlap: int) -> list[int]:
    """Start offsets of the chunks of a ``count``-token sequence (the Python reference for the TF code)."""
    stride = chunk - overlap
    if count <= 0:
        return []
    starts = [0]
    while starts[-1] + chunk < count:
        starts.append(starts[-1] + stride)
    return starts


def split_with_overlap(overlap: int):
    """A seqio preprocessor like ``split_to_feature_lengths`` whose consecutive chunks share ``overlap`` tokens."""
    if overlap < 0:
        raise ValueError(f"chunk overlap={overlap} must be >= 0")

    def preprocessor(dataset: tf.data.Dataset, sequence_length: Mapping[str, int] | None,
                     output_features: Mapping[str, seqio.Feature]) -> tf.data.Dataset:
        if not sequence_length:
            return dataset
        keys = [k for k in output_features if sequence_length.get(k) is not None and k in dataset.element_spec]
        if len(keys) != 1:
            raise ValueError(f"split_with_overlap handles exactly one token feature, got {keys}.")
        (key,) = keys
        chunk = sequence_length[key] - int(output_features[key].add_eos)
        if not 0 <= overlap < chunk:
            raise ValueError(f"chunk overlap={overlap} must be smaller than the chunk of {chunk} tokens "
                             f"(feature {key!r}, length {sequence_length[key]}).")
        stride = chunk - overlap

        def to_rows(example):
            tokens = example[key]
            count = tf.size(tokens)
            # Number of chunks: 1 + ceil((count - chunk) / stride) for count > chunk; 1 if 0 < count <= chunk.
            rows = tf.where(count > 0, 1 + tf.maximum(0, (count - chunk + stride - 1) // stride), 0)
            starts = tf.range(rows) * stride
            lengths = tf.minimum(chunk, count - starts)
            padded = tf.pad(tokens, [[0, chunk]])
            out = {k: tf.repeat(v[tf.newaxis], rows, axis=0) for k, v in example.items() if k != key}
            out[key] = tf.gather(padded, starts[:, tf.newaxis] + tf.range(chunk)[tf.newaxis, :])
            out["_chunk_length"] = lengths
            return out

        def strip(example):
            length = example.pop("_chunk_length")
            example[key] = example[key][:length]
            return example

        return dataset.map(to_rows).unbatch().map(strip)

    preprocessor.__name__ = f"split_with_overlap_{overlap}"
    return preprocessor
