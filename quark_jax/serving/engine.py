"""Continuous batching: a fixed set of decode slots over one KV cache, filled and emptied between decode steps.

Axis legend: B decode slots · S tokens per slot (``max_seq_len``) · P prompt bucket · K top log-probabilities ·
L layers · V vocab.

Iteration-level scheduling, as Orca, vLLM and JetStream do it. One thread owns the model and loops:

1. *admit*: while a slot is free and a request waits, prefill the request's prompt (right-padded to a bucket
   length, so a handful of compiled prefills serve every length) into the free slot's row of the cache and
   sample its first token;
2. *decode*: one compiled call advances every slot by a block of ``decode_block`` tokens (one token while a
   waiting request could take a slot that frees sooner); each row writes its key/value at its own cache index
   (``KVCache.index`` is a ``[B]`` vector here) and samples with its own temperature, top-k, top-p and PRNG
   key. Inside the block the cache stays in a loop carry, updated in place; a row that ends inside it has its
   later tokens ignored;
3. *retire*: a row that produced EOS, reached its token limit or a stop string, or whose client went away,
   frees its slot at once; the next waiting request takes it before the next step.

Every shape is fixed once the engine is built (B slots of S tokens, prompt buckets, K top log-probabilities),
so after :meth:`Engine.warm_up` serving never compiles again (``trace_count`` counts traces, for tests).

Grammar-constrained requests (``EngineRequest.constraint``, a token automaton) share one transition table on
the device: row 0 is the free state of unconstrained slots, and each grammar a request brings is copied into
free rows once (kept while a slot uses it, evicted least recently used when room is needed). Every slot
carries its automaton state; each step masks the tokens its state does not allow and moves the state along
the sampled token. The table's rows come in power-of-two capacities: only a grammar that does not fit the
current capacity grows it (one new compile), up to ``max_grammar_states``.

A row's tokens depend only on its own prompt, parameters and seed: nothing in a step mixes rows, and the
token ``i`` of a row is drawn with ``fold_in(key(seed), i)``, so the same request with the same seed gives
the same text whatever else shares the batch. A shared prefix (a chat's system prompt) is prefilled once,
kept in a small LRU, and copied into a slot's row before the rest of the prompt is prefilled on top of it.

With a draft model (``Engine(..., draft=Draft)``, ``quark serve --draft_dir``) the decode call runs exact
speculative rounds instead of one-token steps: every slot also has a row in the draft's KV cache (filled at
prefill over the whole prompt), the draft proposes γ tokens, the target verifies them in one call, and each slot
emits 1..γ+1 tokens with its own sampling parameters and seed, grammar rows included
(:mod:`quark_jax.serving.speculative_step`). The answers are those of the engine without the draft.

Requests come in from any thread (:meth:`Engine.submit`); results go out as :class:`Output` events on the
request's own queue (an ``asyncio`` queue when the caller gives its event loop, so a web server awaits them).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct
from jaxtyping import Array, Float, Int

from quark_jax.inference import constrained as grammar_lib
from quark_jax.inference.decode import NEG_INF, sample_rows
from quark_jax.inference import speculative as speculative_lib
from quark_jax.inference.speculative import Draft
from quark_jax.models.transformer import KVCache
from quark_jax.serving.speculative_step import make_draft_prefill_fn, make_speculative_decode_fn
from quark_jax.serving.text import TextStream

log = logging.getLogger(__name__)

TOP_K = 20  # top log-probabilities computed when a request asks for any (OpenAI allows at most 20)
MIN_BUCKET = 16
GRAMMAR_TABLE_BYTES = 16 * 2**20  # the grammar table's first capacity (rows of int32 over the vocabulary)
MAX_GRAMMAR_TABLE_BYTES = 2**30  # its largest


class QueueFull(Exception):
    """The waiting queue is at its limit; the caller should retry later (HTTP 429)."""


@dataclasses.dataclass
class EngineRequest:
    """One sequence to generate, in token ids. ``stop`` holds stop *strings* (matched on the decoded text);
    ``logprobs`` asks for that many top alternatives per generated token (0: only the chosen token's);
    ``prompt_logprobs`` asks for the prompt tokens' log-probabilities too (the ``echo`` of legacy completions);
    ``prefix`` is a shared leading context (a system prompt) prefilled once and reused across requests;
    ``constraint`` a grammar (:class:`~quark_jax.inference.constrained.TokenAutomaton`) the new tokens follow."""

    prompt: Sequence[int]
    max_tokens: int
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop: Sequence[str] = ()
    logprobs: int = 0
    prompt_logprobs: bool = False
    prefix: Sequence[int] = ()
    constraint: grammar_lib.TokenAutomaton | None = None


@dataclasses.dataclass
class Output:
    """A piece of one request's result. ``text`` is new text (never half a character, never stop-string
    text); ``token_ids``/``logprobs``/``top_logprobs`` are the tokens sampled since the last event (an EOS
    that ended the request included).
    The first event of a ``prompt_logprobs`` request carries ``prompt_logprobs`` (None for the first token)
    and ``prompt_top_logprobs``. The last event has ``finish_reason`` (``"stop"``: EOS or a stop string,
    ``"length"``: ``max_tokens``, ``"cancelled"``) and the token counts."""

    text: str = ""
    token_ids: list[int] = dataclasses.field(default_factory=list)
    logprobs: list[float] = dataclasses.field(default_factory=list)
    top_logprobs: list[dict[int, float]] = dataclasses.field(default_factory=list)
    prompt_logprobs: list[float | None] | None = None
    prompt_top_logprobs: list[dict[int, float] | None] | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, later: Output) -> None:
        """Appends a later event of the same request (a request's events added in order make its whole result)."""
        self.text += later.text
        self.token_ids += later.token_ids
        self.logprobs += later.logprobs
        self.top_logprobs += later.top_logprobs
        if later.prompt_logprobs is not None:
            self.prompt_logprobs, self.prompt_top_logprobs = later.prompt_logprobs, later.prompt_top_logprobs
        if later.finish_reason is not None:
            self.finish_reason = later.finish_reason
            self.prompt_tokens, self.completion_tokens = later.prompt_tokens, later.completion_tokens


class RequestHandle:
    """A submitted request: iterate its :class:`Output` events (``async for`` with an event loop, else a plain
    ``for``); :meth:`cancel` frees its slot (a client that went away)."""

    def __init__(self, request: EngineRequest, loop: asyncio.AbstractEventLoop | None):
        self.request = request
        self.loop = loop
        self.cancelled = threading.Event()
        self.submitted = time.monotonic()
        self._queue: Any = asyncio.Queue() if loop is not None else queue.SimpleQueue()

    def _emit(self, output: Output) -> None:
        if self.loop is None:
            self._queue.put(output)
        else:
            try:
                self.loop.call_soon_threadsafe(self._queue.put_nowait, output)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                self.cancelled.set()

    def cancel(self) -> None:
        self.cancelled.set()

    def __iter__(self):
        while True:
            output = self._queue.get()
            yield output
            if output.finish_reason is not None:
                return

    async def __aiter__(self):
        while True:
            output = await self._queue.get()
            yield output
            if output.finish_reason is not None:
                return


@struct.dataclass
class Slots:
    """The device state of every decode slot: the shared cache (one row per slot) and each row's next input
    token, its position, its sampling parameters, PRNG key and how many tokens it has sampled."""

    cache: KVCache  # index: [B], the next cache slot each row writes
    tokens: Int[Array, "B"]
    positions: Int[Array, "B"]
    temperature: Float[Array, "B"]
    top_k: Int[Array, "B"]
    top_p: Float[Array, "B"]
    keys: jax.Array  # [B] typed PRNG keys
    steps: Int[Array, "B"]
    grammar: Int[Array, "B"]  # each row's state in the grammar table (0: free)
    previous: Int[Array, "B"]  # the token before ``tokens`` (a speculative round's draft re-feeds it)
    draft_cache: KVCache | None = None  # a speculative engine's draft cache: the token at position t in slot t


def _top(logprobs: Float[Array, "... V"], k: int):
    values, ids = jax.lax.top_k(logprobs, k)
    return ids.astype(jnp.int32), values


def make_prefill_fn(graphdef: nnx.GraphDef, prompt_top: bool, trace_counter: list[int]) -> Callable:
    """``prefill(params, slots, slot, tokens [1, P], length, start, position, temperature, top_k, top_p, key,
    grammar_row [V])`` -> (slots, first token, its logprob, its top-K ids/logprobs, prompt logprobs [P],
    prompt top-K [P, K]). ``grammar_row`` is the grammar table's row of the request's start state (all 0 for a
    free request): the first token is drawn among the tokens it allows, and the row's state becomes its entry.

    The prompt is written into row ``slot`` from cache index ``start`` (after a copied prefix; 0 without one)
    at positions ``position + i``; what the row held past ``start`` is masked out first, so a reused slot never
    sees its previous request. ``prompt_top`` compiles the prompt tokens' top-K in (echo with logprobs)."""

    def prefill(params, slots: Slots, slot, tokens, length, start, position, temperature, top_k, top_p, key,
                grammar_row):
        trace_counter[0] += 1
        model = nnx.merge(graphdef, params)
        cache = slots.cache
        S, P = cache.max_length, tokens.shape[1]
        kept = jnp.arange(S)[None, :] < start
        row_cache = cache.row(slot, index=start)
        row_cache = row_cache.replace(segment_ids=jnp.where(kept, row_cache.segment_ids, 0))
        steps = jnp.arange(P, dtype=jnp.int32)[None, :]
        segments = (steps < length).astype(jnp.int32)
        logits, row_cache, hidden = model(tokens, position + steps, segments, row_cache, return_hidden=True)
        cache = cache.with_row(slot, row_cache).replace(index=cache.index.at[slot].set(start + length))

        # Only the last prompt position's logits are needed to continue; the whole [P, V] log-softmax is
        # computed only for echo (XLA drops the unused full logits otherwise).
        last_hidden = jax.lax.dynamic_slice_in_dim(hidden, length - 1, 1, axis=1)
        last_logits = jnp.where(grammar_row >= 0, model.logits(last_hidden)[0, 0], NEG_INF)
        last = jax.nn.log_softmax(last_logits, axis=-1)  # [V]
        seeded = jax.random.fold_in(key, 0)
        token = sample_rows(last[None], seeded[None], temperature[None], top_k[None], top_p[None], True)[0]
        first_ids, first_values = _top(last, TOP_K)
        prompt_logprobs = prompt_top_out = None
        if prompt_top:
            logprobs = jax.nn.log_softmax(logits[0, :-1], axis=-1)  # [P-1 V]: predicts tokens 1..P-1
            prompt_logprobs = jnp.take_along_axis(logprobs, tokens[0, 1:, None], axis=-1)[:, 0]
            prompt_top_out = _top(logprobs, TOP_K)
        slots = slots.replace(
            cache=cache,
            tokens=slots.tokens.at[slot].set(token),
            previous=slots.previous.at[slot].set(tokens[0, length - 1]),
            positions=slots.positions.at[slot].set(position + length),
            temperature=slots.temperature.at[slot].set(temperature),
            top_k=slots.top_k.at[slot].set(top_k),
            top_p=slots.top_p.at[slot].set(top_p),
            keys=slots.keys.at[slot].set(key),
            steps=slots.steps.at[slot].set(1),
            grammar=slots.grammar.at[slot].set(jnp.maximum(grammar_row[token], 0)),
        )
        return slots, (token, last[token], first_ids, first_values, prompt_logprobs, prompt_top_out)

    return jax.jit(prefill, donate_argnums=(1,))


def make_decode_fn(graphdef: nnx.GraphDef, filtering: bool, steps: int, trace_counter: list[int], eos_id: int
                   ) -> Callable:
    """``decode(params, slots, grammar [G, V])`` -> (slots, tokens [B, N], logprobs [B, N], top-K ids [B, N, K],
    top-K logprobs [B, N, K]): ``steps`` (N) tokens for every slot, in one call. Each row samples among the
    tokens its grammar state allows (every token in the free state 0) and moves its state along.

    N > 1 keeps the cache in a ``fori_loop`` carry, updated in place, instead of passing it through the jit
    boundary after every token, and pays Python's dispatch once per N tokens; a row that ends inside the block
    simply has its later tokens ignored. ``filtering`` compiles top-k/top-p in (a sort over the vocabulary)."""

    def one(model, slots: Slots, grammar):
        cache = slots.cache
        positions = slots.positions[:, None]
        logits, cache = model(slots.tokens[:, None], positions, jnp.ones_like(positions), cache)
        allowed = grammar_lib.allowed_tokens(grammar, slots.grammar, eos_id)  # [B V]
        logprobs = jax.nn.log_softmax(jnp.where(allowed, logits[:, 0], NEG_INF), axis=-1)  # [B V]
        keys = jax.vmap(jax.random.fold_in)(slots.keys, slots.steps)
        tokens = sample_rows(logprobs, keys, slots.temperature, slots.top_k, slots.top_p, filtering)
        chosen = jnp.take_along_axis(logprobs, tokens[:, None], axis=-1)[:, 0]
        top_ids, top_values = _top(logprobs, TOP_K)
        # A free row keeps stepping (fixed shapes); keep its index inside the cache.
        cache = cache.replace(index=jnp.minimum(cache.index, cache.max_length - 1))
        slots = slots.replace(cache=cache, tokens=tokens, positions=slots.positions + 1, steps=slots.steps + 1,
                              grammar=grammar_lib.advance(grammar, slots.grammar, tokens))
        return slots, (tokens, chosen, top_ids, top_values)

    def decode(params, slots: Slots, grammar):
        trace_counter[0] += 1
        model = nnx.merge(graphdef, params)
        B = slots.tokens.shape[0]
        outputs = (jnp.zeros((B, steps), jnp.int32), jnp.zeros((B, steps), jnp.float32),
                   jnp.zeros((B, steps, TOP_K), jnp.int32), jnp.zeros((B, steps, TOP_K), jnp.float32))

        def body(i, carry):
            slots, outputs = carry
            slots, step = one(model, slots, grammar)
            return slots, tuple(o.at[:, i].set(x) for o, x in zip(outputs, step))

        return jax.lax.fori_loop(0, steps, body, (slots, outputs))

    return jax.jit(decode, donate_argnums=(1,))


def make_prefix_fn(graphdef: nnx.GraphDef, trace_counter: list[int]) -> Callable:
    """``prefix(params, tokens [1, Q], length)`` -> (k, v [L 1 Q K H], segment ids [1, Q]): a shared prefix."""

    def prefix(params, tokens, length):
        trace_counter[0] += 1
        model = nnx.merge(graphdef, params)
        Q = tokens.shape[1]
        steps = jnp.arange(Q, dtype=jnp.int32)[None, :]
        segments = (steps < length).astype(jnp.int32)
        _, cache = model(tokens, steps, segments, KVCache.init(model.config, 1, Q))
        return cache.k, cache.v, segments

    return jax.jit(prefix)


def make_insert_prefix_fn(trace_counter: list[int]) -> Callable:
    """``insert(slots, slot, k, v, segments)`` -> slots with the prefix copied into the first Q cache slots of row
    ``slot`` (positions 0..Q-1; the prefix's padding keeps segment id 0)."""

    def insert(slots: Slots, slot, k, v, segments):
        trace_counter[0] += 1
        cache = slots.cache
        Q = k.shape[2]
        def put(a, r):
            return jax.lax.dynamic_update_slice(a, r.astype(a.dtype), (0, slot) + (0,) * (a.ndim - 2))

        cache = cache.replace(
            k=put(cache.k, k), v=put(cache.v, v),
            positions=jax.lax.dynamic_update_slice(cache.positions, jnp.arange(Q, dtype=jnp.int32)[None], (slot, 0)),
            segment_ids=jax.lax.dynamic_update_slice(cache.segment_ids, segments, (slot, 0)),
        )
        return slots.replace(cache=cache)

    return jax.jit(insert, donate_argnums=(0,))


def buckets(max_seq_len: int, smallest: int = MIN_BUCKET) -> list[int]:
    """Prompt-length buckets: powers of two from ``smallest`` below ``max_seq_len``, then ``max_seq_len``."""
    out, b = [], smallest
    while b < max_seq_len:
        out.append(b)
        b *= 2
    return out + [max_seq_len]


@dataclasses.dataclass
class _Active:
    handle: RequestHandle
    text: TextStream
    generated: int = 0
    grammar: str | None = None  # the key of the grammar this slot uses


@dataclasses.dataclass
class _Placed:
    """A grammar copied into the table: its first row, its rows, and how many slots use it."""

    offset: int
    size: int
    users: int = 0


class GrammarTable:
    """The host copy of the engine's grammar table and where each grammar lives in it (see the module
    docstring); :attr:`device` is the array the compiled functions read."""

    def __init__(self, vocab_size: int, capacity: int, max_capacity: int):
        self.vocab_size, self.max_capacity = vocab_size, max_capacity
        self.host = np.full((capacity, vocab_size), -1, np.int32)
        self.host[0] = 0
        self.placed: collections.OrderedDict[str, _Placed] = collections.OrderedDict()
        self.device = jnp.asarray(self.host)

    @property
    def capacity(self) -> int:
        return self.host.shape[0]

    def _gap(self, size: int) -> int | None:
        """The first row of a free run of ``size`` rows, or None."""
        start = 1
        for p in sorted(self.placed.values(), key=lambda p: p.offset):
            if p.offset - start >= size:
                return start
            start = max(start, p.offset + p.size)
        return start if self.capacity - start >= size else None

    def acquire(self, automaton: grammar_lib.TokenAutomaton) -> int | None:
        """The table row of ``automaton``'s start state, copying it in (evicting unused grammars, growing the
        table) if needed; None while the grammars of running requests leave no room for it."""
        placed = self.placed.get(automaton.key)
        if placed is None:
            offset = self._gap(automaton.num_states)
            while offset is None and any(p.users == 0 for p in self.placed.values()):
                unused = next(k for k, p in self.placed.items() if p.users == 0)  # least recently used first
                del self.placed[unused]
                offset = self._gap(automaton.num_states)
            if offset is None:
                end = max([p.offset + p.size for p in self.placed.values()] + [1])
                capacity = grammar_lib.row_bucket(end + automaton.num_states, self.capacity)
                if capacity > self.max_capacity:
                    return None
                log.info("grammar table grows to %d states (one new compile)", capacity)
                grown = np.full((capacity, self.vocab_size), -1, np.int32)
                grown[: self.capacity] = self.host
                self.host, offset = grown, end
            t = automaton.transitions
            self.host[offset: offset + t.shape[0]] = -1
            self.host[offset: offset + t.shape[0], : t.shape[1]] = np.where(t >= 0, t + offset, -1)
            placed = self.placed[automaton.key] = _Placed(offset, automaton.num_states)
            self.device = jnp.asarray(self.host)
        self.placed.move_to_end(automaton.key)
        placed.users += 1
        return placed.offset + automaton.initial

    def release(self, key: str) -> None:
        if key in self.placed:
            self.placed[key].users -= 1


@dataclasses.dataclass
class SpeculationCounters:
    """What a speculative engine's rounds did, summed over every live slot: ``target_calls`` (rounds: one target
    forward pass each), ``drafted`` (γ per round), ``accepted`` (drafts kept), ``examined`` (drafts judged: the
    accepted ones plus the first rejected one of a round) and ``emitted`` (tokens the rounds delivered to
    requests; a round's tokens past a request's end are not counted)."""

    target_calls: int = 0
    drafted: int = 0
    accepted: int = 0
    examined: int = 0
    emitted: int = 0

    @property
    def acceptance_rate(self) -> float:
        return speculative_lib.acceptance_rate(self.accepted, self.examined)

    @property
    def tokens_per_target_call(self) -> float:
        return self.emitted / self.target_calls if self.target_calls else 0.0


class Engine:
    """Continuous batching over ``max_slots`` decode slots of ``max_seq_len`` tokens (see the module docstring).

    ``graphdef``/``params`` are the model (quantized parameters work as they are), ``vocabulary`` decodes
    text. ``max_queue`` bounds the requests waiting for a slot (beyond it :meth:`submit` raises
    :class:`QueueFull`); ``prefix_cache_size`` shared prefixes are kept. With a ``draft`` (a small model sharing
    the vocabulary) every decode call runs exact speculative rounds instead of one-token steps
    (:mod:`quark_jax.serving.speculative_step`); :attr:`speculation` counts what they did."""

    def __init__(self, graphdef: nnx.GraphDef, params: Any, vocabulary: Any, config: Any, *, eos_id: int,
                 max_slots: int = 8, max_seq_len: int = 512, max_queue: int = 256, prefix_cache_size: int = 8,
                 decode_block: int = 8, grammar_states: int | None = None, max_grammar_states: int | None = None,
                 draft: Draft | None = None):
        if max_slots < 1:
            raise ValueError(f"max_slots={max_slots}: must be >= 1")
        if max_seq_len < 2:
            raise ValueError(f"max_seq_len={max_seq_len}: must be >= 2")
        if decode_block < 1:
            raise ValueError(f"decode_block={decode_block}: must be >= 1")
        self.graphdef, self.params, self.vocabulary, self.config = graphdef, params, vocabulary, config
        self.eos_id = int(eos_id)
        self.max_slots, self.max_seq_len, self.max_queue = max_slots, max_seq_len, max_queue
        self.buckets = buckets(max_seq_len)
        self.trace_count = [0]
        self._prefill = {flag: make_prefill_fn(graphdef, flag, self.trace_count) for flag in (False, True)}
        self.decode_block = decode_block
        self.draft = draft
        self.speculation = SpeculationCounters()
        if draft is None:
            self.rounds = 0
            self._decode = {(flag, n): make_decode_fn(graphdef, flag, n, self.trace_count, self.eos_id)
                            for flag in (False, True) for n in sorted({1, decode_block})}
        else:
            if draft.gamma < 1:
                raise ValueError(f"draft: gamma={draft.gamma}, must be >= 1 (draft tokens per target call)")
            self._draft_config = nnx.merge(draft.graphdef, draft.params).config
            if self._draft_config.vocab_size != config.vocab_size:
                raise ValueError(f"draft: {self._draft_config.vocab_size} token ids, the target has "
                                 f"{config.vocab_size}; a draft must share the target's tokenizer")
            # Rounds per call: about decode_block tokens when most drafts are accepted (one round while a
            # waiting request could take a slot that frees sooner).
            self.rounds = -(-decode_block // (draft.gamma + 1))
            self._draft_prefill = make_draft_prefill_fn(draft.graphdef, self.trace_count)
            # The round count is an argument: one compiled function per filtering flag serves 1..rounds.
            speculative = {flag: make_speculative_decode_fn(graphdef, draft.graphdef, draft.gamma, flag, self.rounds,
                                                            TOP_K, max_seq_len, self.eos_id, self.trace_count)
                           for flag in (False, True)}
            self._decode = {(flag, n): functools.partial(speculative[flag], run=np.int32(n))
                            for flag in (False, True) for n in sorted({1, self.rounds})}
        # The grammar table: rows of int32 over the vocabulary, a power of two of them, sized by bytes.
        rows = lambda nbytes: max(16, 1 << max(nbytes // (4 * config.vocab_size), 1).bit_length() - 1)  # noqa: E731
        self.max_grammar_states = max_grammar_states or rows(MAX_GRAMMAR_TABLE_BYTES)
        first = grammar_states or rows(GRAMMAR_TABLE_BYTES)
        self.grammars = GrammarTable(config.vocab_size, min(first, self.max_grammar_states), self.max_grammar_states)
        self._prefix_fn = make_prefix_fn(graphdef, self.trace_count)
        self._insert_fn = make_insert_prefix_fn(self.trace_count)
        self._prefixes: collections.OrderedDict[tuple[int, ...], tuple] = collections.OrderedDict()
        self.prefix_cache_size = prefix_cache_size
        self.prefix_hits = 0
        self._slots = self._empty_slots()
        self._active: list[_Active | None] = [None] * max_slots
        self._waiting: collections.deque[RequestHandle] = collections.deque()
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop = False
        self.ready = False
        self.steps = 0  # decode steps run
        self.error: BaseException | None = None  # what stopped the loop, if anything did
        self.on_step: Callable[[Engine], None] | None = None  # called after every decode step (metrics)

    # ---- public API ------------------------------------------------------------------------------------
    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def busy_slots(self) -> int:
        return sum(a is not None for a in self._active)

    def check(self, request: EngineRequest) -> None:
        """Raises ValueError (naming the field) when ``request`` cannot fit this engine."""
        prompt = len(request.prefix) + len(request.prompt)
        if len(request.prompt) == 0:
            raise ValueError("prompt: must have at least one token")
        if prompt > self.max_seq_len:
            raise ValueError(f"prompt: {prompt} tokens, longer than this server's context of {self.max_seq_len} "
                             "tokens; shorten the prompt")
        if prompt + max(request.max_tokens, 0) > self.max_seq_len:
            raise ValueError(
                f"max_tokens: {prompt} prompt tokens + max_tokens {request.max_tokens} exceed this server's context "
                f"of {self.max_seq_len} tokens; lower max_tokens or shorten the prompt")
        if request.prefix and len(request.prefix) > self.buckets[-1]:
            raise ValueError(f"prefix: {len(request.prefix)} tokens, more than {self.buckets[-1]}")
        bad = [t for t in request.prompt if not 0 <= int(t) < self.config.vocab_size]
        if bad:
            raise ValueError(f"prompt: token id {bad[0]} is outside the vocabulary (0..{self.config.vocab_size - 1})")
        c = request.constraint
        if c is not None and c.vocab_size > self.config.vocab_size:
            raise ValueError(f"constraint: built over {c.vocab_size} tokens, the model has {self.config.vocab_size}")
        if c is not None and c.num_states + 1 > self.max_grammar_states:
            raise ValueError(f"constraint: the grammar has {c.num_states} states, over this server's limit of "
                             f"{self.max_grammar_states - 1}; simplify the schema")

    def submit(self, request: EngineRequest, loop: asyncio.AbstractEventLoop | None = None) -> RequestHandle:
        """Queues ``request``; raises ValueError for a request that cannot fit and :class:`QueueFull`."""
        self.check(request)
        handle = RequestHandle(request, loop)
        with self._lock:
            if self.error is not None:
                raise RuntimeError(f"the engine stopped: {self.error!r}")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests are waiting (the limit is {self.max_queue})")
            self._waiting.append(handle)
            self._lock.notify()
        return handle

    def generate(self, request: EngineRequest) -> Output:
        """Runs ``request`` to the end from a plain thread; one merged :class:`Output`."""
        merged = Output()
        for out in self.submit(request):
            merged.add(out)
        return merged

    def start(self) -> Engine:
        """Starts the scheduling thread (call :meth:`warm_up` first to compile before traffic)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="quark-engine", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        with self._lock:
            self._stop = True
            self._lock.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def warm_up(self, progress: Callable[[str], None] | None = None) -> None:
        """Compiles every function serving can need (each prompt bucket with and without prompt log-probs,
        both decode variants, a prefix per bucket), so that no request ever waits for a compile."""
        started = time.monotonic()
        for bucket in self.buckets:
            for flag in (False, True):
                if progress:
                    progress(f"prefill {bucket}{' + prompt logprobs' if flag else ''}")
                self._run_prefill(0, np.ones((1, bucket), np.int32), 1, 0, 0, EngineRequest([1], 1), flag)
            if bucket < self.max_seq_len:
                k, v, segments = self._prefix_rows(tuple([1] * bucket))
                self._slots = self._insert_fn(self._slots, np.int32(0), k, v, segments)
            if self.draft is not None:
                self._slots = self._draft_prefill(self.draft.params, self._slots, np.int32(0),
                                                  np.ones((1, bucket), np.int32), np.int32(1))
        for key in self._decode:
            self._slots, _ = self._run_decode(key)
        self._prefixes.clear()
        self._slots = self._empty_slots()
        jax.block_until_ready(self._slots)
        self.ready = True
        log.info("compiled %d functions in %.1f s", self.trace_count[0], time.monotonic() - started)

    # ---- the scheduling loop ---------------------------------------------------------------------------
    def _empty_slots(self) -> Slots:
        B = self.max_slots
        # A speculative round writes up to γ slots past a live row's last one (speculative_step's docstring).
        length = self.max_seq_len + (self.draft.gamma if self.draft is not None else 0)
        cache = KVCache.init(self.config, B, length)
        cache = cache.replace(index=jnp.zeros((B,), jnp.int32))
        draft_cache = None
        if self.draft is not None:
            draft_cache = KVCache.init(self._draft_config, B, length).replace(index=jnp.zeros((B,), jnp.int32))
        return Slots(cache=cache, tokens=jnp.zeros((B,), jnp.int32), positions=jnp.zeros((B,), jnp.int32),
                     temperature=jnp.zeros((B,), jnp.float32), top_k=jnp.zeros((B,), jnp.int32),
                     top_p=jnp.ones((B,), jnp.float32), keys=jax.vmap(jax.random.key)(jnp.zeros((B,), jnp.uint32)),
                     steps=jnp.zeros((B,), jnp.int32), grammar=jnp.zeros((B,), jnp.int32),
                     previous=jnp.zeros((B,), jnp.int32), draft_cache=draft_cache)

    def _run_decode(self, key: tuple[bool, int]):
        if self.draft is None:
            return self._decode[key](self.params, self._slots, self.grammars.device)
        return self._decode[key](self.params, self.draft.params, self._slots, self.grammars.device)

    def _loop(self) -> None:
        try:
            while True:
                with self._lock:
                    while not self._stop and not self._waiting and self.busy_slots == 0:
                        self._lock.wait()
                    if self._stop:
                        break
                self._admit()
                if self.busy_slots:
                    self._step()
        except BaseException as e:  # a bug or a device failure: fail every request rather than hang them
            log.exception("the serving engine stopped")
            self.error = e
            self._fail_all()
        finally:
            self._fail_all("cancelled")

    def _fail_all(self, reason: str = "error") -> None:
        with self._lock:
            waiting, self._waiting = list(self._waiting), collections.deque()
        for i, active in enumerate(self._active):
            if active is not None:
                active.handle._emit(Output(finish_reason=reason))
                self._retire(i)
        for handle in waiting:
            handle._emit(Output(finish_reason=reason))

    def _admit(self) -> None:
        while True:
            free = [i for i, a in enumerate(self._active) if a is None]
            with self._lock:
                if not free or not self._waiting:
                    return
                handle = self._waiting.popleft()
            if handle.cancelled.is_set():
                handle._emit(Output(finish_reason="cancelled"))
                continue
            if not self._start(free[0], handle):
                with self._lock:  # its grammar does not fit beside the running ones: it waits for them
                    self._waiting.appendleft(handle)
                return

    def _retire(self, slot: int) -> None:
        active = self._active[slot]
        if active is not None and active.grammar is not None:
            self.grammars.release(active.grammar)
        self._active[slot] = None

    def _prefix_rows(self, prefix: tuple[int, ...]) -> tuple:
        if prefix in self._prefixes:
            self._prefixes.move_to_end(prefix)
            self.prefix_hits += 1
            return self._prefixes[prefix]
        bucket = next(b for b in self.buckets if b >= len(prefix))
        tokens = np.zeros((1, bucket), np.int32)
        tokens[0, : len(prefix)] = prefix
        rows = self._prefix_fn(self.params, tokens, np.int32(len(prefix)))
        self._prefixes[prefix] = rows
        while len(self._prefixes) > self.prefix_cache_size:
            self._prefixes.popitem(last=False)
        return rows

    def _run_prefill(self, slot: int, tokens: np.ndarray, length: int, start: int, position: int,
                     request: EngineRequest, prompt_top: bool, grammar_state: int = 0):
        seed = request.seed if request.seed is not None else secrets.randbits(32)
        key = jax.random.key(np.uint32(seed % 2**32))
        self._slots, out = self._prefill[prompt_top](
            self.params, self._slots, np.int32(slot), tokens, np.int32(length), np.int32(start), np.int32(position),
            np.float32(request.temperature), np.int32(request.top_k), np.float32(request.top_p), key,
            self.grammars.host[grammar_state])
        return out

    def _start(self, slot: int, handle: RequestHandle) -> bool:
        """Prefills ``handle``'s request into ``slot``; False (nothing done) when its grammar has no room yet."""
        request = handle.request
        grammar_state = 0
        if request.constraint is not None:
            grammar_state = self.grammars.acquire(request.constraint)
            if grammar_state is None:
                return False
        start = position = 0
        prompt = list(request.prompt)
        bucket = next(b for b in self.buckets if b >= len(prompt))
        prefix_bucket = next((b for b in self.buckets if b >= len(request.prefix)), self.max_seq_len)
        if request.prefix and prefix_bucket + max(bucket, len(prompt) + request.max_tokens) > self.max_seq_len:
            # After the padded prefix, the prompt's bucket or the whole answer would overrun the row: prefill
            # prefix and prompt as one prompt (check() guarantees that fits).
            prompt = list(request.prefix) + prompt
            bucket = next(b for b in self.buckets if b >= len(prompt))
        elif request.prefix:
            k, v, segments = self._prefix_rows(tuple(int(t) for t in request.prefix))
            self._slots = self._insert_fn(self._slots, np.int32(slot), k, v, segments)
            start, position = k.shape[2], len(request.prefix)
        tokens = np.zeros((1, bucket), np.int32)
        tokens[0, : len(prompt)] = prompt
        wants_prompt = request.prompt_logprobs
        token, logprob, top_ids, top_values, prompt_lps, prompt_top = jax.device_get(self._run_prefill(
            slot, tokens, len(prompt), start, position, request, wants_prompt, grammar_state))
        if self.draft is not None:
            # The draft's row: the whole prompt, prefix included, from slot 0 (no prefix cache of its own).
            whole = list(request.prefix) + list(request.prompt)
            draft_tokens = np.zeros((1, next(b for b in self.buckets if b >= len(whole))), np.int32)
            draft_tokens[0, : len(whole)] = whole
            self._slots = self._draft_prefill(self.draft.params, self._slots, np.int32(slot), draft_tokens,
                                              np.int32(len(whole)))
        active = _Active(handle, TextStream(self.vocabulary, request.stop),
                         grammar=None if request.constraint is None else request.constraint.key)
        first = Output(prompt_tokens=len(request.prefix) + len(request.prompt))
        if wants_prompt:
            n = len(prompt)
            first.prompt_logprobs = [None] + [float(x) for x in prompt_lps[: n - 1]]
            ids, values = prompt_top
            first.prompt_top_logprobs = [None] + [
                _top_dict(ids[i], values[i], request.logprobs) for i in range(n - 1)]
        self._active[slot] = active
        if request.max_tokens == 0:
            first.finish_reason = "length"
            self._retire(slot)
        elif self._record(active, int(token), float(logprob), top_ids, top_values, first):
            self._retire(slot)
        handle._emit(first)
        return True

    def _step(self) -> None:
        active = [(slot, a) for slot, a in enumerate(self._active) if a is not None]
        filtering = any(a.handle.request.temperature > 0 and (a.handle.request.top_k > 0 or a.handle.request.top_p < 1.0)
                        for _, a in active)
        # A block of tokens per call, unless a waiting request could take a slot that frees sooner.
        soonest = min(a.handle.request.max_tokens - a.generated for _, a in active)
        if self.draft is not None:
            block = self.rounds * (self.draft.gamma + 1)
            self._speculative_step(active, filtering, self.rounds if not self._waiting or soonest >= block else 1)
            return
        steps = self.decode_block if not self._waiting or soonest >= self.decode_block else 1
        self._slots, out = self._run_decode((filtering, steps))
        tokens, logprobs, top_ids, top_values = jax.device_get(out)
        self.steps += steps
        for slot, a in active:
            out = Output()
            for j in range(steps):
                if self._record(a, int(tokens[slot, j]), float(logprobs[slot, j]), top_ids[slot, j],
                                top_values[slot, j], out):
                    self._retire(slot)
                    break
            a.handle._emit(out)
        if self.on_step is not None:
            self.on_step(self)

    def _speculative_step(self, active: list[tuple[int, _Active]], filtering: bool, rounds: int) -> None:
        """``rounds`` speculative rounds for every slot; each live slot takes each round's 1..γ+1 tokens in order
        until its request ends."""
        self._slots, out = self._run_decode((filtering, rounds))
        tokens, counts, logprobs, top_ids, top_values = jax.device_get(out)
        self.steps += rounds
        gamma, counters = self.draft.gamma, self.speculation
        for slot, a in active:
            out, finished = Output(), False
            for r in range(rounds):
                count = int(counts[slot, r])
                counters.target_calls += 1
                counters.drafted += gamma
                counters.accepted += count - 1
                counters.examined += min(count, gamma)
                for j in range(count):
                    finished = self._record(a, int(tokens[slot, r, j]), float(logprobs[slot, r, j]),
                                            top_ids[slot, r, j], top_values[slot, r, j], out)
                    counters.emitted += out.finish_reason != "cancelled"  # a cancelled request takes no token
                    if finished:
                        break
                if finished:
                    self._retire(slot)
                    break
            a.handle._emit(out)
        if self.on_step is not None:
            self.on_step(self)

    def _record(self, active: _Active, token: int, logprob: float, top_ids, top_values, out: Output) -> bool:
        """Adds one sampled token to ``out``; True (with ``out.finish_reason`` set) when the request is finished."""
        request, handle = active.handle.request, active.handle
        if handle.cancelled.is_set():
            out.finish_reason = "cancelled"
            return True
        active.generated += 1
        finish = None
        # EOS is reported like any token (an echo of legacy completions counts on one entry per generated
        # token) but adds no text.
        out.token_ids.append(token)
        out.logprobs.append(logprob)
        out.top_logprobs.append(_top_dict(top_ids, top_values, request.logprobs))
        if token == self.eos_id:
            finish = "stop"
        else:
            out.text += active.text.push(token)
            if active.text.stopped:
                finish = "stop"
            elif active.generated >= request.max_tokens:
                finish = "length"
        if finish is None:
            return False
        out.text += active.text.finish()
        out.finish_reason = finish
        out.prompt_tokens = len(request.prefix) + len(request.prompt)
        out.completion_tokens = active.generated
        return True


def _top_dict(ids, values, n: int) -> dict[int, float]:
    return {int(i): float(v) for i, v in zip(ids[:n], values[:n])}


__all__ = ["Engine", "EngineRequest", "GrammarTable", "Output", "QueueFull", "RequestHandle", "SpeculationCounters",
           "buckets"]
