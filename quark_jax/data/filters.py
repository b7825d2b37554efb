"""Cleaning filters: dedup, language id, quality heuristics, toxicity, PII scrubbing.

Each filter is a plain Python function on a document's text (used offline by ``quark data build``), and
the stateless ones also wrap into seqio preprocessors (:func:`seqio_filter`, :func:`seqio_map`) for tasks
that clean on the fly. A filter that rejects a document returns a short *reason* string
(``"quality:min_words"``, ``"language:fr"`` ...) so the build report can count what was removed and why;
``None`` means keep.

Thresholds live in frozen dataclasses registered with gin under ``quark_jax.data`` (e.g.
``quark_jax.data.QualityConfig.min_words = 30``); bind them in a gin file passed to ``quark data build``.

Deduplication is stateful (it remembers what it saw), so it runs offline in ``quark data build`` and not
as a seqio preprocessor, where a second epoch would see every document as a duplicate.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import ipaddress
import json
import math
import pathlib
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence

import gin
import numpy as np

RESOURCES = pathlib.Path(__file__).resolve().parent / "resources"


# ---- configuration (gin) ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class QualityConfig:
    """Gopher/C4-style thresholds (Rae et al. 2021, app. A; Raffel et al. 2020, sec. 2.2).

    Prose rules apply to sources of kind "prose", code rules to kind "code": the prose rules would throw
    away nearly all source code (no stop words, many symbols), and the code rules target minified or
    data-dump files instead.
    """

    min_words: int = 20
    max_words: int = 100_000
    min_mean_word_length: float = 3.0
    max_mean_word_length: float = 10.0
    max_symbol_word_ratio: float = 0.1  # '#' and '...' per word
    max_bullet_line_fraction: float = 0.9
    max_ellipsis_line_fraction: float = 0.3
    min_alpha_word_fraction: float = 0.7  # Gopher uses 0.8 on web text; docstrings name many identifiers
    min_stop_words: int = 2
    max_duplicate_line_fraction: float = 0.3
    max_top_2gram_char_fraction: float = 0.2
    max_duplicate_5gram_char_fraction: float = 0.15
    max_boilerplate_line_fraction: float = 0.3
    # Kind "chat" (short dialogue turns) uses the prose rules with this word minimum and no stop-word rule.
    min_chat_words: int = 5
    max_chat_mean_word_length: float = 15.0  # qualified names such as ``urllib.response.addbase``
    # Code rules.
    max_code_line_length: int = 1000
    max_code_mean_line_length: float = 100.0
    min_code_alnum_fraction: float = 0.25
    max_code_duplicate_line_fraction: float = 0.6


@dataclasses.dataclass(frozen=True)
class CleaningConfig:
    """Which filters ``quark data build`` runs, and their thresholds."""

    exact_dedup: bool = True
    near_dedup: bool = True
    near_dup_threshold: float = 0.8  # estimated Jaccard similarity of word 5-gram sets
    near_dup_recall_weight: float = 0.8  # LSH tuning: weight of missed duplicates vs false candidates
    num_perm: int = 64
    languages: Sequence[str] = ("en",)  # empty: keep every language
    min_language_confidence: float = 0.5
    quality: QualityConfig = QualityConfig()
    toxicity: bool = True
    toxicity_threshold: float = 0.5
    scrub_pii: bool = True


def _configurable(cls):
    try:
        return gin.external_configurable(cls, module="quark_jax.data")
    except ValueError:  # module re-imported: the class is registered already
        return gin.get_configurable(f"quark_jax.data.{cls.__name__}")


_GIN_QUALITY, _GIN_CLEANING = _configurable(QualityConfig), _configurable(CleaningConfig)


def cleaning_config() -> CleaningConfig:
    """The :class:`CleaningConfig` with the parsed gin bindings applied.

    Bind thresholds as ``quark_jax.data.QualityConfig.min_words = 30`` and switches as
    ``quark_jax.data.CleaningConfig.near_dup_threshold = 0.7``.
    """
    return _GIN_CLEANING(quality=_GIN_QUALITY())


# ---- exact and near deduplication ----------------------------------------------------------------------
_WS = re.compile(r"\s+")


def normalize(text: str) -> str:
    """NFKC, lower case, whitespace runs collapsed: the key for exact deduplication."""
    return _WS.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


def exact_hash(text: str) -> bytes:
    """16-byte digest of :func:`normalize` (documents equal up to case and spacing share it)."""
    return hashlib.blake2b(normalize(text).encode("utf-8"), digest_size=16).digest()


class ExactDeduper:
    """Remembers normalized-text hashes; :meth:`check` returns ``"exact_duplicate"`` the second time."""

    def __init__(self):
        self._seen: dict[bytes, str] = {}

    def check(self, text: str, doc_id: str = "") -> str | None:
        key = exact_hash(text)
        if key in self._seen:
            return "exact_duplicate"
        self._seen[key] = doc_id
        return None


_WORD = re.compile(r"\w+")


def shingles(text: str, n: int = 5) -> set[bytes]:
    """Word n-gram set of the normalized text (the whole text when it has fewer than n words)."""
    words = _WORD.findall(normalize(text))
    if len(words) < n:
        return {" ".join(words).encode("utf-8")}
    return {" ".join(words[i:i + n]).encode("utf-8") for i in range(len(words) - n + 1)}


class NearDeduper:
    """MinHash LSH near-duplicate detection (datasketch): keeps the first of each near-duplicate group.

    Documents are word 5-gram sets; LSH bands are chosen by datasketch for ``threshold`` (estimated
    Jaccard). ``check`` returns ``"near_duplicate"`` when an earlier document is a likely match, else
    indexes the document and returns None.
    """

    def __init__(self, threshold: float = 0.8, num_perm: int = 64, seed: int = 1, recall_weight: float = 0.8):
        from datasketch import MinHash, MinHashLSH

        if not 0.0 < threshold < 1.0:
            raise ValueError(f"near_dup_threshold={threshold} must be in (0, 1)")
        if not 0.0 < recall_weight < 1.0:
            raise ValueError(f"near_dup_recall_weight={recall_weight} must be in (0, 1)")
        self._minhash = MinHash
        # datasketch picks the (bands, rows) split minimising weighted false-positive and false-negative
        # areas; weighting misses 0.8 (bench/near_dedup.py) raised recall of one-word edits of 60-word
        # documents (Jaccard ~0.84) from 0.60 to 0.90 at the same precision (1.0) and speed.
        self._lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=(1 - recall_weight, recall_weight))
        self._num_perm = num_perm
        self._seed = seed
        self._count = 0

    def signature(self, text: str):
        """The MinHash of ``text``'s shingles (batch update: one numpy pass per document)."""
        mh = self._minhash(num_perm=self._num_perm, seed=self._seed)
        mh.update_batch(list(shingles(text)))
        return mh

    def check(self, text: str, doc_id: str = "") -> str | None:
        mh = self.signature(text)
        if self._lsh.query(mh):
            return "near_duplicate"
        self._lsh.insert(f"{self._count}", mh, check_duplication=False)
        self._count += 1
        return None


