"""Token ids to text, one token at a time, for streaming: never half a character, never a stop string.

A byte-fallback tokenizer spells a character outside its vocabulary as several byte tokens (an emoji is four),
so decoding a prefix of a response can end in the middle of a character. :class:`TextStream` decodes the whole
response so far after every token and releases only text that cannot change any more: it holds back a
trailing U+FFFD (an incomplete UTF-8 sequence) and any tail that could still grow into one of the request's
stop strings. When a stop string appears, the text before it is final and the response ends there (the stop
string itself is not returned, as OpenAI and vLLM do).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

REPLACEMENT = "\ufffd"


class TextStream:
    """The text of a growing list of token ids, released in safe pieces (see the module docstring)."""

    def __init__(self, vocabulary: Any, stop: Sequence[str] = ()):
        self.vocabulary = vocabulary
        self.stop = [s for s in stop if s]
        self.tokens: list[int] = []
        self.released = ""  # text already handed out
        self.stopped = False  # a stop string was found; nothing more will be released

    def push(self, token: int) -> str:
        """Adds ``token``; returns the newly releasable text (often ``""``)."""
        if self.stopped:
            return ""
        self.tokens.append(int(token))
        return self._release(final=False)

    def finish(self) -> str:
        """The text still held back once the response has ended (a trailing stop-string prefix, say)."""
        return "" if self.stopped else self._release(final=True)

    def _release(self, final: bool) -> str:
        text = self.vocabulary.decode(self.tokens)
        cut = self._stop_at(text)
        if cut is not None:
            self.stopped = True
            text = text[:cut]
            final = True
        safe = len(text)
        if not final:
            while safe > len(self.released) and text[safe - 1] == REPLACEMENT:
                safe -= 1
            safe = self._hold_for_stop(text, safe)
        # Released text is never taken back: what is new is whatever lies past its length.
        piece = text[len(self.released): safe]
        self.released += piece
        return piece

    def _stop_at(self, text: str) -> int | None:
        """Where the first stop string starts in the unreleased part of ``text`` (None: none)."""
        start = max(0, len(self.released) - max((len(s) for s in self.stop), default=0))
        hits = [i for i in (text.find(s, start) for s in self.stop) if i >= 0]
        return min(hits) if hits else None

    def _hold_for_stop(self, text: str, end: int) -> int:
        """The end of what may be released: before the longest tail of ``text[:end]`` that begins a stop string."""
        for stop in self.stop:
            for k in range(min(len(stop) - 1, end), 0, -1):
                if text[end - k: end] == stop[:k]:
                    end -= k
                    break
        return end


def token_text(vocabulary: Any, token: int) -> str:
    """A readable string for one token id (the legacy ``logprobs.tokens`` field): SentencePiece's ``▁`` as a
    space, a byte token ``<0xE2>`` as ``bytes:\\xe2`` (OpenAI's spelling of part of a character)."""
    piece = _piece(vocabulary, int(token))
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        return f"bytes:\\x{piece[3:5].lower()}"
    return piece.replace("\u2581", " ")


def _piece(vocabulary: Any, token: int) -> str:
    processor = getattr(vocabulary, "tokenizer", None) or getattr(vocabulary, "_processor", None)
    if processor is not None and hasattr(processor, "id_to_piece"):
        return processor.id_to_piece(token)
    hf = getattr(vocabulary, "_tokenizer", None)
    if hf is not None and hasattr(hf, "id_to_token"):
        return hf.id_to_token(token) or ""
    return vocabulary.decode([token])
