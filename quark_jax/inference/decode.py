"""Compiled prefill + decode with a KV cache: sampling, stop conditions, prefix caching, scoring, beam search.

Axis legend: B batch · P prompt length (bucketed) · Q prefix length (bucketed) · M max new tokens ·
V vocab · W beams · N stop sequences per row · S stop sequence length (bucketed) · T scored length ·
L layers · K kv heads · H head dim.

Prompts of different lengths are right-padded to one bucket length; padding gets segment id 0 so no token
ever attends to it, and every row continues at its own position (``prefix_length + prompt_length + i``).
The cache slots left empty between a short prompt and the first generated token are masked the same way, so
batched generation equals generating each prompt alone.

Everything that varies per request (prompt length, max tokens, temperature, top-k, top-p, seed, stop
sequences) is an *array* argument of the compiled function, so one compiled function serves every request
that falls in its (batch bucket, prompt bucket, max new tokens) bucket. Only the shapes and the
``DecodeSpec`` (whether top-k/top-p filtering is compiled in) select a different function.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx, struct
from jaxtyping import Array, Bool, Float, Int

from quark_jax.inference import constrained as grammar_lib
from quark_jax.models.transformer import KVCache

NEG_INF = float(jnp.finfo(jnp.float32).min)


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How the next token is chosen. ``temperature == 0`` is greedy; top_k 0 and top_p 1 disable those filters."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k} must be >= 0")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1]")

    @property
    def filtering(self) -> bool:
        return self.temperature > 0 and (self.top_k > 0 or self.top_p < 1.0)


def sample_tokens(logits: Float[Array, "B V"], key: jax.Array, sampling: SamplingConfig) -> Int[Array, "B"]:
    """Draws one token per row from ``logits`` under one ``sampling`` config shared by the batch."""
    batch = logits.shape[0]
    keys = jax.random.split(key, batch)
    full = lambda v: jnp.full((batch,), v)  # noqa: E731
    return sample_rows(
        logits, keys, full(sampling.temperature).astype(jnp.float32), full(sampling.top_k).astype(jnp.int32),
        full(sampling.top_p).astype(jnp.float32), filtering=sampling.filtering,
    )


def sample_rows(
    logits: Float[Array, "B V"],
    keys: jax.Array,
    temperature: Float[Array, "B"],
    top_k: Int[Array, "B"],
    top_p: Float[Array, "B"],
    filtering: bool,
) -> Int[Array, "B"]:
    """One token per row, each row with its own key, temperature, top-k and top-p.

    Rows with ``temperature == 0`` take the argmax. ``filtering=False`` compiles the top-k/top-p masks out
    (they need a sort over the vocabulary, which is the dominant cost of a decode step for small models).
    """
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    scaled = filter_logits(logits, temperature, top_k, top_p, filtering)
    sampled = jax.vmap(lambda key, row: jax.random.categorical(key, row))(keys, scaled).astype(jnp.int32)
    return jnp.where(temperature > 0, sampled, greedy)


def filter_logits(
    logits: Float[Array, "B V"],
    temperature: Float[Array, "B"],
    top_k: Int[Array, "B"],
    top_p: Float[Array, "B"],
    filtering: bool,
) -> Float[Array, "B V"]:
    """Logits divided by each row's temperature (rows at 0 are left unscaled), with the tokens outside the
    row's top-k / top-p set to ``NEG_INF``: ``softmax`` of the result is the distribution a sampled row
    draws from (speculative decoding compares exactly these distributions of target and draft)."""
    logits = logits.astype(jnp.float32)
    scaled = logits / jnp.where(temperature > 0, temperature, 1.0)[:, None]
    if filtering:
        vocab = logits.shape[-1]
        descending = -jnp.sort(-scaled, axis=-1)  # [B V]
        k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
        kth = jnp.take_along_axis(descending, (k - 1)[:, None], axis=-1)
        scaled = jnp.where(scaled < kth, NEG_INF, scaled)
        # top-p over the distribution left by top-k: keep the smallest prefix whose mass reaches top_p
        # (always at least the top token).
        descending = jnp.where(jnp.arange(vocab)[None, :] < k[:, None], descending, NEG_INF)
        cumulative = jnp.cumsum(jax.nn.softmax(descending, axis=-1), axis=-1)
        cutoff_index = jnp.minimum(jnp.sum(cumulative < top_p[:, None], axis=-1, keepdims=True), vocab - 1)
        cutoff = jnp.take_along_axis(descending, cutoff_index, axis=-1)
        # Only rows that ask for top-p are cut: at top_p = 1 the float sum can reach 1 before the tail, and
        # such a row must sample exactly as it would with filtering compiled out.
        scaled = jnp.where((top_p < 1.0)[:, None] & (scaled < cutoff), NEG_INF, scaled)
    return scaled


@struct.dataclass
class PrefixCache:
    """The keys and values of a shared prefix (a system prompt), prefilled once with batch 1.

    ``length`` is the prefix's true token count; the cache is padded to a bucket ``Q`` (padding slots have
    segment id 0 and are never attended).
    """

    k: Float[Array, "L 1 Q K H"]
    v: Float[Array, "L 1 Q K H"]
    segment_ids: Int[Array, "1 Q"]
    length: Int[Array, ""]

    @property
    def bucket(self) -> int:
        return self.k.shape[2]


@struct.dataclass
class GenerateOutput:
    """New tokens per row (``pad_id`` after the row finished), the log-probability of each under the model
    (float32, 0 after the row finished) and how many tokens each row produced (EOS or stop tokens included)."""

    tokens: Int[Array, "B M"]
    logprobs: Float[Array, "B M"]
    num_tokens: Int[Array, "B"]
    stopped: Bool[Array, "B"]  # True where a stop sequence (not EOS, not the token limit) ended the row


@dataclasses.dataclass(frozen=True)
class DecodeSpec:
    """The static part of a compiled generate function (hashable: part of the cache key)."""

    max_new_tokens: int
    eos_id: int
    pad_id: int = 0
    filtering: bool = False  # compile the top-k / top-p masks in
    sampling: bool = True  # False: every row is greedy, so no random numbers are drawn at all
    constrained: bool = False  # compile the grammar mask in (a token-automaton table and a state per row)


def make_prefill_prefix_fn(graphdef: nnx.GraphDef) -> Callable[..., PrefixCache]:
    """Builds a jitted ``prefill(params, tokens [1, Q], length) -> PrefixCache``."""

    def prefill(params: Any, tokens: Int[Array, "1 Q"], length: Int[Array, ""]) -> PrefixCache:
        model = nnx.merge(graphdef, params)
        bucket = tokens.shape[1]
        positions = jnp.arange(bucket, dtype=jnp.int32)[None, :]
        segments = (positions < length).astype(jnp.int32)
        _, cache = model(tokens, positions, segments, KVCache.init(model.config, 1, bucket))
        return PrefixCache(k=cache.k, v=cache.v, segment_ids=segments, length=jnp.asarray(length, jnp.int32))

    return jax.jit(prefill)


def _stop_matched(
    out: Int[Array, "B M"], i: Int[Array, ""], stop_tokens: Int[Array, "B N S"]
) -> Bool[Array, "B"]:
    """Whether the tokens generated up to and including step ``i`` end with one of the row's stop sequences.

    Stop sequences are left-padded with -1 (a wildcard); an all-wildcard row (no sequence) never matches.
    """
    window = stop_tokens.shape[-1]
    index = i - window + 1 + jnp.arange(window)  # [S]
    tail = jnp.take(out, jnp.clip(index, 0), axis=1)  # [B S]
    valid = (index >= 0)[None, None, :]
    match = (stop_tokens == -1) | (valid & (stop_tokens == tail[:, None, :]))  # [B N S]
    real = stop_tokens[:, :, -1] != -1  # [B N]
    return jnp.any(jnp.all(match, axis=-1) & real, axis=-1)


def make_generate_fn(
    graphdef: nnx.GraphDef, spec: DecodeSpec, trace_counter: list[int] | None = None
) -> Callable[..., GenerateOutput]:
    """Builds a jitted ``generate(params, prompts, lengths, max_tokens, temperature, top_k, top_p, keys,
    stop_tokens, prefix, grammar, grammar_start) -> GenerateOutput``.

    Prefill runs the whole (padded) prompt through the model once, on top of ``prefix`` (a
    :class:`PrefixCache` or None); decoding is a ``lax.while_loop`` that feeds one token per step and stops
    when every row has produced EOS, a stop sequence or its own ``max_tokens`` (at most
    ``spec.max_new_tokens``). ``keys`` holds one PRNG key per row: a row's samples depend only on its own
    key, so the same seed gives the same output whatever else is in the batch. ``trace_counter[0]`` is
    incremented every time the function is traced (i.e. compiled), for tests.

    With ``spec.constrained`` every row walks a token automaton: ``grammar`` is a stacked table
    (:func:`quark_jax.inference.constrained.stack`: row 0 free, -1 = token not allowed) and ``grammar_start``
    each row's start state. Before a token is chosen the logits of tokens the row's state does not allow are
    set to the float minimum (so sampling, top-k and top-p only ever see allowed tokens), and the state moves
    along the chosen token. Rows in the free state are untouched: they decode exactly as without a grammar.
    """
    M, eos, pad = spec.max_new_tokens, spec.eos_id, spec.pad_id

    def generate(
        params: Any,
        prompts: Int[Array, "B P"],
        lengths: Int[Array, "B"],
        max_tokens: Int[Array, "B"],
        temperature: Float[Array, "B"],
        top_k: Int[Array, "B"],
        top_p: Float[Array, "B"],
        keys: jax.Array,
        stop_tokens: Int[Array, "B N S"],
        prefix: PrefixCache | None = None,
        grammar: Int[Array, "S V"] | None = None,
        grammar_start: Int[Array, "B"] | None = None,
    ) -> GenerateOutput:
        if trace_counter is not None:
            trace_counter[0] += 1
        model = nnx.merge(graphdef, params)
        batch, prompt_len = prompts.shape
        prefix_bucket = 0 if prefix is None else prefix.bucket
        cache = KVCache.init(model.config, batch, prefix_bucket + prompt_len + M)
        offset = jnp.zeros((), jnp.int32)
        if prefix is not None:
            # Every row starts from the same prefilled prefix: broadcast it into the first Q slots.
            tile = lambda x: jnp.broadcast_to(x, (x.shape[0], batch, *x.shape[2:])).astype(cache.k.dtype)  # noqa: E731
            cache = cache.replace(
                k=jax.lax.dynamic_update_slice(cache.k, tile(prefix.k), (0, 0, 0, 0, 0)),
                v=jax.lax.dynamic_update_slice(cache.v, tile(prefix.v), (0, 0, 0, 0, 0)),
                positions=cache.positions.at[:, :prefix_bucket].set(jnp.arange(prefix_bucket, dtype=jnp.int32)),
                segment_ids=cache.segment_ids.at[:, :prefix_bucket].set(prefix.segment_ids),
                index=jnp.asarray(prefix_bucket, jnp.int32),
            )
            offset = prefix.length

        steps = jnp.arange(prompt_len, dtype=jnp.int32)[None, :]
        positions = jnp.broadcast_to(offset + steps, (batch, prompt_len))
        segments = (steps < lengths[:, None]).astype(jnp.int32)
        logits, cache = model(prompts, positions, segments, cache)
        last = jnp.take_along_axis(logits, (lengths - 1)[:, None, None], axis=1)[:, 0]  # [B V]

        def choose(logits, i, done, state):
            if spec.constrained:
                logits = jnp.where(grammar_lib.allowed_tokens(grammar, state, eos), logits, NEG_INF)
            if spec.sampling:
                step_keys = jax.vmap(lambda k: jax.random.fold_in(k, i))(keys)
                token = sample_rows(logits, step_keys, temperature, top_k, top_p, spec.filtering)
            else:
                token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
            logprob = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), token[:, None], axis=-1)[:, 0]
            if spec.constrained:
                state = jnp.where(done, state, grammar_lib.advance(grammar, state, token))
            return jnp.where(done, pad, token), jnp.where(done, 0.0, logprob), state

        def record(i, token, logprob, out, out_logprobs, done, stopped, count):
            out = out.at[:, i].set(token)
            out_logprobs = out_logprobs.at[:, i].set(logprob)
            count = count + (~done).astype(jnp.int32)
            hit_stop = ~done & _stop_matched(out, i, stop_tokens)
            stopped = stopped | hit_stop
            done = done | (token == eos) | hit_stop | (count >= max_tokens)
            return out, out_logprobs, done, stopped, count

        no = jnp.zeros((batch,), bool)
        state = grammar_start if spec.constrained else jnp.zeros((batch,), jnp.int32)
        token, logprob, state = choose(last, 0, no, state)
        out = jnp.full((batch, M), pad, jnp.int32)
        out_logprobs = jnp.zeros((batch, M), jnp.float32)
        out, out_logprobs, done, stopped, count = record(
            0, token, logprob, out, out_logprobs, no, no, jnp.zeros((batch,), jnp.int32)
        )

        def cond(carry):
            i, _, _, _, _, done, _, _, _ = carry
            return (i < M) & ~jnp.all(done)

        def body(carry):
            i, cache, token, out, out_logprobs, done, stopped, count, state = carry
            position = (offset + lengths + i - 1)[:, None]
            logits, cache = model(token[:, None], position, jnp.ones_like(position), cache)
            token, logprob, state = choose(logits[:, 0], i, done, state)
            out, out_logprobs, done, stopped, count = record(i, token, logprob, out, out_logprobs, done, stopped, count)
            return i + 1, cache, token, out, out_logprobs, done, stopped, count, state

        carry = (jnp.int32(1), cache, token, out, out_logprobs, done, stopped, count, state)
        _, _, _, out, out_logprobs, _, stopped, count, _ = jax.lax.while_loop(cond, body, carry)
        return GenerateOutput(tokens=out, logprobs=out_logprobs, num_tokens=count, stopped=stopped)

    return jax.jit(generate)


def make_score_fn(graphdef: nnx.GraphDef, greedy: bool = False) -> Callable[..., Any]:
    """Builds a jitted ``score(params, tokens [B, T], lengths [B]) -> logprobs [B, T]``.

    ``logprobs[b, t]`` is log p(tokens[b, t] | tokens[b, :t]) for ``1 <= t < lengths[b]`` and 0 elsewhere
    (token 0 has no context). One forward pass, no cache: this is what evaluation harnesses call to rank
    continuations.

    With ``greedy=True`` the function returns ``(logprobs, is_max)``: ``is_max[b, t]`` is True where
    tokens[b, t] has the largest log-probability of the vocabulary at its position (ties count as the
    maximum), False elsewhere (token 0 and padding included). A continuation is what greedy decoding would
    produce exactly when ``is_max`` holds for all its tokens (lm-evaluation-harness's ``is_greedy``).
    """

    def score(params: Any, tokens: Int[Array, "B T"], lengths: Int[Array, "B"]):
        model = nnx.merge(graphdef, params)
        steps = jnp.arange(tokens.shape[1], dtype=jnp.int32)[None, :]
        positions = jnp.broadcast_to(steps, tokens.shape)
        segments = (steps < lengths[:, None]).astype(jnp.int32)
        logits, _ = model(tokens, positions, segments)
        logprobs = jax.nn.log_softmax(logits[:, :-1], axis=-1)  # predicts tokens[:, 1:]
        chosen = jnp.take_along_axis(logprobs, tokens[:, 1:, None], axis=-1)[..., 0]
        valid = steps[:, 1:] < lengths[:, None]
        out = jnp.pad(jnp.where(valid, chosen, 0.0), ((0, 0), (1, 0)))
        if not greedy:
            return out
        is_max = valid & (chosen >= jnp.max(logprobs, axis=-1))
        return out, jnp.pad(is_max, ((0, 0), (1, 0)))

    return jax.jit(score)


@dataclasses.dataclass(frozen=True)
class BeamSpec:
    """Static beam-search settings: beams, new-token budget, length penalty (score = logp / length**alpha)."""

    num_beams: int
    max_new_tokens: int
    eos_id: int
    length_penalty: float = 1.0
    pad_id: int = 0

    def __post_init__(self):
        if self.num_beams < 1:
            raise ValueError(f"num_beams={self.num_beams} must be >= 1")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be >= 1")


def make_beam_search_fn(graphdef: nnx.GraphDef, spec: BeamSpec) -> Callable[..., tuple]:
    """Builds a jitted ``beam_search(params, prompts [B, P], lengths [B]) -> (tokens [B, M], score [B],
    num_tokens [B])``: the best hypothesis per row under the length-normalised score.

    Keeps W alive hypotheses (never ended) and W finished ones (ended with EOS) per row, as in t5x/GNMT:
    each step ranks the top 2W extensions of the alive beams by raw log-probability, moves those that end
    in EOS to the finished pool (scored ``logp / length**length_penalty``, the Hugging Face convention) and
    keeps the best W others alive. The loop ends after ``max_new_tokens`` steps or when no alive beam can
    still beat the worst finished one; alive beams then join the pool at their current length.
    """
    W, M, eos, pad, alpha = spec.num_beams, spec.max_new_tokens, spec.eos_id, spec.pad_id, spec.length_penalty

    def normalise(logp, length):
        return logp / jnp.power(jnp.asarray(length, jnp.float32), alpha)

    def beam_search(params: Any, prompts: Int[Array, "B P"], lengths: Int[Array, "B"]):
        model = nnx.merge(graphdef, params)
        batch, prompt_len = prompts.shape
        cache = KVCache.init(model.config, batch, prompt_len + M)
        steps = jnp.arange(prompt_len, dtype=jnp.int32)[None, :]
        positions = jnp.broadcast_to(steps, (batch, prompt_len))
        segments = (steps < lengths[:, None]).astype(jnp.int32)
        logits, cache = model(prompts, positions, segments, cache)
        last = jnp.take_along_axis(logits, (lengths - 1)[:, None, None], axis=1)[:, 0]  # [B V]
        vocab = last.shape[-1]

        # The cache grows a beam axis: row b's beams are rows b*W .. b*W+W-1.
        cache = cache.replace(
            k=jnp.repeat(cache.k, W, axis=1), v=jnp.repeat(cache.v, W, axis=1),
            positions=jnp.repeat(cache.positions, W, axis=0), segment_ids=jnp.repeat(cache.segment_ids, W, axis=0),
        )
        logits = jnp.repeat(last, W, axis=0)  # [B*W V]
        # Only beam 0 is live at the start, so the first step's top-W are W distinct tokens.
        alive_logp = jnp.where(jnp.arange(W)[None, :] == 0, 0.0, NEG_INF) * jnp.ones((batch, 1))  # [B W]
        alive_seq = jnp.full((batch, W, M), pad, jnp.int32)
        finished_seq = jnp.full((batch, W, M), pad, jnp.int32)
        finished_score = jnp.full((batch, W), NEG_INF)
        finished_len = jnp.zeros((batch, W), jnp.int32)
        row_lengths = jnp.repeat(lengths, W)  # [B*W]

        def cond(carry):
            i, _, _, alive_logp, _, _, finished_score, _ = carry
            # Log-probabilities only fall as tokens are added; for alpha >= 0 the best an alive beam can
            # still reach is its current logp over the longest length.
            best_possible = normalise(jnp.max(alive_logp, axis=1), M) if alpha >= 0 else jnp.full((batch,), -NEG_INF)
            hopeless = jnp.all(best_possible < jnp.min(finished_score, axis=1))
            return (i < M) & ~hopeless

        def body(carry):
            i, cache, logits, alive_logp, alive_seq, finished_seq, finished_score, finished_len = carry
            logprobs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1).reshape(batch, W, vocab)
            candidates = (alive_logp[:, :, None] + logprobs).reshape(batch, W * vocab)
            top_logp, top_index = jax.lax.top_k(candidates, min(2 * W, W * vocab))  # [B 2W]
            top_beam, top_token = top_index // vocab, top_index % vocab
            top_seq = jnp.take_along_axis(alive_seq, top_beam[:, :, None], axis=1).at[:, :, i].set(top_token)
            is_eos = top_token == eos

            # Finished pool: old finished ∪ the candidates that just ended, best W by normalised score.
            new_score = jnp.where(is_eos, normalise(top_logp, i + 1), NEG_INF)
            pool_score = jnp.concatenate([finished_score, new_score], axis=1)
            pool_seq = jnp.concatenate([finished_seq, top_seq], axis=1)
            pool_len = jnp.concatenate([finished_len, jnp.full_like(top_token, i + 1)], axis=1)
            finished_score, keep = jax.lax.top_k(pool_score, W)
            finished_seq = jnp.take_along_axis(pool_seq, keep[:, :, None], axis=1)
            finished_len = jnp.take_along_axis(pool_len, keep, axis=1)

            # Alive: the best W candidates that did not end.
            alive_logp, keep = jax.lax.top_k(jnp.where(is_eos, NEG_INF, top_logp), W)
            alive_seq = jnp.take_along_axis(top_seq, keep[:, :, None], axis=1)
            parent = jnp.take_along_axis(top_beam, keep, axis=1)  # [B W]
            token = jnp.take_along_axis(top_token, keep, axis=1).reshape(batch * W)
            rows = (jnp.arange(batch)[:, None] * W + parent).reshape(batch * W)
            cache = cache.replace(
                k=jnp.take(cache.k, rows, axis=1), v=jnp.take(cache.v, rows, axis=1),
                positions=jnp.take(cache.positions, rows, axis=0),
                segment_ids=jnp.take(cache.segment_ids, rows, axis=0),
            )
            position = (row_lengths + i)[:, None]
            logits, cache = model(token[:, None], position, jnp.ones_like(position), cache)
            return i + 1, cache, logits[:, 0], alive_logp, alive_seq, finished_seq, finished_score, finished_len

        carry = (jnp.int32(0), cache, logits, alive_logp, alive_seq, finished_seq, finished_score, finished_len)
        i, _, _, alive_logp, alive_seq, finished_seq, finished_score, finished_len = jax.lax.while_loop(
            cond, body, carry
        )
        # Alive beams that reached the end of the loop compete at their current length i.
        pool_score = jnp.concatenate([finished_score, normalise(alive_logp, jnp.maximum(i, 1))], axis=1)
        pool_seq = jnp.concatenate([finished_seq, alive_seq], axis=1)
        pool_len = jnp.concatenate([finished_len, jnp.full_like(finished_len, i)], axis=1)
        best = jnp.argmax(pool_score, axis=1)
        tokens = jnp.take_along_axis(pool_seq, best[:, None, None], axis=1)[:, 0]
        return (tokens, jnp.take_along_axis(pool_score, best[:, None], axis=1)[:, 0],
                jnp.take_along_axis(pool_len, best[:, None], axis=1)[:, 0])

    return jax.jit(beam_search)


def bucket_length(length: int, minimum: int = 16) -> int:
    """The power of two (at least ``minimum``) that a prompt of ``length`` tokens is padded to."""
    bucket = minimum
    while bucket < length:
        bucket *= 2
    return bucket
