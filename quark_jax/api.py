"""The notebook API: ``qj.load(model_dir)`` and ``qj.Trainer``."""

from __future__ import annotations

import os
from typing import Any

import jax
from flax import nnx

from quark_jax.inference.generate import Generator
from quark_jax.models.config import ModelConfig
from quark_jax.models.transformer import Transformer, abstract_model
from quark_jax.training.checkpoint import Checkpointer


class LoadedModel:
    """A trained model ready to generate: ``.config``, ``.params``, ``.tokenizer``, ``.step``, ``.generate()``."""

    def __init__(self, config: ModelConfig, params: Any, tokenizer: Any, step: int):
        self.config = config
        self.params = params
        self.tokenizer = tokenizer
        self.step = step
        self.graphdef = nnx.graphdef(abstract_model(config))
        self._generator = Generator(self.graphdef, params, tokenizer)
        self.quantization: dict | None = None  # {"mode", "group_size"} for quantized parameters

    @property
    def model(self) -> Transformer:
        """The parameters merged into an NNX module (for interactive use)."""
        return nnx.merge(self.graphdef, self.params)

    def generate(
        self, prompts: str | list[str], max_new_tokens: int | list[int] = 64, temperature: float = 0.0,
        top_k: int = 0, top_p: float = 1.0, seed: int | list[int] = 0, stop: list[str] = (), prefix=None,
        num_beams: int = 1, length_penalty: float = 1.0,
    ) -> list[str]:
        """Continuations of each prompt; greedy unless ``temperature > 0``. Same seed, same output.

        ``max_new_tokens`` and ``seed`` may be per prompt; ``stop`` strings end a continuation; ``prefix``
        (text or ``generator.prefill_prefix(...)``) is a shared context prefilled once; ``num_beams > 1``
        runs beam search with ``length_penalty``. See :class:`quark_jax.inference.generate.Generator`.
        """
        return self._generator.generate(
            prompts, max_new_tokens, temperature, top_k, top_p, seed, stop, prefix, num_beams, length_penalty
        )

    def complete(self, prompts: str | list[str], **kwargs: Any) -> list:
        """Like :meth:`generate` but returns ``Completion``s: text, token ids, logprobs, finish reason."""
        return self._generator.complete(prompts, **kwargs)

    def score(self, prompts: list[str], continuations: list[str]) -> list[dict[str, Any]]:
        """Log-likelihood of each continuation given its prompt (for evaluation harnesses)."""
        return self._generator.score(prompts, continuations)

    def quantize(self, mode: str, group_size: int = 32) -> LoadedModel:
        """A copy with weight-only quantized parameters (``"int8"`` per-channel or ``"int4"`` grouped)."""
        from quark_jax.inference.quantize import quantize_params

        model = LoadedModel(self.config, quantize_params(self.params, mode, group_size), self.tokenizer, self.step)
        model.quantization = {"mode": mode, "group_size": group_size}
        return model

    @property
    def generator(self) -> Generator:
        """The compiled-function cache behind :meth:`generate` (prefix caching, token-level requests)."""
        return self._generator


def load(model_dir: str, step: int | None = None, merge_adapters: bool = True) -> LoadedModel:
    """Loads the newest (or the given) checkpoint of a run directory written by ``quark train``, or a quantized
    checkpoint written by :func:`quark_jax.inference.quantize.save_quantized`.

    A LoRA run (``objective.json`` kind ``"lora"``) loads its base run and the adapters, merged into the
    weights, or with ``merge_adapters=False`` applied at run time (see :mod:`quark_jax.models.lora`)."""
    from quark_jax.data.tokenizer import get_vocabulary
    from quark_jax.training.objectives.base import read_objective_info

    if read_objective_info(model_dir).get("kind") == "lora":
        from quark_jax.models.lora import load_lora_model

        return load_lora_model(model_dir, step, merge_adapters)
    config_path = os.path.join(model_dir, "model_config.json")
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{config_path} not found: is {model_dir!r} a directory written by `quark train`?")
    with open(config_path) as f:
        config = ModelConfig.from_json(f.read())
    tokenizer_path = os.path.join(model_dir, "tokenizer.model")
    tokenizer = get_vocabulary(tokenizer_path if os.path.exists(tokenizer_path) else None)

    from quark_jax.inference import quantize

    if quantize.is_quantized_dir(model_dir):  # written by quantize.save_quantized
        params, info = quantize.read_quantized(model_dir, config)
        model = LoadedModel(config, params, tokenizer, int(info.get("step", 0)))
        model.quantization = {"mode": info["mode"], "group_size": info["group_size"]}
        return model

    abstract = nnx.to_pure_dict(nnx.state(abstract_model(config), nnx.Param))
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract)
    checkpointer = Checkpointer(model_dir, async_save=False)
    try:
        # An objective's heads (reward, PPO value) are dropped: this is the plain language model.
        restored_step, params, _ = checkpointer.restore_model_params(abstract, device, step)
    finally:
        checkpointer.close()
    return LoadedModel(config, params, tokenizer, restored_step)
