"""The serving engine's compiled speculative functions: the draft's prefill and a speculative decode round.

Axis legend: B decode slots · P prompt bucket · G draft tokens per round (γ) · R rounds per call · V vocab ·
K top log-probabilities.

A round, per slot (the exact rule of :mod:`quark_jax.inference.speculative`): the draft proposes d_1..d_γ from
its filtered distributions q_j; the target scores [x, d_1..d_γ] in one call (p_1..p_{γ+1}); ``accept_drafts``
keeps the leading drafts that pass min(1, p/q) and adds one token from the residual (or the bonus token), so
each slot emits 1..γ+1 tokens distributed exactly as plain sampling would draw them. Every slot keeps its own
temperature, top-k, top-p and PRNG key: the keys of a round are ``fold_in(fold_in(key(seed), steps), j)``,
with ``steps`` the slot's tokens so far, so a row's tokens depend only on its own request.

Grammar-constrained slots stay exact: q_j and p_j are both masked to the tokens the slot's grammar state allows
after d_1..d_{j-1} (the state is advanced along the drafted tokens), so the constrained target distribution is
what ``accept_drafts`` samples, and no forbidden token is ever emitted.

Caches: the target's rows write the pending token and the drafts at the slot's own cache index (no rollback:
slots of rejected drafts lie at later positions, hidden by the causal mask, and are overwritten next round).
The draft's cache row holds the token at position t in slot t (the draft is prefilled over prefix + prompt
from slot 0). Each of a round's γ draft calls feeds a pair of tokens, [previous, token] first, then
[d_{j-1}, d_j]: re-writing the slot before the new token (same token, same position) costs nothing on a
latency-bound accelerator, keeps one model body in the compiled loop, and covers a round whose last draft was
accepted without ever being fed to the draft.
Both caches are γ slots longer than the engine's ``max_seq_len``: a live slot's pending token sits at index
≤ max_seq_len − 2, so a round never writes past the end, and a finished slot (still computed: fixed shapes) is
held at index max_seq_len − 1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, Int

from quark_jax.inference import constrained as grammar_lib
from quark_jax.inference.decode import NEG_INF
from quark_jax.inference.speculative import accept_drafts, filtered_probs


def make_draft_prefill_fn(draft_graphdef: nnx.GraphDef, trace_counter: list[int]) -> Callable:
    """``draft_prefill(draft_params, slots, slot, tokens [1, P], length)`` -> slots whose ``draft_cache`` row
    ``slot`` holds the draft's keys and values of ``tokens[:length]`` (the whole prompt, prefix included) at
    slots and positions 0..length-1; whatever the row held before is masked out."""

    def draft_prefill(draft_params: Any, slots: Any, slot: Int[Array, ""], tokens: Int[Array, "1 P"],
                      length: Int[Array, ""]):
        trace_counter[0] += 1
        model = nnx.merge(draft_graphdef, draft_params)
        cache = slots.draft_cache
        row_cache = cache.row(slot, index=jnp.int32(0))
        row_cache = row_cache.replace(segment_ids=jnp.zeros_like(row_cache.segment_ids))
        steps = jnp.arange(tokens.shape[1], dtype=jnp.int32)[None, :]
        _, row_cache = model(tokens, steps, (steps < length).astype(jnp.int32), row_cache)
        return slots.replace(draft_cache=cache.with_row(slot, row_cache))

    return jax.jit(draft_prefill, donate_argnums=(1,))


def make_speculative_decode_fn(target_graphdef: nnx.GraphDef, draft_graphdef: nnx.GraphDef, gamma: int,
                               filtering: bool, rounds: int, top_logprobs: int, max_seq_len: int, eos_id: int,
                               trace_counter: list[int]) -> Callable:
    """``decode(params, draft_params, slots, grammar [S, V], run)`` -> (slots, (tokens [B, R, G+1], counts [B, R],
    logprobs [B, R, G+1], top-K ids [B, R, G+1, K], top-K logprobs [B, R, G+1, K])): ``run`` (at most ``rounds``,
    R; an argument, so one compiled function serves every count) speculative rounds for every slot in one call.
    Round ``r < run`` of slot ``b`` emits ``tokens[b, r, :counts[b, r]]`` (1..γ+1 tokens); later rounds have
    count 0. The log-probabilities are the target's, under the slot's grammar mask (as plain decoding reports
    them). ``filtering`` compiles top-k/top-p in. ``slots`` is the engine's ``Slots`` with a ``draft_cache``."""
    G, K = gamma, top_logprobs
    last_index = max_seq_len - 1  # where a finished slot is held (a live one never gets past max_seq_len - 2)

    def one_round(target, draft, slots, grammar):
        B = slots.tokens.shape[0]
        rows = jnp.arange(B)
        token, previous, position, index = slots.tokens, slots.previous, slots.positions, slots.cache.index
        base_keys = jax.vmap(jax.random.fold_in)(slots.keys, slots.steps)

        def keys_at(j: int) -> jax.Array:
            return jax.vmap(lambda k: jax.random.fold_in(k, j))(base_keys)

        def constrained(logits: Float[Array, "B V"], state: Int[Array, "B"]):
            """The logits masked to the tokens ``state`` allows, and the distribution a row samples from."""
            masked = jnp.where(grammar_lib.allowed_tokens(grammar, state, eos_id), logits, NEG_INF)
            return masked, filtered_probs(masked, slots.temperature, slots.top_k, slots.top_p, filtering)

        def pick(dist: Float[Array, "B V"], keys: jax.Array) -> Int[Array, "B"]:
            sampled = jax.vmap(jax.random.categorical)(keys, jnp.log(dist)).astype(jnp.int32)
            return jnp.where(slots.temperature > 0, sampled, jnp.argmax(dist, axis=-1).astype(jnp.int32))

        # The draft: γ calls of a token pair, [previous, token] then [d_{j-1}, d_j], at positions [t-1, t] (the
        # first of each pair re-writes a slot with the same token at the same position): one compiled model body
        # in the scan, and a round whose γ drafts were all accepted (d_γ never fed) needs no special case.
        def draft_step(carry, j):
            draft_cache, pair, at, state = carry
            logits, draft_cache = draft(pair, jnp.stack([at - 1, at], axis=1), jnp.ones_like(pair),
                                        draft_cache.replace(index=at - 1))
            _, q = constrained(logits[:, -1], state)
            drafted = pick(q, keys_at(j))
            carry = (draft_cache, jnp.stack([pair[:, 1], drafted], axis=1), at + 1,
                     grammar_lib.advance(grammar, state, drafted))
            return carry, (drafted, q, state)

        carry = (slots.draft_cache, jnp.stack([previous, token], axis=1), position, slots.grammar)
        (draft_cache, _, _, state), (drafted, q, states) = jax.lax.scan(draft_step, carry, jnp.arange(G))
        drafts, q = drafted.T, jnp.moveaxis(q, 0, 1)  # [B G], [B G V]
        # The grammar state before each of the target's γ+1 predictions: s_0 .. s_γ along the drafts.
        path = jnp.concatenate([states.T, state[:, None]], axis=1)  # [B G+1]

        # The target: [token, d_1..d_γ] in one call, at the slot's own cache index.
        chunk = jnp.concatenate([token[:, None], drafts], axis=1)  # [B G+1]
        chunk_positions = position[:, None] + jnp.arange(G + 1, dtype=jnp.int32)[None, :]
        logits, cache = target(chunk, chunk_positions, jnp.ones_like(chunk), slots.cache)
        masked, p = jax.vmap(constrained, in_axes=1, out_axes=1)(logits, path)  # [B G+1 V] each
        uniform = jax.vmap(lambda k: jax.random.uniform(k, (G,)))(keys_at(G))
        accepted, emitted = accept_drafts(p, q, drafts, uniform, keys_at(G + 1))
        logprobs = jax.nn.log_softmax(masked, axis=-1)  # [B G+1 V]
        chosen = jnp.take_along_axis(logprobs, emitted[..., None], axis=-1)[..., 0]
        top_values, top_ids = jax.lax.top_k(logprobs, K)

        count = accepted + 1
        next_token = emitted[rows, accepted]
        next_previous = jnp.where(accepted > 0, emitted[rows, jnp.maximum(accepted - 1, 0)], token)
        cache = cache.replace(index=jnp.minimum(index + count, last_index))
        slots = slots.replace(
            cache=cache, draft_cache=draft_cache, tokens=next_token, previous=next_previous,
            positions=jnp.minimum(position + count, last_index), steps=slots.steps + count,
            grammar=grammar_lib.advance(grammar, path[rows, accepted], next_token))
        return slots, (emitted, count, chosen, top_ids.astype(jnp.int32), top_values)

    def decode(params: Any, draft_params: Any, slots: Any, grammar: Int[Array, "S V"], run: Int[Array, ""]):
        trace_counter[0] += 1
        target = nnx.merge(target_graphdef, params)
        draft = nnx.merge(draft_graphdef, draft_params)
        B = slots.tokens.shape[0]
        outputs = (jnp.zeros((B, rounds, G + 1), jnp.int32), jnp.zeros((B, rounds), jnp.int32),
                   jnp.zeros((B, rounds, G + 1), jnp.float32), jnp.zeros((B, rounds, G + 1, K), jnp.int32),
                   jnp.zeros((B, rounds, G + 1, K), jnp.float32))

        def body(r, carry):
            slots, outputs = carry
            slots, produced = one_round(target, draft, slots, grammar)
            return slots, tuple(o.at[:, r].set(x) for o, x in zip(outputs, produced))

        return jax.lax.fori_loop(0, jnp.minimum(run, rounds), body, (slots, outputs))

    return jax.jit(decode, donate_argnums=(2,))


__all__ = ["make_draft_prefill_fn", "make_speculative_decode_fn"]
