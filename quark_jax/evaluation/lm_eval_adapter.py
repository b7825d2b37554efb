"""lm-evaluation-harness model adapter: ``lm_eval --model quark --model_args model_dir=RUN``, in-process.

Importing this module registers the model name ``quark`` with lm_eval's registry, so after
``import quark_jax.evaluation.lm_eval_adapter``::

    lm_eval.simple_evaluate(model="quark", model_args="model_dir=runs/tiny_demo", tasks=["stdlib_mc"],
                            task_manager=lm_eval.tasks.TaskManager(include_path="evals/lm_eval_tasks"))

From the shell (lm_eval 0.4.13 has no plugin entry-point group for models, so the module registers the name and
then runs lm_eval's own command line)::

    python -m quark_jax.evaluation.lm_eval_adapter --model quark --model_args model_dir=RUN \\
        --tasks stdlib_mc,stdlib_qa --include_path evals/lm_eval_tasks

``model_args``: ``model_dir`` (required), ``step`` (a checkpoint step; default the newest),
``batch_size`` (sequences per compiled call, default 16), ``max_length`` (tokens per sequence; default the
context the run was trained on, else 2048).

All requests of a kind are collected, sorted by length and scored or generated in batches through the
model's compiled functions (``Generator.score_tokens`` / ``Generator.generate_requests``): one compiled call
per batch, never one per request. ``is_greedy`` is computed for real: the scoring pass also returns whether
each continuation token is the arg-max of the model's distribution at its position
(``score_tokens(..., greedy=True)``), and a continuation is greedy when all of its tokens are.

Tokenization follows lm_eval's ``TemplateLM``: a (context, continuation) pair is encoded as
``encode(context + continuation)`` split at ``len(encode(context))``; an empty context is the EOS token (or the
vocabulary's BOS when it has one). A vocabulary with ``prompt_prefix_ids`` (an imported Llama's ``<s>``) gets them
in front of every context, as ``Generator.score`` and ``generate`` do.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any

import lm_eval.models  # noqa: F401  (registers lm_eval's own models before ours, so they stay available)
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 16
DEFAULT_MAX_LENGTH = 2048
DEFAULT_MAX_GEN_TOKS = 256


def _int_or_default(value: Any, default: int) -> int:
    """``batch_size=auto`` and friends: lm_eval passes strings such as 'auto' or 'auto:4'; we use the default."""
    if value is None or (isinstance(value, str) and value.startswith("auto")):
        return default
    return int(value)


class QuarkLM(TemplateLM):
    """A quark_jax run (``quark_jax.load(model_dir)``) as an lm_eval language model."""

    backend = "causal"

    def __init__(self, model_dir: str | None = None, step: int | None = None, batch_size: int | str | None = None,
                 max_length: int | None = None, max_gen_toks: int = DEFAULT_MAX_GEN_TOKS, model: Any = None,
                 **unused: Any):
        super().__init__()
        if model is None:
            if not model_dir:
                raise ValueError("the quark model needs model_args model_dir=RUN_DIRECTORY")
            import quark_jax

            model = quark_jax.load(str(model_dir), step=None if step is None else int(step))
        if unused:
            log.info("quark lm_eval adapter ignores %s", sorted(unused))
        self.model = model
        self.model_dir = str(model_dir) if model_dir else "<in-memory>"
        self.generator = model.generator
        self.vocabulary = model.tokenizer
        self.batch_size = max(1, _int_or_default(batch_size, DEFAULT_BATCH_SIZE))
        trained = getattr(model, "trained_context", None)
        self.max_length = int(max_length) if max_length else (trained or DEFAULT_MAX_LENGTH)
        if trained and self.max_length > trained:
            raise ValueError(f"max_length={self.max_length} is beyond the {trained}-token context the run was "
                             "trained on")
        self.max_gen_toks = int(max_gen_toks)
        self.prompt_prefix_ids = list(getattr(self.vocabulary, "prompt_prefix_ids", ()))

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict[str, Any], additional_config: dict[str, Any] | None = None):
        """lm_eval's constructor path. ``model_args`` win over the run-wide settings (``--batch_size``,
        ``--device``...) instead of colliding with them, so ``model_args=...,batch_size=32`` works next to
        the command line's default ``--batch_size 1``."""
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in arg_dict}
        return cls(**arg_dict, **extra)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict[str, Any] | None = None):
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    # ---- tokenizer ------------------------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return int(self.generator.eos_id)

    @property
    def prefix_token_id(self) -> int:
        return self.prompt_prefix_ids[0] if self.prompt_prefix_ids else self.eot_token_id

    @property
    def tokenizer_name(self) -> str:
        return f"quark:{self.model_dir}"

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return list(self.vocabulary.encode(string))

    def tok_decode(self, tokens: Sequence[int]) -> str:
        return self.vocabulary.decode(list(tokens))

    # ---- log-likelihood --------------------------------------------------------------------------------
    def _with_prefix(self, context: list[int]) -> list[int]:
        lead = self.prompt_prefix_ids
        return context if not lead or context[: len(lead)] == lead else lead + context

    def _fit(self, context: list[int], continuation: list[int]) -> tuple[list[int], list[int]]:
        """Left-truncates a pair to ``max_length`` tokens (as lm_eval's HF model does): context first, then
        the continuation's oldest tokens, keeping at least one context token."""
        if len(continuation) >= self.max_length:
            whole = context + continuation
            continuation = continuation[-(self.max_length - 1):]
            context = whole[-self.max_length: -len(continuation)]
        else:
            context = context[-(self.max_length - len(continuation)):]
        return context, continuation

    def score_pairs(self, pairs: Sequence[tuple[list[int], list[int]]], disable_tqdm: bool = True,
                    desc: str = "quark: scoring") -> list[tuple[float, bool]]:
        """(sum of log-probabilities, is_greedy) per (context ids, continuation ids) pair, in batches of
        ``batch_size``, longest first (so a batch shares one length bucket)."""
        fitted = [self._fit(self._with_prefix(list(c)), list(x)) for c, x in pairs]
        order = sorted(range(len(fitted)), key=lambda i: -(len(fitted[i][0]) + len(fitted[i][1])))
        results: list[tuple[float, bool] | None] = [None] * len(fitted)
        batches = [order[i: i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        for batch in tqdm(batches, desc=desc, disable=disable_tqdm):
            logprobs, is_max = self.generator.score_tokens(
                [fitted[i][0] for i in batch], [fitted[i][1] for i in batch], greedy=True
            )
            for i, lp, flags in zip(batch, logprobs, is_max):
                results[i] = (float(sum(lp)), bool(all(flags)))
        return results  # type: ignore[return-value]

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        results = self.score_pairs([(ctx, cont) for _, ctx, cont in requests], disable_tqdm=disable_tqdm)
        for (key, _, _), result in zip(requests, results):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Sum of log-probabilities of each whole text, in disjoint windows of up to ``max_length`` tokens
        (the first conditioned on ``prefix_token_id``), all windows of all texts batched together."""
        windows, owner = [], []
        for index, request in enumerate(requests):
            (text,) = request.args
            tokens = self.tok_encode(text)
            for context, target in map(make_disjoint_window, get_rolling_token_windows(
                    tokens, self.prefix_token_id, self.max_length - 1, 1)):
                windows.append((context, target))
                owner.append(index)
        scores = self.score_pairs(windows, disable_tqdm=disable_tqdm, desc="quark: rolling log-likelihood")
        totals = [0.0] * len(requests)
        for index, (logprob, _) in zip(owner, scores):
            totals[index] += logprob
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    # ---- generation ----------------------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Generations grouped by identical generation settings, then batched (longest context first)."""
        from quark_jax.inference.generate import Request

        eos = self.tok_decode([self.eot_token_id]) or None
        groups: dict[str, list[int]] = {}
        settings = []
        for index, request in enumerate(requests):
            context, gen_kwargs = request.args
            kwargs = normalize_gen_kwargs(dict(gen_kwargs), self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            max_new = int(kwargs.pop("max_gen_toks"))
            temperature = float(kwargs.pop("temperature", 0.0) or 0.0) if kwargs.pop("do_sample", False) else 0.0
            seed = int(kwargs.pop("seed", 0) or 0)
            settings.append((context, until, max_new, temperature, seed))
            groups.setdefault(repr((until, max_new, temperature)), []).append(index)

        results: list[str | None] = [None] * len(requests)
        batches = []
        for indices in groups.values():
            indices = sorted(indices, key=lambda i: -len(settings[i][0]))
            batches += [indices[i: i + self.batch_size] for i in range(0, len(indices), self.batch_size)]
        for batch in tqdm(batches, desc="quark: generate_until", disable=disable_tqdm):
            _, until, max_new, temperature, _ = settings[batch[0]]
            max_new = min(max_new, self.max_length - 1)
            stop_ids = [self.tok_encode(s) for s in until if s and s != eos]
            built = []
            for i in batch:
                context, _, _, _, seed = settings[i]
                ids = self._with_prefix(self.tok_encode(context))[-(self.max_length - max_new):]
                built.append(Request(ids or [self.prefix_token_id], max_new, temperature, seed=seed + i,
                                     stop=[s for s in stop_ids if s]))
            for i, completion in zip(batch, self.generator.generate_requests(built)):
                text = postprocess_generated_text(self.tok_decode(completion.tokens), until, None)
                results[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return results  # type: ignore[return-value]


def register() -> None:
    """Registers :class:`QuarkLM` as lm_eval's model ``quark`` (done on import; idempotent)."""
    from lm_eval.api.registry import model_registry

    if model_registry.get("quark", None) is None:
        register_model("quark")(QuarkLM)


def main(argv: list[str] | None = None) -> None:
    """``python -m quark_jax.evaluation.lm_eval_adapter [lm_eval arguments]``: lm_eval's CLI with ``quark``
    registered."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    # Run as a script, this file is the module ``__main__``; the registered class must be the importable one.
    from quark_jax.evaluation import lm_eval_adapter

    lm_eval_adapter.main()
else:
    register()
