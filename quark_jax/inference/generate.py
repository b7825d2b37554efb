"""Text in, text out: tokenizes requests, pads them into shape buckets and calls cached compiled functions.

A :class:`Generator` compiles one function per (batch bucket, prompt-length bucket, max-new-tokens bucket,
prefix bucket, and three switches: any sampled row, any top-k/top-p row, any grammar-constrained row; with a
grammar also the power-of-two row bucket of the batch's grammar table); everything else a request may vary
(temperature, top-k, top-p, seed, max tokens, stop sequences, the grammar itself) is passed as arrays, so after
warm-up, calls inside a bucket never recompile.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import operator
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

from quark_jax import sharding as sh
from quark_jax.inference import constrained as grammar_lib
from quark_jax.inference.decode import (
    BeamSpec,
    DecodeSpec,
    PrefixCache,
    SamplingConfig,
    bucket_length,
    make_beam_search_fn,
    make_generate_fn,
    make_prefill_prefix_fn,
    make_score_fn,
)
from quark_jax.inference.speculative import Draft, SpeculativeSpec, make_speculative_fn

log = logging.getLogger(__name__)

CACHE_ENV = "QUARK_JAX_COMPILATION_CACHE"


def enable_compilation_cache(path: str | None = None) -> str:
    """Turns on JAX's persistent compilation cache so a restarted process does not recompile.

    The directory is ``path``, else ``$QUARK_JAX_COMPILATION_CACHE``, else an already configured
    ``jax_compilation_cache_dir`` (e.g. from ``$JAX_COMPILATION_CACHE_DIR``), else
    ``~/.cache/quark_jax/jax``. Returns the directory in use. JAX decides once per process whether the
    cache is on, at its first compilation, so call this (or build the :class:`Generator`) before compiling.
    """
    path = path or os.environ.get(CACHE_ENV) or jax.config.jax_compilation_cache_dir
    path = path or os.path.join(os.path.expanduser("~"), ".cache", "quark_jax", "jax")
    os.makedirs(path, exist_ok=True)
    if jax.config.jax_compilation_cache_dir != path:
        jax.config.update("jax_compilation_cache_dir", path)
    return path


def _whole(value: Any) -> int | None:
    """``value`` as an int if it is a whole number (Python or NumPy integer, not a bool), else None."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _real(value: Any) -> float | None:
    """``value`` as a float if it is a real number (not NaN), else None."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def check_generation_args(
    max_new_tokens: int | Sequence[int] = 1, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
    num_beams: int = 1,
) -> None:
    """Raises ``ValueError`` naming the first bad argument, as ``name=value: what it must be``.

    Checked before anything is tokenized or compiled (the ``quark generate`` command runs the same check
    before it loads the model, and prints the message as ``--name=value: ...``)."""
    limits = [max_new_tokens] if _whole(max_new_tokens) is not None else max_new_tokens
    if isinstance(limits, (str, bytes)) or not isinstance(limits, Sequence):
        limits = [max_new_tokens]
    for limit in limits:
        if _whole(limit) is None or limit < 1:
            raise ValueError(f"max_new_tokens={limit!r}: must be a whole number >= 1")
    t = _real(temperature)
    if t is None or t < 0:
        raise ValueError(f"temperature={temperature!r}: must be >= 0 (0 = greedy)")
    if _whole(top_k) is None or top_k < 0:
        raise ValueError(f"top_k={top_k!r}: must be a whole number >= 0 (0 = off)")
    p = _real(top_p)
    if p is None or not 0.0 < p <= 1.0:
        raise ValueError(f"top_p={top_p!r}: must be in (0, 1] (1 = off)")
    if _whole(num_beams) is None or num_beams < 1:
        raise ValueError(f"num_beams={num_beams!r}: must be a whole number >= 1 (1 = no beam search)")
    if num_beams > 1 and t > 0:
        raise ValueError(f"num_beams={num_beams} with temperature={temperature}: beam search does not sample; "
                         "use temperature 0 or num_beams 1")


def check_prompts(prompts: Sequence[str]) -> None:
    """Raises ``ValueError`` unless ``prompts`` is a non-empty list of non-empty strings."""
    if len(prompts) == 0:
        raise ValueError("prompts=[]: give at least one prompt")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise ValueError(f"prompts[{i}]={p!r}: must be a string")
        if not p:
            raise ValueError(f"prompts[{i}]='': must not be empty (there is nothing to continue)")


@dataclasses.dataclass(frozen=True)
class Request:
    """One generation request in token ids."""

    prompt: Sequence[int]
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    stop: Sequence[Sequence[int]] = ()
    constraint: grammar_lib.TokenAutomaton | None = None  # a grammar the new tokens must follow

    def __post_init__(self):
        if len(self.prompt) == 0:
            raise ValueError("every prompt must have at least one token")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be >= 1")
        SamplingConfig(self.temperature, self.top_k, self.top_p)  # validates
        if any(len(s) == 0 for s in self.stop):
            raise ValueError("stop sequences must not be empty")


@dataclasses.dataclass
class Completion:
    """The result of one request: new token ids (EOS excluded), their log-probabilities, why it ended
    (``"eos"``, ``"stop"`` or ``"length"``) and, from the text API, the decoded text."""

    tokens: list[int]
    logprobs: list[float]
    finish_reason: str
    text: str | None = None
    # With a draft model: {"target_calls", "accepted", "examined"} (see speculative.SpeculativeOutput).
    speculation: dict | None = None


def _pow2(n: int, minimum: int = 1) -> int:
    return bucket_length(n, minimum)


class Generator:
    """Owns the compiled generate, score and beam-search functions of one model, keyed by shape bucket.

    ``params`` may be float32 or quantized (:mod:`quark_jax.inference.quantize`). With a ``mesh`` the
    parameters are expected to be placed on it (``sharding.state_shardings``) and every call runs under
    :func:`quark_jax.sharding.activate`, so decoding uses the training mesh rules.
    """

    def __init__(
        self, graphdef: nnx.GraphDef, params: Any, vocabulary: Any = None, *, eos_id: int | None = None,
        pad_id: int = 0, mesh: jax.sharding.Mesh | None = None, compilation_cache: bool = True,
        min_batch_bucket: int = 1, min_prompt_bucket: int = 16, max_context: int | None = None,
        beyond_context: str = "error",
    ):
        if beyond_context not in ("error", "warn"):
            raise ValueError(f"beyond_context={beyond_context!r} must be 'error' or 'warn'")
        self.graphdef = graphdef
        # The trained context (tokens per training sequence): a request longer than it is refused (or warned
        # about), rather than silently compiling a huge bucket for a model that never saw such positions.
        self.max_context, self.beyond_context = max_context, beyond_context
        self.params = params
        self.vocabulary = vocabulary
        if eos_id is None:
            if vocabulary is None:
                raise ValueError("Generator needs a vocabulary or an explicit eos_id")
            eos_id = vocabulary.eos_id
        self.eos_id, self.pad_id = int(eos_id), int(pad_id)
        self.mesh = mesh
        self.min_batch_bucket, self.min_prompt_bucket = min_batch_bucket, min_prompt_bucket
        self._compiled: dict[tuple, Any] = {}
        self.trace_count = [0]  # incremented whenever a generate function is traced (= compiled)
        self._model_vocab_size: int | None = None
        if compilation_cache:
            enable_compilation_cache()

    def check_context(self, length: int, what: str) -> None:
        """Refuses (or warns about) a request of ``length`` tokens beyond the trained context."""
        if self.max_context is None or length <= self.max_context:
            return
        message = (f"{what} is {length} tokens, beyond the {self.max_context}-token context the model was trained "
                   "on; shorten the prompt or max_new_tokens (beyond_context='warn' allows it)")
        if self.beyond_context == "error":
            raise ValueError(message)
        log.warning(message)

    # ---- compiled functions ----------------------------------------------------------------------
    def _function(self, key: tuple, build):
        if key not in self._compiled:
            log.info("compiling %s", key)
            self._compiled[key] = build()
        return self._compiled[key]

    def num_compiled(self) -> int:
        """How many compiled executables this generator holds (every bucket, every function)."""
        return sum(fn._cache_size() for fn in self._compiled.values())

    def _call(self, fn, *args):
        if self.mesh is None:
            return fn(*args)
        with sh.activate(self.mesh):
            return fn(*args)

    # ---- prefix caching --------------------------------------------------------------------------
    def prefill_prefix(self, prefix: Sequence[int] | str) -> PrefixCache:
        """Runs a shared prefix (e.g. a system prompt) through the model once; pass the result as
        ``prefix=`` to later calls instead of repeating the prefix in every prompt."""
        if isinstance(prefix, str):
            prefix = self._encode(prefix, start=True)
        if len(prefix) == 0:
            raise ValueError("the prefix must have at least one token")
        bucket = _pow2(len(prefix), self.min_prompt_bucket)
        tokens = np.full((1, bucket), self.pad_id, np.int32)
        tokens[0, : len(prefix)] = prefix
        fn = self._function(("prefix", bucket), lambda: make_prefill_prefix_fn(self.graphdef))
        return self._call(fn, self.params, tokens, np.int32(len(prefix)))

    # ---- generation ------------------------------------------------------------------------------
    def generate_requests(
        self, requests: Sequence[Request], prefix: PrefixCache | None = None, draft: Draft | None = None
    ) -> list[Completion]:
        """Runs a batch of token-level requests through one compiled generate function; with a ``draft``,
        through exact speculative decoding (:mod:`quark_jax.inference.speculative`; no prefix)."""
        if not requests:
            raise ValueError("no requests")
        if draft is not None and prefix is not None:
            raise ValueError("prefix= with draft=: speculative decoding takes no prefix cache; put the prefix in "
                             "the prompts or drop the draft")
        if draft is not None and any(r.constraint is not None for r in requests):
            raise ValueError("constraint= with draft=: speculative decoding does not take a grammar yet; drop one")
        batch = len(requests)
        prefix_length = 0 if prefix is None else int(prefix.length)
        self.check_context(prefix_length + max(len(r.prompt) + r.max_new_tokens for r in requests),
                           "prompt + max_new_tokens" if prefix is None else "prefix + prompt + max_new_tokens")
        batch_bucket = _pow2(batch, self.min_batch_bucket)
        prompt_bucket = _pow2(max(len(r.prompt) for r in requests), self.min_prompt_bucket)
        new_bucket = _pow2(max(r.max_new_tokens for r in requests))
        filtering = any(SamplingConfig(r.temperature, r.top_k, r.top_p).filtering for r in requests)
        sampling = any(r.temperature > 0 for r in requests)
        constrained = any(r.constraint is not None for r in requests)
        stops = [list(s) for r in requests for s in r.stop]
        num_stops = _pow2(max([len(r.stop) for r in requests] + [1]))
        stop_len = _pow2(max([len(s) for s in stops] + [1]))

        # Padding rows: a one-token prompt that stops after one token.
        tokens = np.full((batch_bucket, prompt_bucket), self.pad_id, np.int32)
        lengths = np.ones(batch_bucket, np.int32)
        max_tokens = np.ones(batch_bucket, np.int32)
        temperature = np.zeros(batch_bucket, np.float32)
        top_k = np.zeros(batch_bucket, np.int32)
        top_p = np.ones(batch_bucket, np.float32)
        seeds = np.zeros(batch_bucket, np.uint32)
        stop_tokens = np.full((batch_bucket, num_stops, stop_len), -1, np.int32)
        for row, r in enumerate(requests):
            tokens[row, : len(r.prompt)] = r.prompt
            lengths[row] = len(r.prompt)
            max_tokens[row] = r.max_new_tokens
            temperature[row], top_k[row], top_p[row], seeds[row] = r.temperature, r.top_k, r.top_p, r.seed
            for j, s in enumerate(r.stop):
                stop_tokens[row, j, stop_len - len(s):] = s  # left-padded with the -1 wildcard
        keys = jax.vmap(jax.random.key)(seeds)
        grammar = grammar_start = None
        if constrained:
            # One table for the batch (free row 0 for unconstrained and padding rows); its rows are padded to a
            # power of two, so another grammar of similar size reuses the compiled function.
            grammar, starts = grammar_lib.stack([r.constraint for r in requests], self._vocab_size())
            grammar_start = np.zeros(batch_bucket, np.int32)
            grammar_start[:batch] = starts

        spec = DecodeSpec(max_new_tokens=new_bucket, eos_id=self.eos_id, pad_id=self.pad_id, filtering=filtering,
                          sampling=sampling, constrained=constrained)
        key = ("generate", batch_bucket, prompt_bucket, new_bucket, None if prefix is None else prefix.bucket,
               num_stops, stop_len, sampling, filtering, constrained)
        if draft is None:
            fn = self._function(key, lambda: make_generate_fn(self.graphdef, spec, self.trace_count))
            out = jax.device_get(self._call(
                fn, self.params, tokens, lengths, max_tokens, temperature, top_k, top_p, keys, stop_tokens, prefix,
                grammar, grammar_start,
            ))
        else:
            spec = SpeculativeSpec(new_bucket, self.eos_id, draft.gamma, self.pad_id, filtering, sampling)
            fn = self._function(key + ("speculative", draft.graphdef, draft.gamma),
                                lambda: make_speculative_fn(self.graphdef, draft.graphdef, spec, self.trace_count))
            out = jax.device_get(self._call(
                fn, self.params, draft.params, tokens, lengths, max_tokens, temperature, top_k, top_p, keys, stop_tokens
            ))
        completions = []
        for row in range(batch):
            n = int(out.num_tokens[row])
            toks, lps = out.tokens[row, :n].tolist(), out.logprobs[row, :n].tolist()
            if n and toks[-1] == self.eos_id:
                reason, toks, lps = "eos", toks[:-1], lps[:-1]
            elif bool(out.stopped[row]):
                reason = "stop"
            else:
                reason = "length"
            completions.append(Completion(tokens=toks, logprobs=lps, finish_reason=reason))
            if draft is not None:
                completions[-1].speculation = {name: int(getattr(out, name)[row])
                                               for name in ("target_calls", "accepted", "examined")}
        return completions

    def _vocab_size(self) -> int:
        """The width of the model's logits (what a grammar table's columns must cover)."""
        if self._model_vocab_size is None:
            self._model_vocab_size = int(nnx.merge(self.graphdef, self.params).config.vocab_size)
        return self._model_vocab_size

    def generate_tokens(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int, sampling: SamplingConfig, seed: int = 0
    ) -> list[list[int]]:
        """New token ids per prompt, cut at (and excluding) EOS; row i uses seed ``seed + i``."""
        requests = [
            Request(p, max_new_tokens, sampling.temperature, sampling.top_k, sampling.top_p, seed + i)
            for i, p in enumerate(prompts)
        ]
        return [c.tokens for c in self.generate_requests(requests)]

    def _encode(self, text: str, start: bool = False) -> list[int]:
        """Token ids of ``text``; at the ``start`` of a sequence (a prompt or a prefix, not a continuation or
        a stop string) preceded by the vocabulary's ``prompt_prefix_ids`` (an imported Llama's ``<s>``)."""
        if self.vocabulary is None:
            raise ValueError("text input needs a Generator with a vocabulary")
        lead = list(getattr(self.vocabulary, "prompt_prefix_ids", ())) if start else []
        return lead + list(self.vocabulary.encode(text))

    def complete(
        self,
        prompts: Sequence[str],
        max_new_tokens: int | Sequence[int] = 64,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | Sequence[int] = 0,
        stop: Sequence[str] = (),
        prefix: str | PrefixCache | None = None,
        constraint: grammar_lib.TokenAutomaton | Sequence[grammar_lib.TokenAutomaton | None] | None = None,
        draft: Draft | None = None,
    ) -> list[Completion]:
        """Text completions with token ids, log-probabilities and finish reasons.

        ``max_new_tokens`` and ``seed`` may be per prompt (a sequence) or shared; a shared seed gives row i
        seed ``seed + i``. ``stop`` strings end a row (the stop text is cut from the returned text).
        ``prefix`` (text or a :meth:`prefill_prefix` result) is a shared context prefilled once.
        ``constraint`` (one :class:`~quark_jax.inference.constrained.TokenAutomaton` for every prompt, or one
        per prompt with None for a free row) restricts the new text to a grammar; a row that ends with EOS
        within its token limit ends in text the grammar accepts. A ``draft``
        (:class:`~quark_jax.inference.speculative.Draft`) decodes speculatively: same output distribution.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        check_prompts(prompts)
        check_generation_args(max_new_tokens, temperature, top_k, top_p)
        n = len(prompts)
        limits = [max_new_tokens] * n if isinstance(max_new_tokens, int) else list(max_new_tokens)
        seeds = [seed + i for i in range(n)] if isinstance(seed, int) else list(seed)
        if len(limits) != n or len(seeds) != n:
            raise ValueError(f"{n} prompts but {len(limits)} max_new_tokens and {len(seeds)} seeds")
        stop = [stop] if isinstance(stop, str) else list(stop)
        stop_ids = [self._encode(s) for s in stop if s]
        if isinstance(prefix, str):
            prefix = self.prefill_prefix(prefix)
        constraints = _per_prompt(constraint, n)
        requests = [
            Request(self._encode(p, start=prefix is None), limits[i], temperature, top_k, top_p, seeds[i], stop_ids,
                    constraints[i])
            for i, p in enumerate(prompts)
        ]
        completions = self.generate_requests(requests, prefix, draft)
        for c in completions:
            text = self.vocabulary.decode(c.tokens)
            # Token-level stop matching can miss a stop string that tokenizes differently in context; the
            # text cut catches it (and drops the stop text itself).
            c.text = _cut(text, stop)
            if c.text != text:
                c.finish_reason = "stop"
        return completions

    def generate(
        self,
        prompts: Sequence[str],
        max_new_tokens: int | Sequence[int] = 64,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | Sequence[int] = 0,
        stop: Sequence[str] = (),
        prefix: str | PrefixCache | None = None,
        num_beams: int = 1,
        length_penalty: float = 1.0,
        constraint: grammar_lib.TokenAutomaton | Sequence[grammar_lib.TokenAutomaton | None] | None = None,
        draft: Draft | None = None,
    ) -> list[str]:
        """Continuations of ``prompts`` (the prompt itself not included); ``num_beams > 1`` runs beam search
        (greedy ranking by ``length_penalty``-normalised log-probability; no prefix, no sampling);
        ``constraint`` as in :meth:`complete`; a ``draft`` decodes speculatively."""
        if isinstance(prompts, str):
            prompts = [prompts]
        check_prompts(prompts)
        check_generation_args(max_new_tokens, temperature, top_k, top_p, num_beams)
        if num_beams > 1 and constraint is not None:
            raise ValueError("constrained decoding does not support num_beams > 1; use num_beams=1")
        if num_beams > 1:
            if draft is not None:
                raise ValueError(f"num_beams={num_beams} with a draft: beam search is not speculative; drop one")
            if prefix is not None:
                raise ValueError("beam search (num_beams > 1) takes no prefix")
            limit = max_new_tokens if isinstance(max_new_tokens, int) else max(max_new_tokens)
            texts = [self.vocabulary.decode(t) for t, _ in self.beam_search(
                [self._encode(p, start=True) for p in prompts], num_beams, limit, length_penalty)]
            return [_cut(t, stop) for t in texts]
        return [c.text for c in self.complete(prompts, max_new_tokens, temperature, top_k, top_p, seed, stop, prefix,
                                              constraint, draft)]

    # ---- beam search -----------------------------------------------------------------------------
    def beam_search(
        self, prompts: Sequence[Sequence[int]], num_beams: int, max_new_tokens: int, length_penalty: float = 1.0
    ) -> list[tuple[list[int], float]]:
        """The best beam per prompt: (new token ids without EOS, length-normalised log-probability)."""
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt must have at least one token")
        self.check_context(max(len(p) for p in prompts) + max_new_tokens, "prompt + max_new_tokens")
        spec = BeamSpec(num_beams, max_new_tokens, self.eos_id, length_penalty, self.pad_id)
        batch_bucket = _pow2(len(prompts), self.min_batch_bucket)
        prompt_bucket = _pow2(max(len(p) for p in prompts), self.min_prompt_bucket)
        tokens = np.full((batch_bucket, prompt_bucket), self.pad_id, np.int32)
        lengths = np.ones(batch_bucket, np.int32)
        for row, p in enumerate(prompts):
            tokens[row, : len(p)], lengths[row] = p, len(p)
        fn = self._function(("beam", batch_bucket, prompt_bucket, spec), lambda: make_beam_search_fn(self.graphdef, spec))
        out, score, num = jax.device_get(self._call(fn, self.params, tokens, lengths))
        results = []
        for row in range(len(prompts)):
            toks = out[row, : int(num[row])].tolist()
            if toks and toks[-1] == self.eos_id:
                toks = toks[:-1]
            results.append((toks, float(score[row])))
        return results

    # ---- scoring ---------------------------------------------------------------------------------
    def score_tokens(
        self, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]], greedy: bool = False
    ) -> list[list[float]] | tuple[list[list[float]], list[list[bool]]]:
        """log p(continuation token | prompt, earlier continuation tokens) for every continuation token.

        All pairs run as one padded batch through one compiled forward pass (callers chunk large request
        sets). With ``greedy=True`` returns ``(logprobs, is_max)`` where ``is_max[i][j]`` says whether
        continuation token j of pair i is the arg-max of the model's distribution at its position (the
        continuation is the greedy one exactly when all are True).
        """
        if len(prompts) != len(continuations):
            raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
        if any(len(p) == 0 for p in prompts) or any(len(c) == 0 for c in continuations):
            raise ValueError("prompts and continuations must each have at least one token")
        full = [list(p) + list(c) for p, c in zip(prompts, continuations)]
        self.check_context(max(len(f) for f in full), "prompt + continuation")
        batch_bucket = _pow2(len(full), self.min_batch_bucket)
        length_bucket = _pow2(max(len(f) for f in full), self.min_prompt_bucket)
        tokens = np.full((batch_bucket, length_bucket), self.pad_id, np.int32)
        lengths = np.ones(batch_bucket, np.int32)
        for row, f in enumerate(full):
            tokens[row, : len(f)], lengths[row] = f, len(f)
        key = ("score", batch_bucket, length_bucket) + (("greedy",) if greedy else ())
        fn = self._function(key, lambda: make_score_fn(self.graphdef, greedy=greedy))
        out = jax.device_get(self._call(fn, self.params, tokens, lengths))
        spans = [(len(p), len(f)) for p, f in zip(prompts, full)]
        if not greedy:
            logprobs = np.asarray(out)
            return [logprobs[row, a:b].tolist() for row, (a, b) in enumerate(spans)]
        logprobs, is_max = np.asarray(out[0]), np.asarray(out[1])
        return ([logprobs[row, a:b].tolist() for row, (a, b) in enumerate(spans)],
                [[bool(x) for x in is_max[row, a:b]] for row, (a, b) in enumerate(spans)])

    def score(self, prompts: Sequence[str], continuations: Sequence[str]) -> list[dict[str, Any]]:
        """Log-likelihood of each continuation given its prompt (what evaluation harnesses call).

        Prompt and continuation are tokenized separately and concatenated. Returns per pair ``logprob``
        (the sum), ``token_logprobs`` and ``num_tokens``.
        """
        token_logprobs = self.score_tokens(
            [self._encode(p, start=True) for p in prompts], [self._encode(c) for c in continuations]
        )
        return [{"logprob": float(sum(t)), "token_logprobs": t, "num_tokens": len(t)} for t in token_logprobs]


def _per_prompt(constraint: Any, n: int) -> list:
    """One constraint (or None) per prompt from a shared one or a list of ``n``."""
    if constraint is None or isinstance(constraint, grammar_lib.TokenAutomaton):
        return [constraint] * n
    constraint = list(constraint)
    if len(constraint) != n:
        raise ValueError(f"{n} prompts but {len(constraint)} constraints; give one per prompt or one for all")
    bad = [c for c in constraint if c is not None and not isinstance(c, grammar_lib.TokenAutomaton)]
    if bad:
        raise ValueError(f"constraint={bad[0]!r}: must be a TokenAutomaton (quark_jax.inference.constrained) or None")
    return constraint


def _cut(text: str, stop: Sequence[str]) -> str:
    stop = [stop] if isinstance(stop, str) else stop
    cuts = [text.find(s) for s in stop if s and s in text]
    return text[: min(cuts)] if cuts else text


__all__ = ["Generator", "Request", "Completion", "enable_compilation_cache", "PrefixCache", "check_generation_args",
           "check_prompts"]