# ---- language identification ---------------------------------------------------------------------------
_IDENTIFIER = None


def identify_language(text: str) -> tuple[str, float]:
    """(ISO 639-1 code, probability) from py3langid, whose model ships inside its wheel (no download)."""
    global _IDENTIFIER
    if _IDENTIFIER is None:
        from py3langid.langid import MODEL_DIR, MODEL_FILE, LanguageIdentifier

        _IDENTIFIER = LanguageIdentifier.from_modelpath(MODEL_DIR / MODEL_FILE, norm_probs=True)
    # The first 2,000 characters decide: enough for a stable answer, and cost stays flat for long documents.
    lang, prob = _IDENTIFIER.classify(text[:2000])
    return lang, float(prob)


def language_filter(text: str, languages: Sequence[str] = ("en",), min_confidence: float = 0.5) -> str | None:
    """``"language:xx"`` when the text is not in ``languages`` with at least ``min_confidence``."""
    if not languages:
        return None
    lang, prob = identify_language(text)
    if lang not in languages:
        return f"language:{lang}"
    if prob < min_confidence:
        return "language:low_confidence"
    return None


# ---- quality heuristics --------------------------------------------------------------------------------
STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})  # Gopher's list
BOILERPLATE = ("lorem ipsum", "terms of use", "privacy policy", "cookie policy", "all rights reserved",
               "enable javascript", "javascript is disabled", "click here", "subscribe to our newsletter")
_BULLETS = ("•", "-", "*", "‣", "◦", "·")


