"""Tokenizers of imported Hugging Face models: ``tokenizer.json`` through the ``tokenizers`` library, or a
Llama-style ``tokenizer.model`` through the ``sentencepiece`` library.

Imported Hugging Face models (``quark import_hf``) keep the tokenizer they were trained with. This backend
fills the small interface that the generate, complete and score paths use of a seqio vocabulary --
``encode(text) -> ids`` (no special tokens), ``decode(ids) -> text``, ``eos_id``, ``pad_id``, ``vocab_size`` --
plus :attr:`HFTokenizer.prompt_prefix_ids`: the ids transformers' tokenizer puts in front of a text (Llama's
``<s>``), which the generator puts in front of a prompt, never in front of a continuation or stop string. So
``prompt_prefix_ids + encode(text)`` is what ``transformers.AutoTokenizer(text).input_ids`` gives.

:class:`SentencePieceTokenizer` serves directories that ship only a SentencePiece model (any id layout, unlike
the project's seqio vocabularies, which need pad 0 and eos 1): its ids are the sentencepiece library's, with
``<s>`` in front of a prompt where the directory's ``tokenizer_config.json`` asks for it (``add_bos_token``,
default true as in Llama). transformers 5 converts such a model to a ``tokenizers`` tokenizer, which differs
from the library on special-token text inside the input (``"</s>"`` becomes the eos id) and on a run of
leading spaces; where a directory has both files, ``tokenizer.json`` is used.

Importing this module is cheap: ``tokenizers`` / ``sentencepiece`` are imported when a tokenizer is loaded.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

TOKENIZERS, SENTENCEPIECE = "tokenizers", "sentencepiece"  # the backends, as run.json names them

# A probe text for finding what the post-processor adds around a text (any text with at least one token).
_PROBE = "a"


class HFTokenizer:
    """``tokenizer.json`` (the ``tokenizers`` library) behind the vocabulary interface of the generate paths."""

    def __init__(self, path: str, eos_id: int, pad_id: int = 0):
        from tokenizers import Tokenizer

        try:
            self._tokenizer = Tokenizer.from_file(path)
        except Exception as e:  # the library raises a bare Exception for a malformed file
            raise ValueError(f"{path} is not a Hugging Face tokenizer.json ({e})") from None
        self.tokenizer_file = path
        self.vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=True)
        for what, value in (("eos_id", eos_id), ("pad_id", pad_id)):
            if not 0 <= int(value) < self.vocab_size:
                raise ValueError(f"{path}: {what}={value} is outside the tokenizer's {self.vocab_size} ids")
        self.eos_id, self.pad_id = int(eos_id), int(pad_id)
        plain = self._tokenizer.encode(_PROBE, add_special_tokens=False).ids
        full = self._tokenizer.encode(_PROBE, add_special_tokens=True).ids
        start = next((i for i in range(len(full) - len(plain) + 1) if full[i:i + len(plain)] == plain), 0)
        self.prompt_prefix_ids: tuple[int, ...] = tuple(full[:start])

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens (as transformers' ``add_special_tokens=False``)."""
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``, special tokens dropped (as transformers' ``skip_special_tokens=True``)."""
        return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)


class SentencePieceTokenizer:
    """A SentencePiece model of any id layout behind the same interface as :class:`HFTokenizer`."""

    def __init__(self, path: str, eos_id: int, pad_id: int = 0, add_bos: bool = True):
        import sentencepiece

        try:
            self._processor = sentencepiece.SentencePieceProcessor(model_file=path)
        except (OSError, RuntimeError) as e:
            raise ValueError(f"{path} is not a SentencePiece model ({e})") from None
        self.sentencepiece_model_file = path
        self.vocab_size = self._processor.get_piece_size()
        for what, value in (("eos_id", eos_id), ("pad_id", pad_id)):
            if not 0 <= int(value) < self.vocab_size:
                raise ValueError(f"{path}: {what}={value} is outside the tokenizer's {self.vocab_size} ids")
        self.eos_id, self.pad_id = int(eos_id), int(pad_id)
        bos = self._processor.bos_id()
        self.prompt_prefix_ids: tuple[int, ...] = (bos,) if add_bos and bos >= 0 else ()

    def encode(self, text: str) -> list[int]:
        return self._processor.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; control pieces (``<s>``, ``</s>``) decode to nothing."""
        return self._processor.decode([int(i) for i in ids])


@functools.lru_cache(maxsize=16)
def _cached(backend: str, path: str, mtime: float, eos_id: int, pad_id: int, add_bos: bool):
    if backend == TOKENIZERS:
        return HFTokenizer(path, eos_id, pad_id)
    return SentencePieceTokenizer(path, eos_id, pad_id, add_bos)



def load_hf_tokenizer(path: str, eos_id: int, pad_id: int = 0, backend: str = TOKENIZERS, add_bos: bool = True):
    """The tokenizer of a ``tokenizer.json`` (``backend="tokenizers"``) or SentencePiece ``tokenizer.model``
    (``"sentencepiece"``) file, cached per (file, modification time, settings)."""
    if backend not in (TOKENIZERS, SENTENCEPIECE):
        raise ValueError(f"tokenizer backend {backend!r} must be {TOKENIZERS!r} or {SENTENCEPIECE!r}")
    return _cached(backend, os.path.abspath(path), os.path.getmtime(path), int(eos_id), int(pad_id), bool(add_bos))
