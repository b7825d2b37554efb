"""Grammar-constrained decoding: a regex or JSON schema compiled once into a token automaton, applied as a mask.

Axis legend: S automaton states · V vocabulary · B batch.

A :class:`TokenAutomaton` is a table ``transitions[S, V]``: the state after emitting a token, or -1 where the
token is not allowed (the EOS column holds the state itself where the grammar may end there, else -1). It is
built by outlines-core (``outlines_core.Index``, the token-level index of a regular expression's DFA over a
vocabulary's byte strings) and kept as NumPy arrays, so the compiled decode loops take it as an *array*
argument: a new grammar is new data, not a new compiled function. States from which no accepting state can be
reached are pruned, so a row never walks into a dead end: within its token budget, a constrained row always
ends in text the grammar accepts.

Several grammars share one batch through :func:`stack`: their tables are concatenated with offsets below a
"free" row 0 (every token allowed, itself the next state) used by unconstrained rows, and the number of rows
is padded to a power of two so that different grammars of similar size reuse one compiled function.

Token bytes come from the tokenizer's pieces (SentencePiece's ``▁`` is a space, byte-fallback pieces
``<0xNN>`` are one byte; Hugging Face byte-level BPE through the GPT-2 byte alphabet); control and marker
pieces (``</s>``, ``<|user|>``) are left out. A tokenizer whose ``decode`` drops the leading space of the
first piece (SentencePiece's dummy prefix) gets a start state that reads such a piece without its space, so
the *decoded* text is what the grammar accepts.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Int

MAX_TABLE_ENTRIES = 1 << 26  # states × vocabulary of one automaton (256 MiB of int32)
MIN_STACK_STATES = 256  # the smallest row bucket of a stacked table ...
MIN_STACK_ENTRIES = 1 << 22  # ... or, if more rows, the rows of 16 MiB of int32 (1024 rows of a 4096 vocabulary)
JSON_OBJECT_DEPTH = 2  # nesting of the generic grammar of response_format={"type": "json_object"}
CACHE_SIZE = 32


class GrammarError(ValueError):
    """A grammar that cannot be compiled (a bad schema, unsupported by the regex engine, too large)."""


@dataclasses.dataclass(frozen=True, eq=False)
class TokenAutomaton:
    """A grammar compiled over one vocabulary: ``transitions[s, t]`` is the state after token t in state s
    (-1: not allowed), ``accepting[s]`` whether the text may end in s (EOS allowed), ``initial`` the start
    state, ``key`` a hash of the grammar and the vocabulary (equal keys: equal tables)."""

    transitions: np.ndarray  # int32 [S, V]
    accepting: np.ndarray  # bool [S]
    initial: int
    key: str
    eos_id: int

    @property
    def num_states(self) -> int:
        return int(self.transitions.shape[0])

    @property
    def vocab_size(self) -> int:
        return int(self.transitions.shape[1])

    def allowed(self, state: int) -> np.ndarray:
        """Bool [V]: the tokens allowed in ``state`` (EOS where the text may end)."""
        return self.transitions[state] >= 0

    def walk(self, tokens: Sequence[int]) -> int:
        """The state after ``tokens`` from the start, or -1 once a token is not allowed."""
        state = self.initial
        for t in tokens:
            state = int(self.transitions[state, t])
            if state < 0:
                return -1
        return state

    def accepts(self, tokens: Sequence[int]) -> bool:
        """Whether ``tokens`` (EOS not included) spell a complete text of the grammar."""
        state = self.walk(tokens)
        return state >= 0 and bool(self.accepting[state])


# ---- the vocabulary as byte strings ------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _TokenBytes:
    """What the builders need of a vocabulary: each usable token's bytes, its size, EOS, the single-byte tokens,
    whether decode drops the first piece's leading space, and a fingerprint for cache keys."""

    pieces: dict[int, bytes]
    vocab_size: int
    eos_id: int
    byte_tokens: dict[int, int]  # byte value -> a token that is exactly that byte
    strips_first_space: bool
    fingerprint: str


_VOCABS: dict[int, tuple[Any, _TokenBytes]] = {}
_LOCK = threading.Lock()


def _sentencepiece_pieces(processor: Any) -> dict[int, bytes]:
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(processor.serialized_model_proto())
    kinds = sentencepiece_model_pb2.ModelProto.SentencePiece
    pieces = {}
    for i, p in enumerate(proto.pieces):
        if p.type == kinds.BYTE:
            pieces[i] = bytes([int(p.piece[3:5], 16)])
        elif p.type == kinds.NORMAL:
            pieces[i] = p.piece.replace("\u2581", " ").encode("utf-8")
    return pieces


