"""The router: which specialised agent answers a request.

    router = Router(qj.load_classifier("/tmp/intent"), kg_store=KnowledgeGraph("kg.sqlite", readonly=True))
    route = router.route("What are the parameters of `json.dumps`?")
    route.intent, route.agent, route.confidence, route.signals   # "qa", "retrieval", 0.93, {...}

A route is decided in this order:

1. **Sub-tasks** (:func:`split_subtasks`): a numbered list, or parts joined by "then", ";", "also", or by
   "and" before a new request verb ("What is 3 + 4 and write a function that ...") — two or more parts go to
   the ``planning`` agent, with each part's own route in ``signals["subtasks"]`` (any unsafe part makes the
   whole request unsafe: it is refused, not half-answered).
2. **Intent**: the classifier's probabilities (:class:`~quark_jax.inference.classifier.Classifier`), or,
   with no classifier, the keyword rules of :func:`rule_intent`.
3. **Cheap signals**: the keyword rules also run beside a classifier, and the intent of the first rule that
   matches gets ``rule_bias`` added to its probability (``signals["rule"]``): "12 * 7" is arithmetic
   whatever the phrasing around it. Names of the knowledge graph found in the request (backticked or dotted
   names that ``kg_store.has_entity`` knows; ``signals["entities"]``) add ``entity_bias`` to the ``qa``
   probability before the arg-max — a question about a library entity is answered from retrieval; a sentiment lexicon
   scores the request (``signals["sentiment"]``: score, the negative and positive words found, and
   ``negative`` when the score is below 0), noted for the answering agent, never changing the route.
4. **Agent**: :data:`INTENT_AGENTS` maps the intent to an agent name; an ``unsafe`` intent maps to
   ``refuse``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

INTENTS = ("code", "qa", "summarisation", "arithmetic", "chitchat", "unsafe")
INTENT_AGENTS = {"code": "execution", "qa": "retrieval", "summarisation": "direct", "arithmetic": "reasoning",
                 "chitchat": "direct", "unsafe": "refuse"}
PLANNING = "planning"
MULTI = "multi"  # the intent of a request split into sub-tasks

# A small sentiment lexicon: word -> polarity (−2 .. 2). Enough to notice an upset or pleased user.
SENTIMENT_LEXICON: dict[str, int] = {
    **{w: -2 for w in ("hate", "terrible", "awful", "furious", "useless", "worst", "disgusting", "horrible",
                       "angry", "stupid", "garbage", "pathetic")},
    **{w: -1 for w in ("bad", "sad", "annoyed", "annoying", "broken", "wrong", "slow", "confusing", "tired",
                       "disappointed", "frustrated", "fail", "fails", "failed", "crash", "crashes", "upset",
                       "boring", "bored", "tiring", "miss", "lonely", "worried")},
    **{w: 1 for w in ("good", "nice", "thanks", "thank", "helpful", "glad", "happy", "like", "fine", "lovely",
                      "fun", "quiet", "cool")},
    **{w: 2 for w in ("great", "love", "excellent", "wonderful", "amazing", "awesome", "fantastic", "perfect")},
}
_NEGATIONS = ("not", "no", "never", "don't", "isn't", "wasn't", "doesn't", "didn't", "can't", "won't")
_WORD = re.compile(r"[a-z']+")

# Keyword rules of the classifier-free router, tried in this order; the first that matches decides.
RULES: tuple[tuple[str, re.Pattern], ...] = (
    ("unsafe", re.compile(
        r"\b(bomb|explosive|nerve gas|ricin|anthrax|napalm|thermite|poison|malware|ransom\w*|keylog\w*|phishing|"
        r"stalk\w*|blackmail|launder\w*|forge|fake id|stolen|untraceable|ghost gun|hurt myself|kill|dox\w*|"
        r"track the phone|without (?:getting caught|the user noticing)|ignore (?:all )?previous instructions|"
        r"no (?:safety|rules)|jailbreak|uncensored|developer mode)\b", re.I)),
    ("arithmetic", re.compile(
        r"\d+\s*[-+*/×x]\s*\d+|\b\d+\s+(?:plus|minus|times|divided by|multiplied by)\s+\d+|"
        r"\b(?:add|subtract|multiply|sum of|product of|difference of)\b[^.?!]*\d+[^.?!]*\d+", re.I)),
    ("summarisation", re.compile(
        r"\b(summari[sz]e|summary|tl;?dr|condense|gist|abstract|key points|shorten|recap|in brief|bullet points)\b",
        re.I)),
    ("code", re.compile(
        r"\b(write|implement|code|refactor|debug|fix)\b.*\b(function|script|class|program|code|bug|tests?)\b|"
        r"^\s*def |\bdef \w+\(|\bunit tests?\b|\bpython (?:function|script|class|implementation)\b", re.I | re.S)),
    ("qa", re.compile(
        r"`[^`]+`|\b[a-z_]\w*(?:\.[a-z_]\w*)+\b|\b(which|what|where|when|how many|does|is there)\b.*\?", re.I | re.S)),
)
DEFAULT_INTENT = "chitchat"
RULE_CONFIDENCE, DEFAULT_CONFIDENCE = 0.6, 0.3

_NUMBERED = re.compile(r"(?:^|\n)\s*(?:\d{1,2}[.)]|[-*•])\s+")
_STRONG = re.compile(r"\s*(?:;|\bthen\b|\band then\b|\balso\b|\bafter that\b|\bfinally\b)\s*,?\s*", re.I)
REQUEST_VERBS = ("what", "which", "where", "how", "who", "why", "write", "implement", "code", "summarise",
                 "summarize", "compute", "calculate", "tell", "explain", "give", "list", "show", "find", "create",
                 "fix", "refactor", "condense", "translate", "solve", "add type", "make a")
_AND_VERB = re.compile(r"\s*,?\s+and\s+(?=(?:" + "|".join(re.escape(v) for v in REQUEST_VERBS) + r")\b)", re.I)
_NAME = re.compile(r"`([^`\n]{1,120})`|\b([A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)+)\b")


class IntentClassifier(Protocol):
    """What the router needs of a classifier (:class:`~quark_jax.inference.classifier.Classifier`)."""

    labels: Sequence[str]

    def predict_proba(self, texts: Sequence[str]) -> list[dict[str, float]]: ...


class EntityStore(Protocol):
    """What the router needs of a knowledge graph (:class:`~quark_jax.knowledge.store.KnowledgeGraph`)."""

    def has_entity(self, name: str) -> bool: ...


@dataclasses.dataclass(frozen=True)
class Route:
    """Where a request goes: its ``intent``, the ``agent`` name, the ``confidence`` (the winning probability,
    or the rule's fixed confidence) and the ``signals`` that decided it (JSON-serialisable)."""

    intent: str
    agent: str
    confidence: float
    signals: Mapping[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"intent": self.intent, "agent": self.agent, "confidence": self.confidence, "signals": dict(self.signals)}


def sentiment(text: str, lexicon: Mapping[str, int] = SENTIMENT_LEXICON) -> dict[str, Any]:
    """``{"score", "negative_terms", "positive_terms", "negative"}`` of a text: the summed polarity of its
    lexicon words, a word right after a negation ("not good") counting with the opposite sign."""
    words = _WORD.findall(text.lower())
    score, negative, positive = 0, [], []
    for i, word in enumerate(words):
        polarity = lexicon.get(word, 0)
        if not polarity:
            continue
        if i and words[i - 1] in _NEGATIONS:
            polarity = -polarity
        score += polarity
        (negative if polarity < 0 else positive).append(word)
    return {"score": score, "negative_terms": negative, "positive_terms": positive, "negative": score < 0}


def entity_mentions(text: str, store: EntityStore | None) -> list[str]:
    """Names in ``text`` (backticked, or dotted like ``json.dumps``; a trailing ``()`` dropped) that the
    store holds as entities, in order of appearance, each once."""
    if store is None:
        return []
    found = []
    for match in _NAME.finditer(text):
        name = (match.group(1) or match.group(2)).strip()
        name = re.sub(r"\(.*\)$", "", name).strip()
        if name and name not in found and store.has_entity(name):
            found.append(name)
    return found


def rule_intent(text: str) -> tuple[str, float, str | None]:
    """``(intent, confidence, rule)`` by the keyword rules (:data:`RULES`): the first matching rule's intent
    with :data:`RULE_CONFIDENCE`, else :data:`DEFAULT_INTENT` with :data:`DEFAULT_CONFIDENCE`."""
    for intent, pattern in RULES:
        if pattern.search(text):
            return intent, RULE_CONFIDENCE, intent
    return DEFAULT_INTENT, DEFAULT_CONFIDENCE, None


def split_subtasks(text: str) -> list[str]:
    """The sub-tasks of a request: the items of a numbered or bulleted list, else the parts between
    sequencing words (";", "then", "also", "after that", "finally") and "and" followed by a request verb;
    one part (the stripped text) when there are none. Empty parts are dropped."""
    text = text.strip()
    items = [p.strip() for p in _NUMBERED.split(text)]
    if len([p for p in items[1:] if p]) >= 2:  # a list of at least two items (an intro line before it is dropped)
        return [p for p in items[1:] if p]
    parts = []
    for piece in _STRONG.split(text):
        parts.extend(_AND_VERB.split(piece))
    parts = [p.strip(" ,.") for p in parts]
    parts = [p for p in parts if len(p.split()) >= 2]  # a lone word is not a task
    return parts if len(parts) >= 2 else [text]


class Router:
    """Routes requests to agents (see the module docstring).

    ``classifier``: an intent classifier (``predict_proba``) or None for the keyword rules; ``kg_store``: a
    knowledge graph (``has_entity``) or None; ``lexicon``: word → polarity; ``entity_bias``: added to the
    ``qa`` probability when the request names an entity of the graph; ``rule_bias``: added to the
    probability of the intent of the first matching keyword rule (0: the classifier alone decides);
    ``agents``: intent → agent name; ``split``: whether multi-part requests go to the planner.
    """

    def __init__(self, classifier: IntentClassifier | None = None, kg_store: EntityStore | None = None,
                 lexicon: Mapping[str, int] = SENTIMENT_LEXICON, entity_bias: float = 0.25, rule_bias: float = 0.3,
                 agents: Mapping[str, str] = INTENT_AGENTS, split: bool = True):
        if classifier is not None:
            missing = sorted(set(classifier.labels) - set(agents))
            if missing:
                raise ValueError(f"the classifier's label(s) {missing} have no agent; pass agents={{label: name}}")
        for name, value in (("entity_bias", entity_bias), ("rule_bias", rule_bias)):
            if value < 0:
                raise ValueError(f"{name}={value} must be >= 0")
        self.classifier, self.kg_store, self.lexicon = classifier, kg_store, dict(lexicon)
        self.entity_bias, self.rule_bias, self.agents, self.split = float(entity_bias), float(rule_bias), dict(agents), split

    def route(self, request: str) -> Route:
        """The route of one request."""
        return self.route_many([request])[0]

    def route_many(self, requests: Sequence[str]) -> list[Route]:
        """Routes of several requests (their sub-tasks classified in one batch)."""
        if isinstance(requests, str):
            raise TypeError("route_many takes a sequence of requests: route_many([request])")
        parts = [split_subtasks(r) if self.split else [r.strip()] for r in requests]
        flat = [p for ps in parts for p in ps]
        single = self._single_routes(flat)
        routes, i = [], 0
        for request, ps in zip(requests, parts):
            mine, i = single[i:i + len(ps)], i + len(ps)
            routes.append(mine[0] if len(ps) == 1 else self._plan(request, ps, mine))
        return routes

    def _single_routes(self, texts: list[str]) -> list[Route]:
        probabilities = self.classifier.predict_proba(texts) if self.classifier is not None and texts else None
        routes = []
        for n, text in enumerate(texts):
            signals: dict[str, Any] = {"sentiment": sentiment(text, self.lexicon),
                                       "entities": entity_mentions(text, self.kg_store)}
            if probabilities is not None:
                probs = dict(probabilities[n])
                signals["probabilities"] = {k: round(v, 4) for k, v in probs.items()}
                if signals["entities"] and "qa" in probs and self.entity_bias:
                    probs["qa"] += self.entity_bias
                    signals["entity_bias"] = self.entity_bias
                rule = rule_intent(text)[2]
                if rule is not None and rule in probs and self.rule_bias:
                    probs[rule] += self.rule_bias
                    signals["rule"], signals["rule_bias"] = rule, self.rule_bias
                intent = max(probs, key=probs.get)
                confidence = probs[intent] / sum(probs.values())
                signals["source"] = "classifier"
            else:
                intent, confidence, rule = rule_intent(text)
                if signals["entities"] and intent in ("chitchat", "summarisation") and rule != "summarisation":
                    intent, confidence, rule = "qa", RULE_CONFIDENCE, "entity"
                signals["source"], signals["rule"] = "rules", rule
            routes.append(Route(intent, self.agents[intent], float(confidence), signals))
        return routes

    def _plan(self, request: str, parts: list[str], routes: list[Route]) -> Route:
        signals = {"subtasks": [{"text": p, **r.as_dict()} for p, r in zip(parts, routes)],
                   "sentiment": sentiment(request, self.lexicon),
                   "entities": [e for r in routes for e in r.signals.get("entities", [])]}
        confidence = min(r.confidence for r in routes)
        unsafe = [r for r in routes if r.intent == "unsafe"]
        if unsafe:
            return Route("unsafe", self.agents["unsafe"], unsafe[0].confidence, signals)
        return Route(MULTI, PLANNING, confidence, signals)
