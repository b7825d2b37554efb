"""The notebook API: ``qj.load(model_dir)`` (any run directory, through :mod:`quark_jax.runs`) and ``qj.Trainer``."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from flax import nnx

from quark_jax import runs
from quark_jax.inference.generate import Generator
from quark_jax.inference.speculative import Draft
from quark_jax.models.config import ModelConfig
from quark_jax.models.transformer import Transformer, abstract_model

if TYPE_CHECKING:
    from quark_jax.inference.classifier import Classifier


class LoadedModel:
    """A trained model ready to generate: ``.config``, ``.params``, ``.tokenizer``, ``.step``, ``.generate()``."""

    def __init__(self, config: ModelConfig, params: Any, tokenizer: Any, step: int,
                 trained_context: int | None = None):
        self.config = config
        self.params = params
        self.tokenizer = tokenizer
        self.step = step
        self.trained_context = trained_context  # tokens per training sequence (None: not recorded)
        self.graphdef = nnx.graphdef(abstract_model(config))
        self._generator = Generator(self.graphdef, params, tokenizer, max_context=trained_context)
        self.quantization: dict | None = None  # {"mode", "group_size"} for quantized parameters
        self.lora: dict | None = None  # a LoRA run: {"config", "adapters", "base_dir", "merged"}
        self.heads: dict | None = None  # a post-training run's extra heads (reward, classifier)
        self.objective: dict = {}  # the run's objective.json ({} for a plain language model)
        self.model_dir: str | None = None  # the run directory it was loaded from (qj.load)
        self._drafts: dict[str, LoadedModel] = {}  # draft runs loaded by path, for draft="DIR"

    @property
    def model(self) -> Transformer:
        """The parameters merged into an NNX module (for interactive use)."""
        return nnx.merge(self.graphdef, self.params)

    def generate(
        self, prompts: str | list[str], max_new_tokens: int | list[int] = 64, temperature: float = 0.0,
        top_k: int = 0, top_p: float = 1.0, seed: int | list[int] = 0, stop: list[str] = (), prefix=None,
        num_beams: int = 1, length_penalty: float = 1.0, constraint=None,
        draft: str | LoadedModel | None = None, gamma: int = 4,
    ) -> list[str]:
        """Continuations of each prompt; greedy unless ``temperature > 0``. Same seed, same output.

        ``max_new_tokens`` and ``seed`` may be per prompt; ``stop`` strings end a continuation; ``prefix``
        (text or ``generator.prefill_prefix(...)``) is a shared context prefilled once; ``num_beams > 1``
        runs beam search with ``length_penalty``; ``constraint`` (a token automaton of
        :mod:`quark_jax.inference.constrained`, or one per prompt) restricts the text to a grammar. ``draft`` (a
        run directory or a loaded model sharing this model's tokenizer) decodes speculatively, ``gamma`` draft
        tokens per target call: the same outputs for greedy decoding, the same distribution when sampling
        (:mod:`quark_jax.inference.speculative`). See :class:`quark_jax.inference.generate.Generator`.
        """
        return self._generator.generate(
            prompts, max_new_tokens, temperature, top_k, top_p, seed, stop, prefix, num_beams, length_penalty,
            constraint, self.draft(draft, gamma) if draft is not None else None,
        )

    def draft(self, draft: str | LoadedModel, gamma: int = 4) -> Draft:
        """``draft`` (a run directory, loaded once and kept, or a :class:`LoadedModel`) as a speculative
        :class:`~quark_jax.inference.speculative.Draft` for this model; refused unless both share one
        tokenizer (the same vocabulary, token for token)."""
        if isinstance(gamma, bool) or not isinstance(gamma, int) or gamma < 1:
            raise ValueError(f"gamma={gamma!r}: must be a whole number >= 1 (draft tokens per target call)")
        if isinstance(draft, str):
            if draft not in self._drafts:
                self._drafts[draft] = load(draft, beyond_context=self.generator.beyond_context)
            draft = self._drafts[draft]
        check_same_tokenizer(self, draft)
        return Draft(draft.graphdef, draft.params, gamma)

    def complete(self, prompts: str | list[str], **kwargs: Any) -> list:
        """Like :meth:`generate` but returns ``Completion``s: text, token ids, logprobs, finish reason."""
        return self._generator.complete(prompts, **kwargs)

    def score(self, prompts: list[str], continuations: list[str]) -> list[dict[str, Any]]:
        """Log-likelihood of each continuation given its prompt (for evaluation harnesses)."""
        return self._generator.score(prompts, continuations)

    def quantize(self, mode: str, group_size: int = 32) -> LoadedModel:
        """A copy with weight-only quantized parameters (``"int8"`` per-channel or ``"int4"`` grouped)."""
        from quark_jax.inference.quantize import quantize_params

        model = LoadedModel(self.config, quantize_params(self.params, mode, group_size), self.tokenizer, self.step,
                            self.trained_context)
        model.quantization = {"mode": mode, "group_size": group_size}
        return model

    @property
    def generator(self) -> Generator:
        """The compiled-function cache behind :meth:`generate` (prefix caching, token-level requests)."""
        return self._generator


def load(model_dir: str, step: int | None = None, merge_adapters: bool = True, beyond_context: str = "error"
         ) -> LoadedModel:
    """Loads the newest readable (or the given) checkpoint of a run directory written by ``quark train``, a
    quantized directory (``quark quantize``) or a LoRA run (its base with the adapters merged into the weights,
    or applied at run time with ``merge_adapters=False``). See :mod:`quark_jax.runs` for the format.

    A request longer than the context the run was trained on is refused; ``beyond_context="warn"`` allows
    it with a warning."""
    run = runs.load(model_dir, step, merge_adapters)
    model = LoadedModel(run.config, run.params, run.tokenizer, run.step, run.trained_context)
    model.generator.beyond_context = beyond_context
    model.quantization, model.lora = run.quantization, run.lora
    model.heads, model.objective = run.heads, run.objective or {}
    model.model_dir = model_dir
    return model


def load_classifier(model_dir: str, step: int | None = None, batch_size: int = 32) -> Classifier:
    """A :class:`~quark_jax.inference.classifier.Classifier` over a sequence-classifier run (trained with
    ``configs/runs/intent.gin``): its head, labels, pooling and trained length from the run directory."""
    from quark_jax.inference.classifier import Classifier

    model_dir = runs.resolve(model_dir, "classifier run")
    return Classifier.from_loaded(load(model_dir, step), batch_size,
                                  name=model_dir if "://" in model_dir else os.path.abspath(model_dir))


def tokenizer_identity(tokenizer: Any) -> tuple:
    """What makes two tokenizers the same for decoding: the SentencePiece model bytes when there are any,
    else the special ids and the text of every token id."""
    model_bytes = getattr(tokenizer, "sp_model", None)
    if isinstance(model_bytes, bytes):
        return ("sentencepiece", model_bytes)
    size = int(tokenizer.vocab_size)
    return ("pieces", size, getattr(tokenizer, "eos_id", None), tuple(tokenizer.decode([i]) for i in range(size)))


def check_same_tokenizer(target: LoadedModel, draft: LoadedModel) -> None:
    """Refuses a draft whose tokenizer or vocabulary size differs from the target's, naming both runs."""
    names = f"draft {draft.model_dir or 'model'} and target {target.model_dir or 'model'}"
    if draft.config.vocab_size != target.config.vocab_size:
        raise ValueError(f"{names} have different vocabularies ({draft.config.vocab_size} vs "
                         f"{target.config.vocab_size} ids); a draft must share the target's tokenizer "
                         "(distill one from the target with configs/runs/distill.gin)")
    if tokenizer_identity(draft.tokenizer) != tokenizer_identity(target.tokenizer):
        raise ValueError(f"{names} use different tokenizers; a draft must share the target's tokenizer "
                         "(distill one from the target with configs/runs/distill.gin)")