def _gpt2_byte_alphabet() -> dict[str, int]:
    """The printable character GPT-2's byte-level BPE writes for each byte, inverted (char -> byte)."""
    kept = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in kept:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def _hf_pieces(tokenizer: Any) -> dict[int, bytes]:
    spec = json.loads(tokenizer.to_str())
    decoders = [spec.get("decoder") or {}]
    while decoders and decoders[-1].get("type") == "Sequence":
        decoders = decoders[:-1] + list(decoders[-1].get("decoders", []))
    kinds = {d.get("type") for d in decoders}
    special = {i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
    added = {i: t.content for i, t in tokenizer.get_added_tokens_decoder().items() if not t.special}
    pieces = {}
    if "ByteLevel" in kinds:
        alphabet = _gpt2_byte_alphabet()
        for piece, i in tokenizer.get_vocab(with_added_tokens=False).items():
            if i in special:
                continue
            if all(c in alphabet for c in piece):
                pieces[i] = bytes(alphabet[c] for c in piece)
    elif "Metaspace" in kinds or "Replace" in kinds or "ByteFallback" in kinds:
        for piece, i in tokenizer.get_vocab(with_added_tokens=False).items():
            if i in special:
                continue
            if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
                pieces[i] = bytes([int(piece[3:5], 16)])
            else:
                pieces[i] = piece.replace("\u2581", " ").encode("utf-8")
    else:
        raise GrammarError(f"constrained decoding does not know how this tokenizer's decoder ({sorted(kinds)}) "
                           "spells bytes; use a SentencePiece or byte-level BPE tokenizer")
    for i, content in added.items():
        pieces[i] = content.encode("utf-8")
    return pieces


def _token_pieces(vocabulary: Any) -> dict[int, bytes]:
    processor = getattr(vocabulary, "tokenizer", None) or getattr(vocabulary, "_processor", None)
    if processor is not None and hasattr(processor, "serialized_model_proto"):
        return _sentencepiece_pieces(processor)
    hf = getattr(vocabulary, "_tokenizer", None)
    if hf is not None and hasattr(hf, "get_added_tokens_decoder"):
        return _hf_pieces(hf)
    raise GrammarError(f"constrained decoding needs a SentencePiece or Hugging Face tokenizer, not "
                       f"{type(vocabulary).__name__}")


def token_bytes(vocabulary: Any) -> _TokenBytes:
    """The vocabulary's usable tokens as byte strings (cached per vocabulary object)."""
    with _LOCK:
        cached = _VOCABS.get(id(vocabulary))
        if cached is not None and cached[0] is vocabulary:
            return cached[1]
    pieces = _token_pieces(vocabulary)
    eos_id = int(vocabulary.eos_id)
    pieces.pop(eos_id, None)
    vocab_size = int(getattr(vocabulary, "vocab_size", 0) or max(pieces) + 1)
    byte_tokens = {}
    for i, b in sorted(pieces.items(), reverse=True):
        if len(b) == 1:
            byte_tokens[b[0]] = i
    # Whether decode keeps the leading space of a lone piece: check it on a word piece, which also checks
    # that the bytes above are what decode writes.
    probe = next((i for i, b in sorted(pieces.items()) if len(b) > 2 and b[:1] == b" " and b[1:].isalpha()), None)
    strips = False
    if probe is not None:
        decoded = vocabulary.decode([probe]).encode("utf-8")
        if decoded == pieces[probe][1:]:
            strips = True
        elif decoded != pieces[probe]:
            raise GrammarError(f"token {probe} decodes to {decoded!r}, not its piece {pieces[probe]!r}; constrained "
                               "decoding cannot map this tokenizer's tokens to text")
    digest = hashlib.sha256()
    digest.update(f"{vocab_size}|{eos_id}|{strips}|".encode())
    for i, b in sorted(pieces.items()):
        digest.update(i.to_bytes(4, "little") + len(b).to_bytes(2, "little") + b)
    info = _TokenBytes(pieces, vocab_size, eos_id, byte_tokens, strips, digest.hexdigest()[:16])
    with _LOCK:
        _VOCABS[id(vocabulary)] = (vocabulary, info)
    return info


# ---- building -------------------------------------------------------------------------------------------

_CACHE: collections.OrderedDict[str, TokenAutomaton] = collections.OrderedDict()
_OC_VOCABS: dict[str, Any] = {}


def _cached(key: str, build) -> TokenAutomaton:
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    automaton = build()
    with _LOCK:
        _CACHE[key] = automaton
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
    return automaton


def _key(kind: str, grammar: str, info: _TokenBytes) -> str:
    return hashlib.sha256(f"{kind}\x00{grammar}\x00{info.fingerprint}".encode()).hexdigest()[:24]


# outlines-core 0.2.14 drops the transitions of a final state that lead to a non-final one (in ``1( !)?`` the
# space after "1" is missing, only EOS is left). So the index is built for ``(?:R)`` + SENTINEL, where no state
# of R is final, with one extra token (id V) spelling the sentinel: a state accepts R exactly where that token
# leads to a final state. The sentinel is a Unicode noncharacter; the only cost is that a grammar cannot
# continue after a complete match with that character.
SENTINEL = "\U0010FFFF"


def _outlines_vocabulary(info: _TokenBytes):
    import outlines_core

    if info.fingerprint not in _OC_VOCABS:
        by_bytes: dict[bytes, list[int]] = {}
        for i, b in info.pieces.items():
            by_bytes.setdefault(b, []).append(i)
        by_bytes.setdefault(SENTINEL.encode("utf-8"), []).append(info.vocab_size)
        _OC_VOCABS[info.fingerprint] = outlines_core.Vocabulary(info.eos_id, by_bytes)
    return _OC_VOCABS[info.fingerprint]


def _dense(regex: str, info: _TokenBytes) -> tuple[np.ndarray, np.ndarray, int]:
    """(transitions [S, V] without the EOS column, accepting [S], initial) of ``regex`` from outlines-core."""
    import outlines_core

    try:
        index = outlines_core.Index(f"(?:{regex}){SENTINEL}", _outlines_vocabulary(info))
    except Exception as e:  # outlines-core raises ValueError / its own error types for bad or huge patterns
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise GrammarError(f"cannot compile the grammar: {message}") from None
    raw = index.get_transitions()
    finals = set(index.get_final_states())
    ids = sorted(set(raw) | finals | {index.get_initial_state()})
    if len(ids) * info.vocab_size > MAX_TABLE_ENTRIES:
        raise GrammarError(f"the grammar has {len(ids)} states; {len(ids)} x {info.vocab_size} tokens is over the "
                           f"limit of {MAX_TABLE_ENTRIES} table entries; simplify the schema (bound lengths, fewer "
                           "alternatives)")
    number = {s: n for n, s in enumerate(ids)}
    V = info.vocab_size
    table = np.full((len(ids), V + 1), -1, np.int32)  # column V: the sentinel
    for s, row in raw.items():
        tokens = np.fromiter(row.keys(), np.int64, len(row))
        targets = np.fromiter((number[t] for t in row.values()), np.int32, len(row))
        table[number[s], tokens] = targets
    final = np.zeros(len(ids), bool)
    final[[number[s] for s in finals]] = True
    accepting = (table[:, V] >= 0) & final[np.maximum(table[:, V], 0)]
    table = table[:, :V].copy()
    table[:, info.eos_id] = -1
    return table, accepting, number[index.get_initial_state()]


def _with_start_state(table: np.ndarray, accepting: np.ndarray, initial: int, info: _TokenBytes):
    """Adds a start state for tokenizers whose decode drops the first piece's leading space: a piece " x"
    first in the text reads as "x" (walked byte by byte through single-byte tokens)."""
    row = table[initial].copy()

    def walk(data: bytes) -> int:
        state = initial
        for b in data:
            token = info.byte_tokens.get(b)
            if token is None:
                return -1
            state = int(table[state, token])
            if state < 0:
                return -1
        return state

    for i, b in info.pieces.items():
        if b[:1] == b" ":
            row[i] = walk(b[1:]) if len(b) > 1 else -1
    table = np.concatenate([table, row[None]], axis=0)
    accepting = np.concatenate([accepting, accepting[initial:initial + 1]])
    return table, accepting, table.shape[0] - 1


def _finish(table: np.ndarray, accepting: np.ndarray, initial: int, eos_id: int, key: str) -> TokenAutomaton:
    """Prunes states that cannot reach an accepting one, writes the EOS column, freezes the arrays."""
    S = table.shape[0]
    source, token = np.nonzero(table >= 0)
    target = table[source, token]
    order = np.argsort(target, kind="stable")
    source, target = source[order], target[order]
    starts = np.searchsorted(target, np.arange(S + 1))
    live = accepting.copy()
    frontier = list(np.nonzero(live)[0])
    while frontier:
        s = frontier.pop()
        for p in np.unique(source[starts[s]:starts[s + 1]]):
            if not live[p]:
                live[p] = True
                frontier.append(p)
    if not live[initial]:
        raise GrammarError("the grammar accepts no text this vocabulary can spell")
    table = np.where((table >= 0) & live[np.maximum(table, 0)], table, -1).astype(np.int32)
    table[:, eos_id] = np.where(accepting, np.arange(S, dtype=np.int32), -1)
    table.setflags(write=False)
    accepting = accepting.copy()
    accepting.setflags(write=False)
    return TokenAutomaton(table, accepting, int(initial), key, eos_id)


def _regex_automaton(regex: str, info: _TokenBytes, at_start: bool) -> tuple[np.ndarray, np.ndarray, int]:
    table, accepting, initial = _dense(regex, info)
    if at_start and info.strips_first_space:
        table, accepting, initial = _with_start_state(table, accepting, initial, info)
    return table, accepting, initial


def from_regex(pattern: str, vocabulary: Any) -> TokenAutomaton:
    """The automaton of texts that fully match ``pattern`` (outlines-core's regex dialect, Rust ``regex``
    syntax without look-around or back-references), over ``vocabulary``'s tokens. Cached by grammar."""
    info = token_bytes(vocabulary)
    key = _key("regex", pattern, info)

    def build():
        table, accepting, initial = _regex_automaton(pattern, info, at_start=True)
        return _finish(table, accepting, initial, info.eos_id, key)

    return _cached(key, build)


def schema_regex(schema: Mapping[str, Any] | str, whitespace: str = r"[ ]?") -> str:
    """The regular expression of JSON texts valid under ``schema`` (outlines-core); GrammarError if unsupported."""
    from outlines_core.json_schema import build_regex_from_schema

    text = schema if isinstance(schema, str) else json.dumps(schema)  # properties in the schema's order
    try:
        return build_regex_from_schema(text, whitespace)
    except Exception as e:
        raise GrammarError(f"unsupported JSON schema: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def from_json_schema(schema: Mapping[str, Any] | str, vocabulary: Any, whitespace: str = r"[ ]?") -> TokenAutomaton:
    """The automaton of JSON texts valid under ``schema``; ``whitespace`` is the regex allowed between tokens
    (bounded by default, so a model cannot loop on spaces)."""
    return from_regex(schema_regex(schema, whitespace), vocabulary)


def json_object_regex(depth: int = JSON_OBJECT_DEPTH, whitespace: str = r"[ ]?") -> str:
    """Any JSON object nested at most ``depth`` deep (what ``response_format={"type": "json_object"}`` asks)."""
    from outlines_core.json_schema import BOOLEAN, NULL, NUMBER, STRING

    ws = whitespace
    value = f"({STRING}|{NUMBER}|{BOOLEAN}|{NULL})"
    obj = arr = None
    for _ in range(depth):
        member = f"{STRING}{ws}:{ws}{value}"
        obj = rf"\{{{ws}({member}({ws},{ws}{member})*)?{ws}\}}"
        arr = rf"\[{ws}({value}({ws},{ws}{value})*)?{ws}\]"
        value = f"({STRING}|{NUMBER}|{BOOLEAN}|{NULL}|{obj}|{arr})"
    return obj


def json_object(vocabulary: Any, depth: int = JSON_OBJECT_DEPTH) -> TokenAutomaton:
    """The generic JSON-object automaton (bounded nesting)."""
    return from_regex(json_object_regex(depth), vocabulary)


def _marker_id(vocabulary: Any, marker: str) -> int:
    ids = list(vocabulary.encode(marker))
    if len(ids) != 1:
        raise GrammarError(f"the tokenizer has no single token for {marker!r}; tool-call grammars need it")
    return ids[0]


def tool_call(tools: Sequence[Mapping[str, Any]], vocabulary: Any, required: bool = False,
              whitespace: str = r"[ ]?") -> TokenAutomaton:
    """The grammar of an assistant turn when ``tools`` are offered: the ``<|tool_call|>`` marker token and then
    one call JSON (:func:`quark_jax.data.tool_calls.call_schema`), or, unless ``required``, free text (any
    first token but the marker leads to a state where everything is allowed)."""
    from quark_jax.data import tool_calls

    info = token_bytes(vocabulary)
    marker = _marker_id(vocabulary, tool_calls.MARKER)
    regex = schema_regex(tool_calls.call_schema(tools), whitespace)
    key = _key("tool_call_required" if required else "tool_call_auto", regex, info)

    def build():
        table, accepting, initial = _regex_automaton(regex, info, at_start=False)  # the marker precedes the JSON
        S = table.shape[0]
        start = np.full((1, info.vocab_size), -1, np.int32)
        start[0, marker] = initial
        rows, accept = [table, start], [accepting, [False]]
        if not required:
            start[0] = np.where(np.arange(info.vocab_size) == marker, initial, S + 1)
            rows.append(np.full((1, info.vocab_size), S + 1, np.int32))  # free text: anything, for ever
            accept[1] = [True]
            accept.append([True])
        return _finish(np.concatenate(rows), np.concatenate([np.asarray(a, bool) for a in accept]), S,
                       info.eos_id, key)

    return _cached(key, build)


def forced_arguments(parameters: Mapping[str, Any] | None, vocabulary: Any, whitespace: str = r"[ ]?"
                     ) -> TokenAutomaton:
    """The rest of a call whose opening the prompt already wrote (``{"name": ..., "arguments": ``): arguments
    valid under ``parameters`` and the closing ``}``."""
    schema = parameters or {"type": "object", "properties": {}}
    return from_regex(schema_regex(schema, whitespace) + whitespace + r"\}", vocabulary)


# ---- several grammars in one batch -----------------------------------------------------------------------

def min_rows(vocab_size: int) -> int:
    """The smallest row bucket of a stacked table over ``vocab_size`` tokens (a power of two)."""
    return max(MIN_STACK_STATES, 1 << max(MIN_STACK_ENTRIES // vocab_size, 1).bit_length() - 1)


def row_bucket(states: int, minimum: int = MIN_STACK_STATES) -> int:
    """The power of two (at least ``minimum``) of rows a table of ``states`` is padded to."""
    bucket = minimum
    while bucket < states:
        bucket *= 2
    return bucket


def stack(constraints: Sequence[TokenAutomaton | None], vocab_size: int, minimum: int | None = None
          ) -> tuple[np.ndarray, np.ndarray]:
    """(table [S, V], start state per row): the distinct automata of ``constraints`` one above the other under
    the free row 0 (None rows start there), rows padded to a power of two (at least ``minimum``, by default
    :func:`min_rows`), columns to ``vocab_size``."""
    minimum = min_rows(vocab_size) if minimum is None else minimum
    offsets: dict[str, int] = {}
    parts: list[TokenAutomaton] = []
    used = 1
    for c in constraints:
        if c is not None and c.key not in offsets:
            if c.vocab_size > vocab_size:
                raise GrammarError(f"the grammar's vocabulary has {c.vocab_size} tokens, the model only {vocab_size}")
            offsets[c.key] = used
            parts.append(c)
            used += c.num_states
    table = np.full((row_bucket(used, minimum), vocab_size), -1, np.int32)
    table[0] = 0
    for c in parts:
        o = offsets[c.key]
        table[o:o + c.num_states, :c.vocab_size] = np.where(c.transitions >= 0, c.transitions + o, -1)
    starts = np.array([0 if c is None else offsets[c.key] + c.initial for c in constraints], np.int32)
    return table, starts


# ---- inside the compiled loops ---------------------------------------------------------------------------

def allowed_tokens(table: Int[Array, "S V"], state: Int[Array, "B"], eos_id: int) -> Bool[Array, "B V"]:
    """The tokens each row may emit in its state; a row with none (cannot happen for a pruned automaton
    within its own rows) may end with EOS rather than sample from an empty distribution."""
    allowed = table[state] >= 0
    stuck = ~jnp.any(allowed, axis=-1, keepdims=True)
    return allowed | (stuck & (jnp.arange(table.shape[1]) == eos_id)[None, :])


def advance(table: Int[Array, "S V"], state: Int[Array, "B"], token: Int[Array, "B"]) -> Int[Array, "B"]:
    """The state after each row's token (0, the free row, after a token the grammar did not allow)."""
    return jnp.maximum(table[state, token], 0)


__all__ = ["TokenAutomaton", "GrammarError", "from_regex", "from_json_schema", "json_object", "tool_call",
           "forced_arguments", "schema_regex", "json_object_regex", "stack", "allowed_tokens", "advance",
           "token_bytes", "row_bucket", "min_rows"]
