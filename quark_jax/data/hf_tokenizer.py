"""A second tokenizer backend: a Hugging Face ``tokenizer.json`` through the ``tokenizers`` library.

Imported Hugging Face models (``quark import_hf``) keep the tokenizer they were trained with. This backend
fills the small interface that the generate, complete and score paths use of a seqio vocabulary --
``encode(text) -> ids`` (no special tokens), ``decode(ids) -> text``, ``eos_id``, ``pad_id``, ``vocab_size`` --
plus :attr:`HFTokenizer.prompt_prefix_ids`: the ids transformers' tokenizer puts in front of a text (Llama's
``<s>``), which the generator puts in front of a prompt, never in front of a continuation or stop string. So
``prompt_prefix_ids + encode(text)`` is what ``transformers.AutoTokenizer(text).input_ids`` gives.

Importing this module is cheap: ``tokenizers`` is imported when a tokenizer is loaded.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

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

    def token_to_id(self, token: str) -> int | None:
        return self._tokenizer.token_to_id(token)


@functools.lru_cache(maxsize=16)
def _cached(path: str, mtime: float, eos_id: int, pad_id: int) -> HFTokenizer:
    return HFTokenizer(path, eos_id, pad_id)


def load_hf_tokenizer(path: str, eos_id: int, pad_id: int = 0) -> HFTokenizer:
    """The tokenizer of a ``tokenizer.json`` file, cached per (file, modification time, special ids)."""
    return _cached(os.path.abspath(path), os.path.getmtime(path), int(eos_id), int(pad_id))