def _duplicate_ngram_char_fraction(words: list[str], n: int) -> float:
    """Share of word characters covered by n-grams that occur more than once (Gopher's repetition rule)."""
    if len(words) < n:
        return 0.0
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    counts = collections.Counter(grams)
    covered = np.zeros(len(words), bool)
    for i, g in enumerate(grams):
        if counts[g] > 1:
            covered[i:i + n] = True
    lengths = np.fromiter((len(w) for w in words), int, len(words))
    return float(lengths[covered].sum() / max(1, lengths.sum()))


def _top_ngram_char_fraction(words: list[str], n: int) -> float:
    if len(words) < n:
        return 0.0
    counts = collections.Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    gram, count = counts.most_common(1)[0]
    return sum(len(w) for w in gram) * count / max(1, sum(len(w) for w in words))


def quality_filter(text: str, kind: str = "prose", config: QualityConfig = QualityConfig()) -> str | None:
    """``"quality:<rule>"`` for the first rule ``text`` breaks, else None. ``kind``: "prose", "chat" or "code"."""
    lines = [l for l in text.splitlines() if l.strip()]
    if kind == "code":
        if not lines:
            return "quality:empty"
        if max(len(l) for l in lines) > config.max_code_line_length:
            return "quality:code_line_length"
        # Mean line length only means "minified" in files of some size (a one-line module docstring is fine).
        if len(text) > 500 and sum(len(l) for l in lines) / len(lines) > config.max_code_mean_line_length:
            return "quality:code_mean_line_length"
        if sum(c.isalnum() for c in text) / len(text) < config.min_code_alnum_fraction:
            return "quality:code_alnum_fraction"
        stripped = [l.strip() for l in lines]
        if len(stripped) >= 10 and 1 - len(set(stripped)) / len(stripped) > config.max_code_duplicate_line_fraction:
            return "quality:code_duplicate_lines"
        return None

    if kind == "chat":
        config = dataclasses.replace(config, min_words=config.min_chat_words, min_stop_words=0,
                                     max_mean_word_length=config.max_chat_mean_word_length)
    words = text.split()
    if not config.min_words <= len(words) <= config.max_words:
        return "quality:word_count"
    mean_len = sum(len(w) for w in words) / len(words)
    if not config.min_mean_word_length <= mean_len <= config.max_mean_word_length:
        return "quality:mean_word_length"
    symbols = text.count("#") + text.count("...") + text.count("…")
    if symbols / len(words) > config.max_symbol_word_ratio:
        return "quality:symbol_ratio"
    if lines and sum(l.lstrip().startswith(_BULLETS) for l in lines) / len(lines) > config.max_bullet_line_fraction:
        return "quality:bullet_lines"
    if lines and sum(l.rstrip().endswith(("...", "…")) for l in lines) / len(lines) > config.max_ellipsis_line_fraction:
        return "quality:ellipsis_lines"
    if sum(any(c.isalpha() for c in w) for w in words) / len(words) < config.min_alpha_word_fraction:
        return "quality:alpha_words"
    lower = [w.lower().strip(".,;:!?\"'()") for w in words]
    if sum(w in STOP_WORDS for w in lower) < config.min_stop_words:
        return "quality:stop_words"
    if len(lines) >= 5 and 1 - len(set(lines)) / len(lines) > config.max_duplicate_line_fraction:
        return "quality:duplicate_lines"
    if _top_ngram_char_fraction(lower, 2) > config.max_top_2gram_char_fraction:
        return "quality:top_2gram"
    if _duplicate_ngram_char_fraction(lower, 5) > config.max_duplicate_5gram_char_fraction:
        return "quality:duplicate_5grams"
    if lines:
        boiler = sum(any(b in l.lower() for b in BOILERPLATE) for l in lines)
        if boiler / len(lines) > config.max_boilerplate_line_fraction:
            return "quality:boilerplate"
    return None


# ---- toxicity ------------------------------------------------------------------------------------------
# A small lexicon of insult and threat words (no slurs are listed in the source; the classifier learns
# from the shipped labelled examples). A hit adds a feature token, which the classifier weighs.
TOXIC_LEXICON = frozenset({
    "idiot", "idiots", "stupid", "moron", "morons", "dumbass", "loser", "losers", "worthless", "pathetic",
    "scum", "trash", "disgusting", "hate", "shut", "die", "kill", "hurt", "ugly", "imbecile", "cretin",
    "jerk", "pig", "vermin", "filth", "clown", "garbage", "useless", "brainless", "incompetent",
})
_TOKEN = re.compile(r"[a-z']+")
# Abuse is aimed at a person addressed in the second person; technical text uses the lexicon's words
# (a process is killed, memory is garbage-collected) without one.
_ADDRESSEE = frozenset({"you", "you're", "your", "yours", "yourself", "ya", "u", "ur", "author", "guy"})


