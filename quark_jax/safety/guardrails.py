"""Rails combined: a gin-configured set checks every user turn, model output (whole or streamed) and
untrusted data; the most severe action wins.

``Guardrails.check(text, where)`` runs each rail on the text the previous ones passed (so redactions
compose) and stops at the first block. :meth:`Guardrails.screen` checks every user turn of a conversation
(not only the last: an attack split over turns, or planted in an earlier one, is caught) and fences tool
results. :class:`StreamGuard` checks streamed output as it grows, holding back a window of characters, so
a continuation that turns out to be blocked is cut before any of it is sent, never sent and retracted.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import gin

from quark_jax.safety import rails as rails_lib
from quark_jax.safety.fence import fence
from quark_jax.safety.types import Action, Rail, Verdict

REFUSAL = "I can't help with that."


@dataclasses.dataclass(frozen=True)
class GuardrailsConfig:
    """Which rails run and how. Bind in gin, e.g. ``quark_jax.safety.GuardrailsConfig.topics =
    {"medical_advice": ["dosage", "prescription"]}`` (see ``configs/safety/``)."""

    pii: bool = True
    secrets: bool = True
    toxicity: bool = True
    toxicity_threshold: float = 0.5
    toxicity_input_action: str = "warn"  # "allow" | "warn" | "block"
    jailbreak: bool = True
    harmful: bool = True
    topics: Mapping[str, Sequence[str]] = dataclasses.field(default_factory=dict)  # topic -> phrases
    classifier_dir: str | None = None  # an intent-classifier run (inference/classifier.py) for the jailbreak rail
    classifier_threshold: float = 0.5
    classifier_label: str = "unsafe"
    stream_window: int = 64  # characters of streamed output held back until checked
    fence_untrusted: bool = True  # tool results and retrieved passages enter the context fenced


def _configurable(cls):
    try:
        return gin.external_configurable(cls, module="quark_jax.safety")
    except ValueError:  # module re-imported: the class is registered already
        return gin.get_configurable(f"quark_jax.safety.{cls.__name__}")


_GIN_CONFIG = _configurable(GuardrailsConfig)


def guardrails_config() -> GuardrailsConfig:
    """The :class:`GuardrailsConfig` with the parsed gin bindings applied."""
    return _GIN_CONFIG()


def from_gin_file(path: str | None) -> Guardrails:
    """The Guardrails of a gin file of ``GuardrailsConfig`` bindings (None: the bound or default config);
    ValueError naming the file and the problem."""
    if path is None:
        return Guardrails.from_config(guardrails_config())
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file")
    try:
        with gin.unlock_config():
            gin.parse_config_file(path)
        return Guardrails.from_config(guardrails_config())
    except (ValueError, KeyError, TypeError, OSError) as e:
        raise ValueError(f"{path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def _load_classifier(run_dir: str):
    try:
        from quark_jax.inference.classifier import Classifier
    except ImportError:
        raise ValueError(f"classifier_dir={run_dir!r}: this install has no quark_jax.inference.classifier; "
                         "unset GuardrailsConfig.classifier_dir") from None
    return Classifier.from_run(run_dir)


@dataclasses.dataclass
class Screening:
    """A conversation after :meth:`Guardrails.screen`: the combined verdict, the messages that may go to the
    model (redacted, tool results fenced) and every rail decision that was not "allow" (for the audit)."""

    verdict: Verdict
    messages: list[dict[str, Any]]
    decisions: list[dict[str, Any]]


class Guardrails:
    """An ordered list of rails; ``check`` combines their verdicts (most severe wins, redactions compose)."""

    def __init__(self, rails: Sequence[Rail], config: GuardrailsConfig = GuardrailsConfig()):
        names = [r.name for r in rails]
        if len(set(names)) != len(names):
            raise ValueError(f"rails must have distinct names, got {names}")
        self.rails, self.config = list(rails), config

    @classmethod
    def from_config(cls, config: GuardrailsConfig | None = None, classifier: Any = None) -> Guardrails:
        """The rails ``config`` switches on (default: the gin-bound config). Order: jailbreak, harmful, topics
        (on the text as written), then secrets, pii, toxicity (redactions compose)."""
        config = config or guardrails_config()
        for action in (config.toxicity_input_action,):
            Action(action)  # raises ValueError naming a bad action
        if classifier is None and config.classifier_dir:
            classifier = _load_classifier(config.classifier_dir)
        rails: list[Rail] = []
        # Blocking rails see the text as written (a redaction must not hide a base64-encoded attack from them).
        if config.jailbreak:
            rails.append(rails_lib.JailbreakRail(classifier, config.classifier_threshold, config.classifier_label))
        if config.harmful:
            rails.append(rails_lib.HarmfulRequestRail())
        for topic, phrases in dict(config.topics).items():
            rails.append(rails_lib.TopicRail(topic, list(phrases)))
        if config.secrets:
            rails.append(rails_lib.SecretsRail())
        if config.pii:
            rails.append(rails_lib.PiiRail())
        if config.toxicity:
            rails.append(rails_lib.ToxicityRail(config.toxicity_threshold, Action(config.toxicity_input_action)))
        return cls(rails, config)

    def evaluate(self, text: str, where: str) -> tuple[Verdict, list[Verdict]]:
        """(combined verdict, the verdicts that were not "allow", in rail order)."""
        if where not in rails_lib.WHERE:
            raise ValueError(f"where={where!r}: must be one of {rails_lib.WHERE}")
        current, fired = text, []
        for rail in self.rails:
            verdict = rail.check(current, where)
            if verdict.action is Action.ALLOW:
                continue
            fired.append(verdict)
            if verdict.action is Action.REDACT:
                current = verdict.text
            if verdict.blocked:
                break
        if not fired:
            return Verdict(Action.ALLOW, "", "", text), fired
        worst = max(fired, key=lambda v: v.action.severity)
        rails = "+".join(dict.fromkeys(v.rail for v in fired if v.action is worst.action))
        reasons = "; ".join(v.reason for v in fired if v.action is worst.action)
        return Verdict(worst.action, rails, reasons, current), fired

    def check(self, text: str, where: str) -> Verdict:
        """The combined verdict on ``text`` at ``where`` ("input", "output", "tool" or "retrieved")."""
        return self.evaluate(text, where)[0]

    def check_output(self, text: str) -> Verdict:
        return self.check(text, "output")

    def check_untrusted(self, text: str, source: str) -> str:
        """A tool result or retrieved passage as it may enter the context: redacted, then fenced."""
        where = "retrieved" if source.startswith("retrieved") else "tool"
        text = self.check(text, where).text
        return fence(text, source) if self.config.fence_untrusted else text

    def screen(self, messages: Sequence[Mapping[str, Any]]) -> Screening:
        """Checks every user turn (input rails) and every tool result (untrusted-data rails, then fenced).
        Blocked: the verdict names the turn. Otherwise the messages come back redacted and fenced."""
        out, decisions, worst = [], [], Verdict(Action.ALLOW, "", "", "")
        last_user = ""
        for i, message in enumerate(messages):
            message = dict(message)
            content = message.get("content")
            role = message.get("role")
            if isinstance(content, str) and role in ("user", "tool"):
                where = "input" if role == "user" else "tool"
                verdict, fired = self.evaluate(content, where)
                decisions += [{"turn": i, "where": where, "rail": v.rail, "action": v.action.value,
                               "reason": v.reason} for v in fired]
                if verdict.blocked:
                    reason = f"message {i} ({role}): {verdict.reason}"
                    return Screening(Verdict(Action.BLOCK, verdict.rail, reason, content), [], decisions)
                content = verdict.text
                if role == "tool" and self.config.fence_untrusted:
                    content = fence(content, f"tool:{message.get('name') or message.get('tool_call_id') or 'result'}")
                message["content"] = content
                if role == "user":
                    last_user = content
                if verdict.action.severity > worst.action.severity:
                    worst = Verdict(verdict.action, verdict.rail, f"message {i} ({role}): {verdict.reason}", "")
            out.append(message)
        return Screening(dataclasses.replace(worst, text=last_user), out, decisions)

    def check_input(self, messages: Sequence[Mapping[str, Any]]) -> Verdict:
        """The combined verdict over every user turn; ``text`` is the last user turn as it may pass."""
        return self.screen(messages).verdict

    def stream(self) -> StreamGuard:
        return StreamGuard(self, self.config.stream_window)


class StreamGuard:
    """Output rails on a stream: :meth:`feed` each new piece of text and send what it returns; :meth:`finish`
    at the end. The last ``window`` characters (back to a word boundary) are held until more text shows they
    are safe. Once the text so far is blocked, or a redaction would change text already sent, the stream is
    cut (``cut`` is set, ``verdict`` says why) and nothing more is released.

    The whole text is re-checked at most every ``window // 4`` new characters (and at the end): text that has
    not been checked is held, so the cost stays a fraction of checking on every token."""

    def __init__(self, guardrails: Guardrails, window: int = 64):
        if window < 0:
            raise ValueError(f"window={window}: must be >= 0")
        self.guardrails, self.window = guardrails, window
        self.check_every = max(1, window // 4)
        self._checked = 0  # length of raw text at the last check
        self.raw, self.sent = "", ""
        self.cut = False
        self.verdict = Verdict(Action.ALLOW, "", "", "")
        self.decisions: list[Verdict] = []

    def _safe_text(self) -> str | None:
        self._checked = len(self.raw)
        verdict, fired = self.guardrails.evaluate(self.raw, "output")
        for v in fired:
            if all((v.rail, v.reason) != (d.rail, d.reason) for d in self.decisions):
                self.decisions.append(v)
        if verdict.action.severity > self.verdict.action.severity:
            self.verdict = verdict
        if verdict.blocked:
            self.cut = True
            return None
        if not verdict.text.startswith(self.sent):
            self.cut = True
            self.verdict = Verdict(Action.BLOCK, verdict.rail, f"{verdict.reason} (in text already sent: cut)", "")
            return None
        return verdict.text

    def feed(self, piece: str) -> str:
        """The text that may be sent now ("" while it is held back, and always once the stream is cut)."""
        if self.cut or not piece:
            return ""
        self.raw += piece
        if len(self.raw) - self._checked < self.check_every:
            return ""
        safe = self._safe_text()
        if safe is None:
            return ""
        end = len(safe) - self.window
        if end <= len(self.sent):
            return ""
        boundary = max(safe.rfind(" ", len(self.sent), end), safe.rfind("\n", len(self.sent), end))
        end = boundary + 1 if boundary >= 0 else end
        released = safe[len(self.sent):end]
        self.sent += released
        return released

    def finish(self) -> str:
        """The rest of the text, checked whole ("" when the stream is cut)."""
        if self.cut:
            return ""
        safe = self._safe_text() if self.raw else self.sent
        if safe is None:
            return ""
        rest = safe[len(self.sent):]
        self.sent += rest
        return rest
