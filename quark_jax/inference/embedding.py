"""Text embeddings from a language model: the token layout, the pooling and the compiled-shape padding.

One definition shared by the contrastive training objective
(``quark_jax.training.objectives.contrastive``) and the :class:`~quark_jax.retrieval.embedder.Embedder`, so a
trained embedder is read exactly as it was trained.

A text of kind ``query`` or ``passage`` becomes the token sequence ::

    lead + encode(prefix + text)[: max_len - len(lead) - 1] + [EOS]

``lead`` is what starts a sequence for the model (the project tokenizer's decoder input starts with 0, as
in seqio's autoregressive inputs; an imported tokenizer's ``prompt_prefix_ids``, e.g. Llama's ``<s>``), and
the EOS closes it, so the last position has read the whole (possibly truncated) text. The model reads the
right-padded rows (``segment_ids`` 1 on real tokens, 0 on padding; attention is causal, so padding never
changes a real token's state) and returns final-normed hidden states; ``"mean"`` pooling averages them over
the real tokens, ``"last"`` takes the state at the EOS. The vector is L2-normalised in float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float, Int

POOLINGS = ("mean", "last")
MIN_LENGTH_BUCKET = 16


def check_pooling(pooling: str) -> None:
    if pooling not in POOLINGS:
        raise ValueError(f"pooling={pooling!r} must be one of {POOLINGS}")


def lead_ids(vocabulary: Any) -> list[int]:
    """The ids that start every embedded sequence: an imported tokenizer's ``prompt_prefix_ids``, else the
    seqio decoder-input start (the pad id, 0)."""
    if hasattr(vocabulary, "prompt_prefix_ids"):
        return list(vocabulary.prompt_prefix_ids)
    return [int(vocabulary.pad_id)]


def sequence_ids(vocabulary: Any, text: str, max_len: int, prefix: str = "") -> list[int]:
    """``lead + encode(prefix + text) + [EOS]``, the text's tokens cut so the whole fits in ``max_len``."""
    lead = lead_ids(vocabulary)
    room = max_len - len(lead) - 1
    if room < 1:
        raise ValueError(f"max_len={max_len} leaves no room for text after {len(lead)} start token(s) and EOS")
    return lead + list(vocabulary.encode(prefix + text))[:room] + [int(vocabulary.eos_id)]


def length_bucket(length: int, max_len: int) -> int:
    """The padded length of a row of ``length`` tokens: the power of two at least ``length`` (and at least
    :data:`MIN_LENGTH_BUCKET`), at most ``max_len``."""
    bucket = MIN_LENGTH_BUCKET
    while bucket < length:
        bucket *= 2
    return min(bucket, max_len)


def pad_rows(rows: Sequence[Sequence[int]], batch_size: int, length: int, pad_id: int = 0
             ) -> tuple[np.ndarray, np.ndarray]:
    """``(tokens [batch_size, length] int32, lengths [batch_size] int32)``: rows right-padded with
    ``pad_id``; missing rows are one-token padding rows (length 1), whose vectors are discarded."""
    if len(rows) > batch_size:
        raise ValueError(f"{len(rows)} rows do not fit in a batch of {batch_size}")
    tokens = np.full((batch_size, length), pad_id, np.int32)
    lengths = np.ones((batch_size,), np.int32)
    for i, row in enumerate(rows):
        if len(row) > length:
            raise ValueError(f"row {i} has {len(row)} tokens, more than the padded length {length}")
        tokens[i, : len(row)] = row
        lengths[i] = len(row)
    return tokens, lengths


def real_mask(lengths: Int[Array, "B"], length: int) -> Float[Array, "B T"]:
    """1.0 on each row's first ``lengths[b]`` positions, 0.0 on its padding."""
    return (jnp.arange(length)[None, :] < lengths[:, None]).astype(jnp.float32)


def pool(hidden: Float[Array, "B T D"], lengths: Int[Array, "B"], pooling: str) -> Float[Array, "B D"]:
    """Mean over the real tokens (``"mean"``) or the state at the last real token (``"last"``), float32."""
    hidden = hidden.astype(jnp.float32)
    if pooling == "last":
        return jnp.take_along_axis(hidden, (lengths - 1)[:, None, None], axis=1)[:, 0]
    if pooling == "mean":
        mask = real_mask(lengths, hidden.shape[1])
        return jnp.einsum("btd,bt->bd", hidden, mask) / jnp.maximum(mask.sum(-1, keepdims=True), 1.0)
    raise ValueError(f"pooling={pooling!r} must be one of {POOLINGS}")


def l2_normalize(x: Float[Array, "B D"], eps: float = 1e-12) -> Float[Array, "B D"]:
    """Rows scaled to unit L2 norm (a zero row stays zero)."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def hidden_states(graphdef: nnx.GraphDef, params: Any, tokens: Int[Array, "B T"], lengths: Int[Array, "B"]
                  ) -> tuple[Float[Array, "B T D"], dict]:
    """Final-normed hidden states of right-padded rows, and the MoE auxiliary values (``{}`` when dense)."""
    length = tokens.shape[1]
    mask = real_mask(lengths, length).astype(jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32)[None, :], tokens.shape) * mask
    model = nnx.merge(graphdef, params)
    outputs = model(tokens, positions, mask, return_aux=True, return_hidden=True)
    return outputs[3], outputs[2]


def embed_tokens(graphdef: nnx.GraphDef, params: Any, tokens: Int[Array, "B T"], lengths: Int[Array, "B"],
                 pooling: str = "mean") -> Float[Array, "B D"]:
    """L2-normalised float32 embeddings of right-padded token rows. Pure; jit it with ``graphdef`` and
    ``pooling`` static."""
    hidden, _ = hidden_states(graphdef, params, tokens, lengths)
    return l2_normalize(pool(hidden, lengths, pooling))