def _tox_features(text: str) -> list[str]:
    words = _TOKEN.findall(text.lower())
    feats = words + [f"{a}_{b}" for a, b in zip(words, words[1:])]
    you = any(w in ("you", "you're", "your", "ur", "u", "yourself") for w in words)
    for w in words:
        if w in TOXIC_LEXICON:
            feats.append("__lexicon__")
            if you:
                feats.append("__lexicon_second_person__")
    return feats


class ToxicityClassifier:
    """Multinomial naive Bayes over words, word bigrams and lexicon-hit features.

    Trained by :meth:`train` on the labelled examples the project ships
    (``resources/toxicity_labelled.jsonl``, split ``train``); its precision and recall on the ``test``
    split are measured by ``tests/data/test_filters.py``. It is a small, transparent baseline for
    short English sentences, not a production moderation model.
    """

    def __init__(self, log_prior: dict[int, float], log_likelihood: dict[int, dict[str, float]]):
        self.log_prior, self.log_likelihood = log_prior, log_likelihood

    @classmethod
    def train(cls, examples: Iterable[tuple[str, int]], alpha: float = 0.5) -> ToxicityClassifier:
        """Fits on ``(text, label)`` pairs (1 = toxic) with additive smoothing ``alpha``."""
        counts = {0: collections.Counter(), 1: collections.Counter()}
        docs = collections.Counter()
        for text, label in examples:
            counts[label].update(_tox_features(text))
            docs[label] += 1
        vocab = set(counts[0]) | set(counts[1])
        total = sum(docs.values())
        log_prior = {c: math.log(docs[c] / total) for c in (0, 1)}
        likelihood = {}
        for c in (0, 1):
            denom = sum(counts[c].values()) + alpha * len(vocab)
            likelihood[c] = {w: math.log((counts[c][w] + alpha) / denom) for w in vocab}
        return cls(log_prior, likelihood)

    def score(self, text: str) -> float:
        """Probability that ``text`` is toxic."""
        logp = dict(self.log_prior)
        for f in _tox_features(text):
            if f in self.log_likelihood[0]:  # features never seen in training carry no evidence
                for c in (0, 1):
                    logp[c] += self.log_likelihood[c][f]
        diff = max(-50.0, min(50.0, logp[0] - logp[1]))
        return 1.0 / (1.0 + math.exp(diff))


