"""Views of a text that undo the usual disguises, so a pattern written once matches them all.

An attacker hides a request from string matching by changing its surface: upper/lower case and Unicode
look-alikes, leetspeak (``h0w t0 m4k3``), letters spaced or dotted apart (``i g n o r e``), zero-width
characters, or by encoding it (base64, hex, ROT13). :func:`views` returns the text under each reversal;
a rail checks every view and reports which one matched.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
import unicodedata

_ZERO_WIDTH = re.compile("[\u200b\u200c\u200d\u2060\ufeff\u00ad]")
_SPACE = re.compile(r"\s+")
# Digits and symbols that stand for letters in leetspeak. Applied only inside words that also hold letters
# (or to single-character "words" such as "@"), so plain numbers ("3 apples", "2024") stay numbers.
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "9": "g",
                       "@": "a", "$": "s", "!": "i", "|": "l", "+": "t", "€": "e"})
_LEET_WORD = re.compile(r"[\w@$!|+€]+")
# Letters separated by single spaces, dots, dashes or underscores: "i g n o r e", "b.o.m.b".
_SPACED = re.compile(r"\b(?:\w[ ._\-*]){2,}\w\b")
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{16,}={0,2}|[A-Za-z0-9_-]{16,}={0,2}")
_HEX_RUN = re.compile(r"\b(?:[0-9a-fA-F]{2}[ :]?){8,}\b")

MAX_VIEW_CHARS = 20_000  # a rail looks at no more than this of one text (and of each decoded view)


def basic(text: str) -> str:
    """NFKC (full-width and other compatibility forms folded), zero-width characters removed, lower case,
    whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text[:MAX_VIEW_CHARS])
    return _SPACE.sub(" ", _ZERO_WIDTH.sub("", text)).lower().strip()


def strip_accents(text: str) -> str:
    """``é`` -> ``e``: multilingual phrase lists are written without accents and matched on this view."""
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def unleet(text: str) -> str:
    """Leetspeak undone in every word that mixes letters with look-alike digits or symbols."""
    def word(m: re.Match) -> str:
        w = m.group(0)
        if any(c.isalpha() for c in w) or len(w) == 1 and not w.isdigit():
            return w.translate(_LEET)
        return w
    return _LEET_WORD.sub(word, text)


def unspace(text: str) -> str:
    """Letters spaced or dotted apart joined back into words (``i g n o r e`` -> ``ignore``); a wider gap
    (two or more spaces) separates words. Whitespace is collapsed afterwards."""
    joined = _SPACED.sub(lambda m: re.sub(r"[ ._\-*]", "", m.group(0)), text)
    return _SPACE.sub(" ", joined).strip()


def _printable(raw: bytes) -> str | None:
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not decoded or sum(c.isprintable() or c.isspace() for c in decoded) / len(decoded) < 0.95:
        return None
    if sum(c.isalpha() for c in decoded) / len(decoded) < 0.5:
        return None
    return decoded


def decoded_runs(text: str) -> list[str]:
    """The readable texts hidden in base64 (standard or URL-safe) and hex runs of ``text``."""
    found = []
    for m in _BASE64_RUN.finditer(text[:MAX_VIEW_CHARS]):
        run = m.group(0)
        padded = run + "=" * (-len(run) % 4)
        for decode in (base64.b64decode, base64.urlsafe_b64decode):
            try:
                plain = _printable(decode(padded))
            except (binascii.Error, ValueError):
                continue
            if plain:
                found.append(plain)
                break
    for m in _HEX_RUN.finditer(text[:MAX_VIEW_CHARS]):
        try:
            plain = _printable(bytes.fromhex(re.sub(r"[ :]", "", m.group(0))))
        except ValueError:
            continue
        if plain:
            found.append(plain)
    return found


def views(text: str) -> dict[str, str]:
    """``{name: view}``: the basic normal form, accents stripped, leetspeak undone, spacing undone, ROT13, and
    the decoded base64/hex runs (joined), each lower-cased. Views equal to an earlier one are left out."""
    base = basic(text)
    uncollapsed = _ZERO_WIDTH.sub("", unicodedata.normalize("NFKC", text[:MAX_VIEW_CHARS])).lower()
    candidates = {"text": base, "accents": strip_accents(base), "leet": unleet(strip_accents(base)),
                  "spaced": unspace(unleet(strip_accents(uncollapsed)))}
    decoded = decoded_runs(text)
    if decoded:
        candidates["decoded"] = basic(" ".join(decoded))
    if "rot13" in base or "rot-13" in base or "rot 13" in base:
        candidates["rot13"] = codecs.decode(base, "rot13")
    out: dict[str, str] = {}
    for name, view in candidates.items():
        if view not in out.values():
            out[name] = view
    return out
