"""Exact speculative decoding: a small draft proposes γ tokens, the target verifies them in one forward pass.

Axis legend: B batch · P prompt length (bucketed) · M max new tokens · G draft tokens per round (γ) ·
V vocab · N stop sequences per row · S stop sequence length.

One round, per row (Leviathan et al. 2023; Chen et al. 2023): the draft samples d_1..d_γ from its filtered
distributions q_1..q_γ (γ cheap one-token calls); the target scores [x, d_1..d_γ] in one call, giving
p_1..p_{γ+1}; d_j is accepted with probability min(1, p_j(d_j) / q_j(d_j)) until the first rejection,
where the row instead samples norm(max(0, p_j − q_j)); when all γ are accepted the row adds a bonus token
from p_{γ+1}. Every emitted token is then distributed exactly as the target would sample it. p and q are the
*filtered* distributions (temperature, top-k, top-p applied identically, :func:`decode.filter_logits`); a
greedy row (temperature 0) has one-hot p and q, so it accepts d_j iff d_j is the target's arg-max and emits
exactly the target's greedy continuation.

KV caches without rollback: each row keeps its own write index (a ``[B]`` ``KVCache.index``) and writes a
token at slot = position, so rows that accepted different numbers of tokens simply continue from their own
length. Slots holding rejected tokens are overwritten by the next round's writes; until then they sit at
positions beyond every query of the row, where the causal mask hides them. The draft's first call of a
round feeds two tokens [x_{n-1}, x_n], re-writing the last accepted token, so a row whose γ-th draft token
was accepted (and so never fed to the draft) needs no special case.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx, struct
from jaxtyping import Array, Bool, Float, Int

from quark_jax.inference.decode import _stop_matched, filter_logits
from quark_jax.models.transformer import KVCache


@dataclasses.dataclass(frozen=True)
class SpeculativeSpec:
    """The static part of a compiled speculative generate function (hashable: part of the cache key)."""

    max_new_tokens: int
    eos_id: int
    gamma: int = 4  # draft tokens proposed per target call
    pad_id: int = 0
    filtering: bool = False  # compile the top-k / top-p masks in
    sampling: bool = True  # False: every row is greedy (arg-max comparisons only, no random numbers)

    def __post_init__(self):
        if self.gamma < 1:
            raise ValueError(f"gamma={self.gamma}: must be a whole number >= 1 (draft tokens per target call)")


@dataclasses.dataclass(frozen=True)
class Draft:
    """A draft model for speculative decoding: its graph, parameters and γ (tokens drafted per round)."""

    graphdef: nnx.GraphDef
    params: Any
    gamma: int = 4


@struct.dataclass
class SpeculativeOutput:
    """What :class:`decode.GenerateOutput` holds, plus per-row counts of the speculation itself:
    ``target_calls`` (target forward passes while the row was generating, the prefill included),
    ``accepted`` (draft tokens accepted) and ``examined`` (draft tokens judged: accepted ones plus the
    first rejected one of each round)."""

    tokens: Int[Array, "B M"]
    logprobs: Float[Array, "B M"]
    num_tokens: Int[Array, "B"]
    stopped: Bool[Array, "B"]
    target_calls: Int[Array, "B"]
    accepted: Int[Array, "B"]
    examined: Int[Array, "B"]


def filtered_probs(
    logits: Float[Array, "B V"], temperature: Float[Array, "B"], top_k: Int[Array, "B"], top_p: Float[Array, "B"],
    filtering: bool,
) -> Float[Array, "B V"]:
    """The distribution each row samples from: softmax of the filtered logits, one-hot at the arg-max for a
    greedy row (temperature 0)."""
    scaled = filter_logits(logits, temperature, top_k, top_p, filtering)
    one_hot = jax.nn.one_hot(jnp.argmax(logits, axis=-1), logits.shape[-1], dtype=jnp.float32)
    return jnp.where((temperature > 0)[:, None], jax.nn.softmax(scaled, axis=-1), one_hot)


def accept_drafts(
    p: Float[Array, "B G+1 V"], q: Float[Array, "B G V"], drafts: Int[Array, "B G"], uniform: Float[Array, "B G"],
    residual_keys: jax.Array,
) -> tuple[Int[Array, "B"], Int[Array, "B G+1"]]:
    """The speculative acceptance rule: returns per row the number ``a`` of leading drafts accepted and the
    round's tokens (columns ``0..a`` are emitted: the ``a`` accepted drafts, then a token from the residual
    norm(max(0, p_{a+1} − q_{a+1})) or, when all γ were accepted, the bonus token from p_{γ+1})."""
    batch, gamma = drafts.shape
    p_draft = jnp.take_along_axis(p[:, :gamma], drafts[..., None], axis=-1)[..., 0]
    q_draft = jnp.take_along_axis(q, drafts[..., None], axis=-1)[..., 0]
    ok = uniform * q_draft < p_draft  # u < p/q without dividing (q of a drawn token is > 0)
    accepted = jnp.sum(jnp.cumprod(ok.astype(jnp.int32), axis=1), axis=1)  # [B]
    q_padded = jnp.concatenate([q, jnp.zeros_like(q[:, :1])], axis=1)  # the bonus position has q = 0
    rows = jnp.arange(batch)
    residual = jnp.maximum(p[rows, accepted] - q_padded[rows, accepted], 0.0)  # [B V]
    mass = jnp.sum(residual, axis=-1, keepdims=True)
    residual = jnp.where(mass > 0, residual / jnp.where(mass > 0, mass, 1.0), p[rows, accepted])
    final = jax.vmap(jax.random.categorical)(residual_keys, jnp.log(residual)).astype(jnp.int32)
    tokens = jnp.concatenate([drafts, jnp.zeros_like(drafts[:, :1])], axis=1)
    tokens = jnp.where(jnp.arange(gamma + 1)[None, :] == accepted[:, None], final[:, None], tokens)
    return accepted, tokens


def make_speculative_fn(
    target_graphdef: nnx.GraphDef, draft_graphdef: nnx.GraphDef, spec: SpeculativeSpec,
    trace_counter: list[int] | None = None,
) -> Callable[..., SpeculativeOutput]:
    """Builds a jitted ``generate(target_params, draft_params, prompts, lengths, max_tokens, temperature,
    top_k, top_p, keys, stop_tokens) -> SpeculativeOutput``, with the arguments and stop conditions of
    :func:`decode.make_generate_fn` (no prefix cache). The first token comes from the target's prefill;
    each later round of the ``lax.while_loop`` emits 1..γ+1 tokens per row (rows advance independently)."""
    M, G, eos, pad = spec.max_new_tokens, spec.gamma, spec.eos_id, spec.pad_id

    def generate(
        target_params: Any, draft_params: Any, prompts: Int[Array, "B P"], lengths: Int[Array, "B"],
        max_tokens: Int[Array, "B"], temperature: Float[Array, "B"], top_k: Int[Array, "B"], top_p: Float[Array, "B"],
        keys: jax.Array, stop_tokens: Int[Array, "B N S"],
    ) -> SpeculativeOutput:
        if trace_counter is not None:
            trace_counter[0] += 1
        target = nnx.merge(target_graphdef, target_params)
        draft = nnx.merge(draft_graphdef, draft_params)
        batch, prompt_len = prompts.shape
        rows = jnp.arange(batch)
        slots = prompt_len + M + G  # a live row's pending token sits at < P + M - 1 and a round writes G more
        steps = jnp.arange(prompt_len, dtype=jnp.int32)[None, :]
        positions = jnp.broadcast_to(steps, (batch, prompt_len))
        segments = (steps < lengths[:, None]).astype(jnp.int32)
        logits, target_cache = target(prompts, positions, segments, KVCache.init(target.config, batch, slots))
        _, draft_cache = draft(prompts, positions, segments, KVCache.init(draft.config, batch, slots))
        last = jnp.take_along_axis(logits, (lengths - 1)[:, None, None], axis=1)[:, 0]  # [B V]

        def probs(logits_bv):
            return filtered_probs(logits_bv, temperature, top_k, top_p, spec.filtering)

        def pick(row_probs, row_keys):
            """A token per row from its (filtered) distribution; arg-max for greedy rows."""
            greedy = jnp.argmax(row_probs, axis=-1).astype(jnp.int32)
            if not spec.sampling:
                return greedy
            sampled = jax.vmap(jax.random.categorical)(row_keys, jnp.log(row_probs)).astype(jnp.int32)
            return jnp.where(temperature > 0, sampled, greedy)

        def record(tokens, logprobs, offered, out, out_logprobs, done, stopped, count):
            """Appends each live row's first ``offered`` tokens of ``tokens`` [B J], cut after the first one that
            ends the row (EOS, a completed stop sequence, or the row's max_tokens), in one vectorised step."""
            steps = jnp.arange(tokens.shape[1], dtype=jnp.int32)[None, :]
            columns = count[:, None] + steps  # [B J]; the buffer is G + 1 wider than M, so always in range
            take = ~done[:, None] & (steps < offered[:, None])
            out = out.at[rows[:, None], columns].set(jnp.where(take, tokens, pad))
            stop_at = jax.vmap(lambda i: jax.vmap(
                lambda o, i, s: _stop_matched(o[None], i, s[None])[0])(out, i, stop_tokens), out_axes=1)(
                count[None, :] + steps.T)  # [B J]: a stop sequence ends at this token
            ends = take & ((tokens == eos) | stop_at | (columns + 1 >= max_tokens[:, None]))
            ended = jnp.any(ends, axis=1)
            first_end = jnp.argmax(ends, axis=1)
            written = jnp.where(ended, first_end + 1, jnp.sum(take, axis=1))  # 0 for finished rows
            kept = steps < written[:, None]
            out = out.at[rows[:, None], columns].set(jnp.where(kept, tokens, pad))
            out_logprobs = out_logprobs.at[rows[:, None], columns].set(jnp.where(kept, logprobs, 0.0))
            stopped = stopped | (ended & stop_at[rows, first_end])
            return out, out_logprobs, done | ended, stopped, count + written

        round_keys = lambda i, j: jax.vmap(lambda k: jax.random.fold_in(jax.random.fold_in(k, i), j))(keys)  # noqa: E731
        no = jnp.zeros((batch,), bool)
        # Greedy rows take the arg-max of the raw logits, as plain decoding does (probs() is one-hot there).
        first = pick(probs(last) if spec.sampling else last, round_keys(0, 0))
        first_logprob = jnp.take_along_axis(jax.nn.log_softmax(last, axis=-1), first[:, None], axis=-1)[:, 0]
        out = jnp.full((batch, M + G + 1), pad, jnp.int32)
        out_logprobs = jnp.zeros((batch, M + G + 1), jnp.float32)
        out, out_logprobs, done, stopped, count = record(
            first[:, None], first_logprob[:, None], jnp.ones_like(first), out, out_logprobs, no, no,
            jnp.zeros((batch,), jnp.int32))
        previous = prompts[rows, lengths - 1]
        zeros = jnp.zeros((batch,), jnp.int32)

        def draft_round(draft_cache, previous, token, n, i):
            """γ draft tokens per row and the draft's distributions (or logits, when greedy) for them."""
            draft_cache = draft_cache.replace(index=n - 1)
            chunk = jnp.stack([previous, token], axis=1)
            logits, draft_cache = draft(chunk, jnp.stack([n - 1, n], axis=1), jnp.ones_like(chunk), draft_cache)

            def step(carry, j):
                draft_cache, logits, position = carry
                dist = probs(logits) if spec.sampling else logits
                drafted = pick(dist, round_keys(i, j))
                logits, draft_cache = draft(drafted[:, None], position[:, None], jnp.ones_like(position)[:, None],
                                            draft_cache)
                return (draft_cache, logits[:, 0], position + 1), (drafted, dist)

            carry = (draft_cache, logits[:, -1], n + 1)
            (draft_cache, logits, _), (drafted, dists) = jax.lax.scan(step, carry, jnp.arange(G - 1))
            dist = probs(logits) if spec.sampling else logits
            last_drafted = pick(dist, round_keys(i, G - 1))
            drafted = jnp.concatenate([drafted.T, last_drafted[:, None]], axis=1)  # [B G]
            dists = jnp.concatenate([jnp.moveaxis(dists, 0, 1), dist[:, None]], axis=1)  # [B G V]
            return draft_cache, drafted, dists

        def cond(carry):
            return ~jnp.all(carry[8])

        def body(carry):
            (i, target_cache, draft_cache, previous, token, n, out, out_logprobs, done, stopped, count,
             calls, accepted_total, examined) = carry
            draft_cache, drafted, dists = draft_round(draft_cache, previous, token, n, i)
            chunk = jnp.concatenate([token[:, None], drafted], axis=1)  # [B G+1]
            chunk_positions = n[:, None] + jnp.arange(G + 1, dtype=jnp.int32)[None, :]
            logits, target_cache = target(chunk, chunk_positions, jnp.ones_like(chunk),
                                          target_cache.replace(index=n))
            if spec.sampling:
                p = jax.vmap(probs, in_axes=1, out_axes=1)(logits)  # [B G+1 V]
                uniform = jax.vmap(lambda k: jax.random.uniform(k, (G,)))(round_keys(i, G))
                accepted, emitted = accept_drafts(p, dists, drafted, uniform, round_keys(i, G + 1))
            else:
                best = jnp.argmax(logits, axis=-1).astype(jnp.int32)  # [B G+1]
                accepted = jnp.sum(jnp.cumprod((drafted == best[:, :G]).astype(jnp.int32), axis=1), axis=1)
                emitted = best  # the accepted drafts equal the target's arg-max, and so does the next token
            logprobs = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), emitted[..., None], axis=-1)[..., 0]

            live = ~done
            out, out_logprobs, done, stopped, count = record(
                emitted, logprobs, accepted + 1, out, out_logprobs, done, stopped, count)
            calls = calls + live.astype(jnp.int32)
            accepted_total = accepted_total + jnp.where(live, accepted, 0)
            examined = examined + jnp.where(live, jnp.minimum(accepted + 1, G), 0)
            # The next round starts from the last emitted token; rows that had finished stay where they were.
            next_token = emitted[rows, accepted]
            next_previous = jnp.where(accepted > 0, emitted[rows, jnp.maximum(accepted - 1, 0)], token)
            token = jnp.where(live, next_token, token)
            previous = jnp.where(live, next_previous, previous)
            n = jnp.where(live, n + accepted + 1, n)
            return (i + 1, target_cache, draft_cache, previous, token, n, out, out_logprobs, done, stopped, count,
                    calls, accepted_total, examined)

        # From here on each row writes at its own length (a [B] index), overwriting the prompt's padding slots.
        target_cache, draft_cache = target_cache.replace(index=lengths), draft_cache.replace(index=lengths)
        carry = (jnp.int32(1), target_cache, draft_cache, previous, first, lengths, out, out_logprobs, done, stopped,
                 count, zeros, zeros, zeros)
        carry = jax.lax.while_loop(cond, body, carry)
        _, _, _, _, _, _, out, out_logprobs, _, stopped, count, calls, accepted_total, examined = carry
        return SpeculativeOutput(tokens=out[:, :M], logprobs=out_logprobs[:, :M], num_tokens=count, stopped=stopped,
                                 target_calls=calls + 1, accepted=accepted_total, examined=examined)

    return jax.jit(generate)


def acceptance_rate(accepted: int, examined: int) -> float:
    """The estimated per-token acceptance probability α: accepted drafts over drafts judged."""
    return accepted / examined if examined else 0.0


def expected_tokens_per_call(alpha: float, gamma: int) -> float:
    """(1 − α^(γ+1)) / (1 − α): the tokens a target call yields when each draft is accepted independently
    with probability α (Leviathan et al. 2023, eq. 1)."""
    return float(gamma + 1) if alpha >= 1 else (1 - alpha ** (gamma + 1)) / (1 - alpha)


__all__ = ["Draft", "SpeculativeSpec", "SpeculativeOutput", "make_speculative_fn", "accept_drafts", "filtered_probs",
           "acceptance_rate", "expected_tokens_per_call"]