def load_labelled(name: str, split: str | None = None) -> list[dict]:
    """Records of a shipped labelled set (``resources/<name>.jsonl``), optionally one split."""
    path = RESOURCES / f"{name}.jsonl"
    with open(path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [r for r in records if split is None or r["split"] == split]


_TOXICITY: ToxicityClassifier | None = None


def toxicity_classifier() -> ToxicityClassifier:
    """The classifier trained on the shipped ``train`` examples (trained once per process, ~ms)."""
    global _TOXICITY
    if _TOXICITY is None:
        _TOXICITY = ToxicityClassifier.train((r["text"], r["label"]) for r in load_labelled("toxicity_labelled", "train"))
    return _TOXICITY


def is_toxic(sentence: str, threshold: float = 0.5) -> bool:
    """The sentence-level decision: a lexicon word and a person addressed or named are present, *and* the
    classifier scores above ``threshold``.

    The gate keeps precision on text unlike the training set (code, technical prose): the
    classifier only ever decides between a toxic and a harmless use of a flagged word ("kill the
    process", "garbage collection"). Insults with no lexicon word or no addressee are missed; the recall
    figure in the tests shows the cost.
    """
    words = set(_TOKEN.findall(sentence.lower()))
    if not words & TOXIC_LEXICON or not words & _ADDRESSEE:
        return False
    return toxicity_classifier().score(sentence) > threshold


def toxic_line(text: str, threshold: float = 0.5, kind: str = "prose") -> str | None:
    """The first line of ``text`` that :func:`is_toxic` (the evidence shown in build reports), or None."""
    for line in text.splitlines():
        if kind == "code" and not line.lstrip().startswith(("#", "//")):
            continue
        if len(line.split()) >= 3 and is_toxic(line, threshold):
            return line
    return None


def toxicity_filter(text: str, threshold: float = 0.5, kind: str = "prose") -> str | None:
    """``"toxicity"`` when any line of the document with three or more words :func:`is_toxic`.

    Lines are scored one by one (the classifier is trained on sentences), so one abusive line in a long
    text still counts. In code (``kind="code"``) only comment lines are scored.
    """
    return "toxicity" if toxic_line(text, threshold, kind) is not None else None


# ---- PII scrubbing -------------------------------------------------------------------------------------
def _luhn_ok(digits: str) -> bool:
    total, parity = 0, len(digits) % 2
    for i, ch in enumerate(digits):
        d = int(ch)
        if i % 2 == parity:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _entropy(s: str) -> float:
    counts = collections.Counter(s)
    return -sum(c / len(s) * math.log2(c / len(s)) for c in counts.values())


# Known secret shapes (prefix + charset + length), from the providers' documented token formats.
_KEY_PREFIXES = re.compile(
    r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |PGP )?PRIVATE KEY(?: BLOCK)?-----.*?-----END [A-Z ]*PRIVATE KEY(?: BLOCK)?-----"
    r"|\bAKIA[0-9A-Z]{16}\b"                      # AWS access key id
    r"|\bgh[pousr]_[A-Za-z0-9]{36,}\b"            # GitHub tokens
    r"|\bgithub_pat_[A-Za-z0-9_]{22,}\b"
    r"|\bsk-(?:proj-)?[A-Za-z0-9_-]{20,}\b"       # OpenAI-style
    r"|\b[rs]k_(?:live|test)_[A-Za-z0-9]{16,}\b"  # Stripe
    r"|\bxox[abprs]-[A-Za-z0-9-]{10,}\b"          # Slack
    r"|\bAIza[0-9A-Za-z_-]{35}\b"                 # Google API key
    r"|\bglpat-[A-Za-z0-9_-]{20,}\b",             # GitLab
    re.S,
)
# `password = "..."`, `api_key: ...`: the value is replaced when it looks random enough.
_ASSIGNED_SECRET = re.compile(
    r"(?i)\b((?:api[_-]?key|secret(?:[_-]?key)?|access[_-]?token|auth[_-]?token|password|passwd|token)"
    r"\s*[=:]\s*[\"']?)([^\s\"',;]{8,})"
)
_LONG_TOKEN = re.compile(r"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{32,128}(?![A-Za-z0-9+/_-])")
_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_CARD = re.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d-])")
_SSN = re.compile(r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b")
_NINO = re.compile(r"\b(?!BG|GB|NK|KN|TN|NT|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b")
_IPV4 = re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\d.])")
_IPV6 = re.compile(r"(?<![:\w])(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}(?![:\w])")
# Space/dash separated (optionally +country and (area)), or the dotted US form; dotted quads are IPs.
_PHONE = re.compile(
    r"(?<![\w+.])(?:\+\d{1,3}[ -]?)?(?:\(\d{2,4}\)[ -]?|\d{2,4}[ -])\d{3,4}[ -]\d{3,4}(?![\w-]|\.\d)"
    r"|(?<![\w.])\d{3}\.\d{3}\.\d{4}(?![\w.])"
)
# Addresses that identify no one stay: loopback, unspecified, netmasks, and the RFC 5737 documentation ranges.
_DOCUMENTATION_NETS = tuple(ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"))
_DOCUMENTATION_NET6 = ipaddress.ip_network("2001:db8::/32")
_MASK_OCTETS = frozenset({"0", "128", "192", "224", "240", "248", "252", "254", "255"})

PLACEHOLDERS = ("<SECRET>", "<EMAIL>", "<CREDIT_CARD>", "<NATIONAL_ID>", "<IP_ADDRESS>", "<PHONE>")


def _looks_random(token: str, min_entropy: float) -> bool:
    classes = sum(bool(re.search(p, token)) for p in ("[a-z]", "[A-Z]", "[0-9]"))
    return classes >= 2 and any(c.isdigit() for c in token) and _entropy(token) >= min_entropy


def scrub_pii(text: str) -> tuple[str, collections.Counter]:
    """Replaces PII with typed placeholders; returns the new text and a count per placeholder.

    Order matters: secrets first (a key may contain digit runs), then e-mail, Luhn-valid card numbers,
    national ids (US SSN, UK NINO), IP addresses (host addresses, public and private; loopback,
    multicast, reserved, documentation ranges, masks and CIDR networks are kept), phones.
    """
    counts: collections.Counter = collections.Counter()

    def sub(pattern: re.Pattern, placeholder: str, s: str, accept: Callable[[re.Match], bool] = lambda m: True,
            group: int = 0) -> str:
        def repl(m: re.Match) -> str:
            if not accept(m):
                return m.group(0)
            counts[placeholder] += 1
            if group:
                return m.group(0)[: m.start(group) - m.start(0)] + placeholder
            return placeholder
        return pattern.sub(repl, s)

    text = sub(_KEY_PREFIXES, "<SECRET>", text)
    text = sub(_ASSIGNED_SECRET, "<SECRET>", text, lambda m: _looks_random(m.group(2), 3.0), group=2)
    text = sub(_LONG_TOKEN, "<SECRET>", text,
               lambda m: _looks_random(m.group(0), 4.2) and not re.fullmatch(r"[0-9a-fA-F]+", m.group(0)))
    text = sub(_EMAIL, "<EMAIL>", text)

    def card_ok(m: re.Match) -> bool:
        digits = re.sub(r"\D", "", m.group(0))
        return 13 <= len(digits) <= 19 and _luhn_ok(digits) and len(set(digits)) > 1

    text = sub(_CARD, "<CREDIT_CARD>", text, card_ok)
    text = sub(_SSN, "<NATIONAL_ID>", text)
    text = sub(_NINO, "<NATIONAL_ID>", text)

    def ip_ok(m: re.Match) -> bool:
        if m.string[m.end():m.end() + 1] == "/":
            return False  # a network in CIDR notation ('10.0.0.0/8') names a range, not a host
        octets = m.group(0).split(".")
        if octets[0] in ("0", "255") and set(octets) <= _MASK_OCTETS | {"31", "63", "127", "15", "7", "3", "1"}:
            return False  # a netmask or host mask
        addr = ipaddress.ip_address(m.group(0))
        return not (addr.is_loopback or addr.is_unspecified or addr.is_multicast or addr.is_reserved
                    or any(addr in n for n in _DOCUMENTATION_NETS))

    def ipv6_ok(m: re.Match) -> bool:
        if m.string[m.end():m.end() + 1] == "/":
            return False
        addr = ipaddress.ip_address(m.group(0))
        return not (m.group(0).lower().startswith("ffff") or addr in _DOCUMENTATION_NET6 or addr.is_loopback)

    text = sub(_IPV4, "<IP_ADDRESS>", text, ip_ok)
    text = sub(_IPV6, "<IP_ADDRESS>", text, ipv6_ok)
    text = sub(_PHONE, "<PHONE>", text, lambda m: sum(c.isdigit() for c in m.group(0)) >= 9)
    return text, counts


# ---- seqio wrappers --------------------------------------------------------------------------------------
def seqio_filter(reject: Callable[[str], str | None], key: str = "text"):
    """A seqio preprocessor that drops examples for which ``reject(text)`` returns a reason.

    Example: ``register_source_task(name, source, extra_preprocessors=[seqio_filter(quality_filter)])``.
    """
    import tensorflow as tf

    def keep(text) -> bool:
        return reject(text.numpy().decode("utf-8")) is None

    def preprocessor(dataset: tf.data.Dataset) -> tf.data.Dataset:
        return dataset.filter(lambda ex: tf.py_function(keep, [ex[key]], tf.bool))

    preprocessor.__name__ = f"seqio_filter_{getattr(reject, '__name__', 'fn')}"
    return preprocessor


def seqio_map(transform: Callable[[str], str], key: str = "text"):
    """A seqio preprocessor applying ``transform`` to the text (e.g. ``lambda t: scrub_pii(t)[0]``)."""
    import tensorflow as tf

    def apply(text):
        return transform(text.numpy().decode("utf-8")).encode("utf-8")

    def preprocessor(dataset: tf.data.Dataset) -> tf.data.Dataset:
        def fn(ex):
            out = dict(ex)
            out[key] = tf.ensure_shape(tf.py_function(apply, [ex[key]], tf.string), [])
            return out
        return dataset.map(fn)

    preprocessor.__name__ = f"seqio_map_{getattr(transform, '__name__', 'fn')}"
    return preprocessor
