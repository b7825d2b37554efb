"""The project's tokenizer: a SentencePiece model trained on the stdlib and wrapped for seqio.

The model file is committed at ``tokenizers/quark_stdlib_4k.model`` and located relative to this source
file, so it is found from a clean clone after ``pip install -e .`` without any package-data entry in
setup.py. ``tokenizers/train_tokenizer.py`` rebuilds it deterministically.

Id layout (fixed by the trainer; seqio requires pad=0 and eos=1)::

    0 <pad> · 1 </s> · 2 <unk> · 3 <s> · 4.. chat/tool markers and reserved slots · then 256 byte pieces
"""

from __future__ import annotations

import functools
import pathlib

import seqio
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from quark_jax.resources import shipped

DEFAULT_SPM_PATH = shipped("tokenizers/quark_stdlib_4k.model")

PAD_ID = 0
EOS_ID = 1
UNK_ID = 2
BOS_ID = 3


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
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(path.read_bytes())
    user_defined = sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED
    return {p.piece: i for i, p in enumerate(proto.pieces) if p.type == user_defined}


def special_tokens(path: str | pathlib.Path | None = None) -> dict[str, int]:
    """Name -> id of the user-defined markers (``<|user|>``, ``<|end|>``, ``<|reserved_0|>`` ...).

    These are matched verbatim by the encoder, so a chat template can be written as plain text.
    Returns a fresh dict each call so callers cannot corrupt the cache.
    """
    return dict(_special_tokens(_resolve(path)))


def sentencepiece_processor(path: str | pathlib.Path | None = None) -> spm.SentencePieceProcessor:
    """A plain SentencePiece processor for the same model (for non-TF code paths and tests)."""
    return get_vocabulary(path).tokenizer


def __getattr__(name: str):
    # SPECIAL_TOKENS reads the model file; doing that lazily (PEP 562) keeps `import vocab` cheap and
    # lets a missing model surface as the FileNotFoundError above at the point of use.
    if name == "SPECIAL_TOKENS":
        return special_tokens()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
