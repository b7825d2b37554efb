"""The rails: one check each, implementing :class:`quark_jax.safety.types.Rail`.

Every rail answers a :class:`Verdict` for one text and a place (``where``): ``"input"`` (a user turn),
``"output"`` (model text), ``"tool"`` / ``"retrieved"`` (untrusted data entering the context). What each
does where (the decision table is in ``docs/safety.md``):

========================  ==================  ================  ===========================
rail                      input               output            tool / retrieved
========================  ==================  ================  ===========================
``pii``                   warn (logged)       redact            allow (the output is redacted)
``secrets``               block a request to  redact            redact
                          reveal; redact a
                          pasted secret
``toxicity``              warn                block             allow
``jailbreak``             block               allow             redact the instruction lines
``harmful``               block               allow             allow
``topic:<name>``          block               block             allow
========================  ==================  ================  ===========================
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from quark_jax.data import filters
from quark_jax.safety import lexicons, normalize
from quark_jax.safety.types import Action, Verdict

UNTRUSTED = ("tool", "retrieved")
WHERE = ("input", "output", *UNTRUSTED)


def _allow(name: str, text: str) -> Verdict:
    return Verdict(Action.ALLOW, name, "", text)


def _first_match(patterns: Sequence[re.Pattern], views: Mapping[str, str]) -> tuple[str, str] | None:
    """(view name, matched text) of the first pattern matching any view, or None."""
    for view_name, view in views.items():
        for pattern in patterns:
            m = pattern.search(view)
            if m:
                return view_name, m.group(0).strip()[:80]
    return None


def _disguise(view_name: str) -> str:
    return "" if view_name in ("text", "accents") else f" (after undoing {view_name})"


class PiiRail:
    """Personal data (e-mail, phone, card, national id, IP) through ``filters.scrub_pii``: redacted in model
    output, logged (warn) in a user's own turn, which may legitimately carry the user's own address."""

    name = "pii"

    def check(self, text: str, where: str) -> Verdict:
        scrubbed, counts = filters.scrub_pii(text)
        counts = {k: v for k, v in counts.items() if k != "<SECRET>"}  # secrets are the secrets rail's
        if not counts:
            return _allow(self.name, text)
        kinds = ", ".join(f"{n} {k.strip('<>').lower()}" for k, n in sorted(counts.items()))
        if where == "output":
            return Verdict(Action.REDACT, self.name, f"personal data redacted: {kinds}", scrubbed)
        if where == "input":
            return Verdict(Action.WARN, self.name, f"the message holds personal data: {kinds}", text)
        return _allow(self.name, text)


class SecretsRail:
    """API keys, private keys, tokens and passwords. A request to reveal credentials is blocked (input); a
    secret in any text is redacted (the model never sees a pasted key, so it cannot repeat it; a key in model
    output or in a tool result never reaches the user)."""

    name = "secrets"

    def __init__(self):
        self._requests = lexicons.compile_all(lexicons.SECRET_REQUEST)
        self._url_password = re.compile(r"\b([a-z][a-z0-9+.-]*://[^\s:/@]+:)([^\s@/]+)(@)", re.I)

    def redact(self, text: str) -> tuple[str, int]:
        """(text with every secret replaced by ``<SECRET>``, how many)."""
        text, count = self._url_password.subn(r"\1<SECRET>\3", text)
        # The secret shapes only: scrub_pii as a whole would also replace e-mails and phones, the pii rail's job.
        for pattern, accept, group in _SECRET_PATTERNS:
            text, n = _sub(pattern, text, accept, group)
            count += n
        return text, count

    def check(self, text: str, where: str) -> Verdict:
        if where == "input":
            hit = _first_match(self._requests, normalize.views(text))
            if hit:
                view, matched = hit
                return Verdict(Action.BLOCK, self.name, f"asks to reveal credentials: {matched!r}{_disguise(view)}",
                               text)
        redacted, count = self.redact(text)
        if count:
            return Verdict(Action.REDACT, self.name, f"{count} secret(s) redacted (keys, tokens or passwords)",
                           redacted)
        return _allow(self.name, text)


# The secret shapes of filters.scrub_pii (its documented private patterns, reused rather than copied).
_SECRET_PATTERNS = (
    (filters._KEY_PREFIXES, lambda m: True, 0),
    (filters._ASSIGNED_SECRET, lambda m: filters._looks_random(m.group(2), 3.0), 2),
    (filters._LONG_TOKEN, lambda m: filters._looks_random(m.group(0), 4.2)
     and not re.fullmatch(r"[0-9a-fA-F]+", m.group(0)), 0),
    # A private-key header alone (a streamed or truncated key) is a secret too.
    (re.compile(r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |PGP |ENCRYPTED )?PRIVATE KEY(?: BLOCK)?-----[\s\S]*"), lambda m: True, 0),
)


def _sub(pattern: re.Pattern, text: str, accept, group: int) -> tuple[str, int]:
    count = 0

    def repl(m: re.Match) -> str:
        nonlocal count
        if not accept(m):
            return m.group(0)
        count += 1
        if group:
            return m.group(0)[: m.start(group) - m.start(0)] + "<SECRET>"
        return "<SECRET>"
    return pattern.sub(repl, text), count


class ToxicityRail:
    """Abusive lines (``filters.toxic_line``: a lexicon word aimed at a person, confirmed by the shipped
    classifier): blocked in model output, logged in user input (``input_action``)."""

    name = "toxicity"

    def __init__(self, threshold: float = 0.5, input_action: Action = Action.WARN,
                 output_action: Action = Action.BLOCK):
        self.threshold, self.input_action, self.output_action = threshold, Action(input_action), Action(output_action)

    def check(self, text: str, where: str) -> Verdict:
        if where not in ("input", "output"):
            return _allow(self.name, text)
        line = filters.toxic_line(text, self.threshold)
        if line is None:
            return _allow(self.name, text)
        action = self.input_action if where == "input" else self.output_action
        return Verdict(action, self.name, f"abusive language: {line.strip()[:80]!r}", text)


class Classifier(Protocol):
    """What :class:`JailbreakRail` needs of a trained intent classifier
    (``quark_jax.inference.classifier.Classifier``): label probabilities per text."""

    def predict_proba(self, texts: Sequence[str]) -> Any: ...


def _probability(classifier: Classifier, text: str, label: str) -> float:
    result = classifier.predict_proba([text])
    if isinstance(result, Mapping):  # one text: {label: prob}
        return float(result.get(label, 0.0))
    return float(result[0].get(label, 0.0))


class JailbreakRail:
    """Jailbreak wrappers and prompt injection: override phrasing ("ignore previous instructions", in six
    languages), unrestricted personas, encode-and-obey tricks and requests for the system prompt, matched on
    every normalised view (leetspeak, spacing, base64/hex undone). Optionally also a trained classifier:
    probability of ``label`` >= ``threshold`` blocks.

    Input: block. Untrusted data: the lines that address the assistant are redacted (:func:`strip_injections`).
    """

    name = "jailbreak"

    def __init__(self, classifier: Classifier | None = None, threshold: float = 0.5, label: str = "unsafe"):
        self.classifier, self.threshold, self.label = classifier, threshold, label
        self._patterns = {kind: lexicons.compile_all(p) for kind, p in lexicons.JAILBREAK.items()}
        self._patterns["translation"] = lexicons.compile_all(lexicons.MULTILINGUAL_OVERRIDE)
        self._injection = lexicons.compile_all(lexicons.INJECTION)

    def check(self, text: str, where: str) -> Verdict:
        if where in UNTRUSTED:
            cleaned, removed = strip_injections(text, self._injection)
            if removed:
                return Verdict(Action.REDACT, self.name, f"{removed} instruction line(s) removed from {where} data",
                               cleaned)
            return _allow(self.name, text)
        if where != "input":
            return _allow(self.name, text)
        views = normalize.views(text)
        for kind, patterns in self._patterns.items():
            hit = _first_match(patterns, views)
            if hit:
                view, matched = hit
                return Verdict(Action.BLOCK, self.name, f"jailbreak ({kind}): {matched!r}{_disguise(view)}", text)
        if self.classifier is not None:
            p = _probability(self.classifier, text, self.label)
            if p >= self.threshold:
                return Verdict(Action.BLOCK, self.name, f"classifier: p({self.label})={p:.2f} >= {self.threshold}",
                               text)
        return _allow(self.name, text)


REMOVED = "[removed: text addressed to the assistant]"


def strip_injections(text: str, patterns: Sequence[re.Pattern] | None = None) -> tuple[str, int]:
    """``text`` with every line (or sentence of a long line) that matches an injection pattern on any
    normalised view replaced by a marker; (cleaned text, lines removed)."""
    patterns = patterns if patterns is not None else lexicons.compile_all(lexicons.INJECTION)
    out, removed = [], 0
    for line in text.splitlines(keepends=True):
        if not line.strip():
            out.append(line)
            continue
        sentences = re.split(r"(?<=[.!?])\s+", line) if len(line) > 200 else [line]
        kept = []
        for sentence in sentences:
            if _first_match(patterns, normalize.views(sentence)):
                kept.append(REMOVED)
                removed += 1
            else:
                kept.append(sentence)
        joined = " ".join(kept)
        out.append(joined if joined.endswith("\n") or not line.endswith("\n") else joined + "\n")
    return "".join(out), removed


class HarmfulRequestRail:
    """Requests for serious harm (weapons, explosives, chemical and biological agents, drug synthesis,
    malware, intrusion, fraud, violence, stalking, self-harm, harassment): a behaviour phrase together with
    a request (a how, an imperative) on any normalised view. Input only: blocked."""

    name = "harmful"

    def __init__(self):
        self._behaviours = {kind: lexicons.compile_all(p) for kind, p in lexicons.HARMFUL.items()}
        self._request = re.compile(lexicons.REQUEST, re.I)

    def check(self, text: str, where: str) -> Verdict:
        if where != "input":
            return _allow(self.name, text)
        views = normalize.views(text)
        if not any(self._request.search(v) for v in views.values()):
            return _allow(self.name, text)
        for kind, patterns in self._behaviours.items():
            hit = _first_match(patterns, views)
            if hit:
                view, matched = hit
                if kind == "self_harm":
                    return Verdict(Action.BLOCK, self.name, "self-harm: if you are thinking about hurting yourself, "
                                   "please contact a local crisis line or emergency services", text)
                return Verdict(Action.BLOCK, self.name, f"harmful request ({kind}): {matched!r}{_disguise(view)}", text)
        return _allow(self.name, text)


class TopicRail:
    """A deployment's blocklisted topic: any of its phrases, starting at a word start (so ``diagnos`` also
    catches "diagnosis"; matched on every normalised view), blocks the input and the output. Topics come
    from gin (``GuardrailsConfig.topics``)."""

    def __init__(self, topic: str, phrases: Sequence[str]):
        if not phrases:
            raise ValueError(f"topic {topic!r}: give at least one phrase")
        self.name = f"topic:{topic}"
        self.topic = topic
        self._pattern = re.compile(r"(?<!\w)(?:" + "|".join(re.escape(normalize.basic(p)) for p in phrases) + ")")

    def check(self, text: str, where: str) -> Verdict:
        if where not in ("input", "output"):
            return _allow(self.name, text)
        hit = _first_match([self._pattern], normalize.views(text))
        if hit is None:
            return _allow(self.name, text)
        view, matched = hit
        return Verdict(Action.BLOCK, self.name, f"blocked topic {self.topic!r}: {matched!r}{_disguise(view)}", text)
