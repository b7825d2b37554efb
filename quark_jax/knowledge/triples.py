"""Facts from text: (subject, relation, object) triples read from technical prose with a few stated patterns,
stored in a :class:`~quark_jax.knowledge.store.KnowledgeGraph` with their provenance.

A document is split into sentences (at ``.``, ``!`` or ``?`` followed by space and a capital letter, a
backtick or a quote, and at blank lines); each sentence is matched against these patterns, the first verb
phrase in the sentence deciding:

=====================================  ===================  ==================================================
sentence                               relation             note
=====================================  ===================  ==================================================
``X is defined in Y``                  ``defined-in``
``X inherits from Y``                  ``inherits``         also ``X is a subclass of Y``
``X returns Y``                        ``returns``          ``Return(s) Y`` with a default subject
``X calls Y``                          ``calls``            ``Call(s) Y`` with a default subject
``X raises Y``                         ``raises``           ``Raise(s) Y`` with a default subject
``X is a Y`` / ``X is an Y``           ``is-a``
=====================================  ===================  ==================================================

Entities are normalised: reST roles (``:class:``), backticks, quotes and asterisks, a leading article
(a, an, the), a trailing ``()`` and trailing punctuation are removed and spaces collapsed; case is kept
(code names are case-sensitive). The object ends at the first ``,`` ``;`` ``:`` ``(`` or subordinate word
(if, when, unless, which, that, where, because, while, for, with, to, by, on, instead, otherwise); for
``raises``, ``calls`` and ``inherits`` it is then split at ``or``/``and`` into several objects. Subjects and
objects longer than six words are dropped (that is a clause, not an entity). A kind word after a name is
dropped (``the json.dumps() function`` -> ``json.dumps``). A pronoun subject (it, this, this
function/method/class/module) and the imperative forms stand for the document's ``subject`` when one is given
(a docstring's owner), else the sentence is skipped. Negated sentences (``X never raises Y``, ``X does not
...``) and subjects opening with a subordinator (``If the destination is a ...``) give nothing;
``also``/``only``/``always`` before the verb is dropped.

Limits, by design: no coreference beyond the pronouns above, no passive voice other than "is defined in",
no nested clauses, English only. The patterns favour precision on docstring-like prose over recall.

Re-ingesting a document is idempotent: the ``documents`` table keeps each document's hash; the same text
changes nothing, a changed text replaces that document's triples (all or nothing), and mention entities no
relation uses any more are removed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re

from quark_jax.knowledge.store import KnowledgeGraph, Provenance

MAX_ENTITY_WORDS = 6
MAX_DOCUMENT_CHARS = 2_000_000  # one document; split larger texts (a book) into several
ORIGIN = "text"

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z`'\"*:])|\n\s*\n")
_VERBS = (
    ("is defined in", "defined-in"),
    ("inherits from", "inherits"),
    ("is a subclass of", "inherits"),
    ("returns", "returns"),
    ("calls", "calls"),
    ("raises", "raises"),
    ("is an", "is-a"),
    ("is a", "is-a"),
)
_VERB = re.compile(r"\s+(" + "|".join(re.escape(v) for v, _ in _VERBS) + r")\s+")
_IMPERATIVE = re.compile(r"^(returns?|raises?|calls?)\s+(.+)$", re.IGNORECASE)
_IMPERATIVE_RELATION = {"return": "returns", "raise": "raises", "call": "calls"}
_SPLIT_OBJECTS = {"raises", "calls", "inherits"}
_OBJECT_END = re.compile(r"[,;:(]|\s(?:if|when|whenever|unless|which|that|where|because|while|for|with|to|by|"
                         r"on|instead|otherwise)\b", re.IGNORECASE)
_PRONOUNS = {"it", "this", "this function", "this method", "this class", "this module", "this object"}
_KINDS = {"function", "method", "class", "module", "package", "exception", "attribute", "decorator"}
_SUBORDINATORS = {"if", "when", "whenever", "while", "although", "though", "since", "because", "unless", "as",
                  "once", "after", "before", "where", "otherwise"}
_NEGATIONS = {"not", "never", "no", "cannot"}
_ADVERBS = {"also", "only", "always", "usually", "then", "now", "still", "simply", "just", "merely"}
_ARTICLE = re.compile(r"^(?:a|an|the)\s+", re.IGNORECASE)
_ROLE = re.compile(r":[\w:.-]+:(?=`)")


@dataclasses.dataclass(frozen=True)
class Triple:
    """One fact read from a sentence: the sentence's index in the document and its character span."""

    subject: str
    relation: str
    object: str
    sentence: int
    span: tuple[int, int]

    @property
    def fact(self) -> tuple[str, str, str]:
        """(subject, relation, object)."""
        return self.subject, self.relation, self.object


def sentences(text: str) -> list[tuple[int, int]]:
    """Character spans ``(start, end)`` of the sentences of ``text``, surrounding space excluded."""
    spans, start = [], 0
    for boundary in [*_SENTENCE_END.finditer(text), None]:
        end = len(text) if boundary is None else boundary.start()
        piece = text[start:end]
        stripped = piece.strip()
        if stripped:
            left = start + (len(piece) - len(piece.lstrip()))
            spans.append((left, left + len(stripped)))
        if boundary is not None:
            start = boundary.end()
    return spans


