"""Chunking long token sequences into feature-length pieces: the one implementation every text task uses.

:func:`split_to_feature_lengths` cuts a token sequence into consecutive chunks that fit its feature length
(instead of trimming: a 2,000-line module would otherwise contribute only its first few hundred tokens).
With ``overlap > 0`` (:func:`split_with_overlap`), the last ``overlap`` tokens of each chunk are repeated at
the start of the next one, so the model sees every token with some left context even at a chunk boundary
(useful for code, where a chunk that starts mid-function is otherwise hard to predict); the cost is
``overlap / (length - 1)`` more tokens.
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


def split_to_feature_lengths(
    dataset: tf.data.Dataset,
    sequence_length: Mapping[str, int] | None,
    output_features: Mapping[str, seqio.Feature],
    overlap: int = 0,
) -> tf.data.Dataset:
    """Cuts each token sequence into chunks that fit its feature length; consecutive chunks share ``overlap`` tokens.

    A seqio preprocessor: seqio injects ``sequence_length`` and ``output_features`` by argument name. A
    chunk is one token shorter than the length when the feature appends EOS, so ``append_eos_after_trim``
    that follows never trims. Chunk order is kept; the task's shuffle buffer mixes chunks later. A sequence
    with no tokens yields no examples. Other features of the example are copied to every chunk.
    """
    if overlap < 0:
        raise ValueError(f"chunk overlap={overlap} must be >= 0")
    if not sequence_length:
        return dataset  # No lengths given (e.g. inspection): nothing to fit.
    keys = [k for k in output_features if sequence_length.get(k) is not None and k in dataset.element_spec]
    if not keys:
        return dataset
    if len(keys) > 1:
        # Chunking two streams independently would misalign them (inputs vs targets).
        raise ValueError(f"chunking handles one token feature, got {keys}.")
    (key,) = keys
    chunk = sequence_length[key] - int(output_features[key].add_eos)
    if chunk < 1:
        raise ValueError(f"Length {sequence_length[key]} for feature {key!r} leaves no room for tokens.")
    if overlap >= chunk:
        raise ValueError(f"chunk overlap={overlap} must be smaller than the chunk of {chunk} tokens "
                         f"(feature {key!r}, length {sequence_length[key]}).")
    stride = chunk - overlap

    # Plain tensor code with no Python control flow on tensors: traced as written (autograph would run a
    # converted copy, which also hides these lines from coverage).
    @tf.autograph.experimental.do_not_convert
    def to_rows(example):
        tokens = example[key]
        count = tf.size(tokens)
        # Number of chunks: 1 + ceil((count - chunk) / stride) for count > chunk; 1 if 0 < count <= chunk.
        rows = tf.where(count > 0, 1 + tf.maximum(0, (count - chunk + stride - 1) // stride), 0)
        starts = tf.range(rows) * stride
        padded = tf.pad(tokens, [[0, chunk]])
        out = {k: tf.repeat(v[tf.newaxis], rows, axis=0) for k, v in example.items() if k != key}
        # A dense [rows, chunk] block (rather than a RaggedTensor) keeps the element spec a plain
        # TensorSpec, which seqio's validation expects; strip_padding cuts each row to its length.
        out[key] = tf.gather(padded, starts[:, tf.newaxis] + tf.range(chunk)[tf.newaxis, :])
        out["_chunk_length"] = tf.minimum(chunk, count - starts)
        return out

    @tf.autograph.experimental.do_not_convert
    def strip_padding(example):
        length = example.pop("_chunk_length")
        example[key] = example[key][:length]
        return example

    return (
        dataset.map(to_rows, num_parallel_calls=tf.data.AUTOTUNE)
        .unbatch()
        .map(strip_padding, num_parallel_calls=tf.data.AUTOTUNE)
    )


def split_with_overlap(overlap: int):
    """:func:`split_to_feature_lengths` with ``overlap`` bound, as a named seqio preprocessor."""
    if overlap < 0:
        raise ValueError(f"chunk overlap={overlap} must be >= 0")

    def preprocessor(dataset: tf.data.Dataset, sequence_length: Mapping[str, int] | None,
                     output_features: Mapping[str, seqio.Feature]) -> tf.data.Dataset:
        return split_to_feature_lengths(dataset, sequence_length, output_features, overlap)

    preprocessor.__name__ = f"split_with_overlap_{overlap}"
    return preprocessor
