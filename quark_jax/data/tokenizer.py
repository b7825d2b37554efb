"""The project's tokenizer: loading a SentencePiece model for seqio, and the id layout every model shares.

The default model is committed at ``tokenizers/quark_stdlib_4k.model`` and found through
:func:`quark_jax.resources.shipped` (a source checkout or an installed wheel). It is trained by
``quark_jax.data.tokenizer_training`` (``python tokenizers/train_tokenizer.py`` rebuilds it byte for byte).

Id layout, the one definition of the reserved and special tokens (seqio requires pad=0 and eos=1)::

    0 <pad> · 1 </s> · 2 <unk> · 3 <s> · 4.. USER_DEFINED_TOKENS (chat/tool markers, reserved slots)
    · then 256 byte pieces and the learned pieces

Importing this module is cheap: seqio (and with it TensorFlow) is imported when a vocabulary is loaded.
"""

from __future__ import annotations

import functools
import pathlib
from typing import TYPE_CHECKING

from quark_jax.resources import shipped

if TYPE_CHECKING:
    import seqio
    import sentencepiece as spm

DEFAULT_SPM_PATH = shipped("tokenizers/quark_stdlib_4k.model")

PAD_ID, EOS_ID, UNK_ID, BOS_ID = 0, 1, 2, 3
PAD_PIECE, EOS_PIECE, UNK_PIECE, BOS_PIECE = "<pad>", "</s>", "<unk>", "<s>"

# Chat-template and tool markers (the template itself is ``quark_jax.data.chat``).
SYSTEM = "<|system|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
END = "<|end|>"
TOOL_CALL = "<|tool_call|>"
TOOL_RESULT = "<|tool_result|>"
CHAT_TOKENS = (SYSTEM, USER, ASSISTANT, END, TOOL_CALL, TOOL_RESULT)
NUM_RESERVED = 10
# In id order from 4; the order is part of every model's interface (a test checks the committed model).
USER_DEFINED_TOKENS = CHAT_TOKENS + tuple(f"<|reserved_{i}|>" for i in range(NUM_RESERVED))


def _resolve(path: str | pathlib.Path | None) -> pathlib.Path:
    """Absolute path of the model, or a FileNotFoundError that says how to produce it."""
    resolved = pathlib.Path(path if path is not None else DEFAULT_SPM_PATH).expanduser().resolve()
    if not resolved.is_file():
        raise FileNotFoundError(
            f"SentencePiece model not found at {resolved}. The default model is committed to the "
            "repository; restore it with `git checkout -- tokenizers/` or rebuild it with "
            "`python tokenizers/train_tokenizer.py --output tokenizers/quark_stdlib_4k`."
        )
    return resolved


@functools.lru_cache(maxsize=None)
def _load(path: pathlib.Path) -> seqio.SentencePieceVocabulary:
    import seqio

    vocabulary = seqio.SentencePieceVocabulary(str(path))
    # The constants above are baked into batching and loss code; a model with another layout would
    # silently mislabel padding or end-of-sequence, so refuse it here.
    if (vocabulary.pad_id, vocabulary.eos_id) != (PAD_ID, EOS_ID):
        raise ValueError(
            f"{path} has pad_id={vocabulary.pad_id}, eos_id={vocabulary.eos_id}; quark_jax expects "
            f"pad_id={PAD_ID}, eos_id={EOS_ID}."
        )
    return vocabulary


def get_vocabulary(path: str | pathlib.Path | None = None) -> seqio.SentencePieceVocabulary:
    """The seqio vocabulary for ``path`` (default: the committed stdlib model), cached per file."""
    return _load(_resolve(path))


@functools.lru_cache(maxsize=None)
def _special_tokens(path: pathlib.Path) -> dict[str, int]:
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(path.read_bytes())
    user_defined = sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED
    return {p.piece: i for i, p in enumerate(proto.pieces) if p.type == user_defined}


def special_tokens(path: str | pathlib.Path | None = None) -> dict[str, int]:
    """Name -> id of the user-defined markers of a model file (``<|user|>``, ``<|end|>``, ``<|reserved_0|>`` ...).

    These are matched verbatim by the encoder, so a chat template can be written as plain text.
    Returns a fresh dict each call so callers cannot corrupt the cache.
    """
    return dict(_special_tokens(_resolve(path)))


def sentencepiece_processor(path: str | pathlib.Path | None = None) -> spm.SentencePieceProcessor:
    """A plain SentencePiece processor for the same model (for non-TF code paths and tests)."""
    return get_vocabulary(path).tokenizer