def normalise(phrase: str) -> str:
    """An entity name from a phrase: roles, backticks, quotes, asterisks, a leading article, a trailing ``()``
    and trailing punctuation removed; spaces collapsed."""
    text = _ROLE.sub("", phrase)
    text = re.sub(r"[`\"*]|(?<!\w)'|'(?!\w)", "", text)  # an apostrophe inside a word stays (file's)
    text = " ".join(text.split())
    text = text.rstrip(".,;:!?").strip()
    text = _ARTICLE.sub("", text)
    if text.endswith("()"):
        text = text[:-2]
    return text.rstrip(".,;:!?").strip()


def _entity(phrase: str) -> str | None:
    name = normalise(phrase)
    return name if name and len(name.split()) <= MAX_ENTITY_WORDS else None


def _objects(phrase: str, relation: str) -> list[str]:
    cut = _OBJECT_END.search(phrase)
    if cut is not None:
        phrase = phrase[: cut.start()]
    parts = re.split(r"\s+(?:or|and)\s+", phrase) if relation in _SPLIT_OBJECTS else [phrase]
    return [name for name in (_entity(p) for p in parts) if name]


def _subject(phrase: str, default: str | None) -> str | None:
    words = phrase.split()
    lowered = [w.lower() for w in words]
    if not words or lowered[0] in _SUBORDINATORS or lowered[-1] in _NEGATIONS or {"do", "does", "did"} & set(lowered):
        return None
    while words and words[-1].lower() in _ADVERBS:
        words.pop()
    name = _entity(" ".join(words))
    if name is not None and name.lower() in _PRONOUNS:
        return default
    if name is not None and " " in name and name.rsplit(" ", 1)[1] in _KINDS:  # "the json.dumps() function"
        name = _entity(name.rsplit(" ", 1)[0])
    return name


def sentence_triples(sentence: str, subject: str | None = None) -> list[tuple[str, str, str]]:
    """(subject, relation, object) triples of one sentence; ``subject`` stands for pronouns and imperatives."""
    text = " ".join(_ROLE.sub("", sentence).split()).rstrip(".!?")
    imperative = _IMPERATIVE.match(text)
    if imperative is not None and subject is not None:
        relation = _IMPERATIVE_RELATION[imperative.group(1).lower().rstrip("s")]
        return [(subject, relation, obj) for obj in _objects(imperative.group(2), relation)]
    verb = _VERB.search(text)
    if verb is None:
        return []
    relation = dict(_VERBS)[verb.group(1)]
    head = _subject(text[: verb.start()], subject)
    if head is None:
        return []
    return [(head, relation, obj) for obj in _objects(text[verb.end():], relation) if obj != head]


def extract_triples(text: str, subject: str | None = None) -> list[Triple]:
    """Every triple of a document, in sentence order, each once (its first sentence)."""
    found, seen = [], set()
    for index, (start, end) in enumerate(sentences(text)):
        for fact in sentence_triples(text[start:end], subject):
            if fact not in seen:
                seen.add(fact)
                found.append(Triple(*fact, index, (start, end)))
    return found


def ingest(graph: KnowledgeGraph, doc_id: str, text: str, subject: str | None = None) -> list[Triple]:
    """Reads ``text``'s triples into ``graph`` under ``doc_id`` (provenance: the document, the sentence index,
    the sentence's character span) and returns them. ``subject`` is what pronouns and imperative sentences
    are about (e.g. ``json.dumps`` for its docstring). Idempotent: the same text again writes nothing; a
    changed text replaces the document's triples, all or nothing."""
    if not doc_id:
        raise ValueError("doc_id must be a non-empty string")
    if len(text) > MAX_DOCUMENT_CHARS:
        raise ValueError(f"document {doc_id!r} has {len(text):,} characters, over the {MAX_DOCUMENT_CHARS:,} "
                         "limit; ingest it in parts (one doc_id per chapter or file)")
    triples = extract_triples(text, subject)
    digest = hashlib.sha256(f"{subject or ''}\0{text}".encode("utf-8", "surrogatepass")).hexdigest()
    row = graph.execute("SELECT sha256 FROM documents WHERE doc_id = ?", (doc_id,)).fetchone()
    if row is not None and row[0] == digest:
        return triples
    with graph.transaction():
        graph.execute("DELETE FROM relations WHERE source = ? AND origin = ?", (doc_id, ORIGIN))
        graph.add_relations(
            ((t.subject, t.relation, t.object, Provenance(doc_id, sentence=t.sentence, span=t.span))
             for t in triples), origin=ORIGIN, endpoint_type="mention")
        graph.execute("INSERT INTO documents (doc_id, sha256, triples) VALUES (?, ?, ?) ON CONFLICT (doc_id) "
                      "DO UPDATE SET sha256 = excluded.sha256, triples = excluded.triples",
                      (doc_id, digest, len(triples)))
        graph.execute("DELETE FROM entities WHERE type = 'mention' "
                      "AND NOT EXISTS (SELECT 1 FROM relations WHERE subject = entities.name) "
                      "AND NOT EXISTS (SELECT 1 FROM relations WHERE object = entities.name)")
    return triples
