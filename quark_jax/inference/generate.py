"""Text in, text out: tokenizes prompts, pads them into a length bucket and calls a cached compiled generate."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

from quark_jax.inference.decode import SamplingConfig, bucket_length, make_generate_fn


class Generator:
    """Owns compiled generate functions keyed by (batch, prompt bucket, max new tokens, sampling)."""

    def __init__(self, graphdef: nnx.GraphDef, params: Any, vocabulary: Any):
        self.graphdef = graphdef
        self.params = params
        self.vocabulary = vocabulary
        self._compiled: dict[tuple, Any] = {}

    def _function(self, key: tuple, sampling: SamplingConfig, max_new_tokens: int):
        if key not in self._compiled:
            self._compiled[key] = make_generate_fn(self.graphdef, sampling, max_new_tokens, self.vocabulary.eos_id)
        return self._compiled[key]

    def generate_tokens(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int, sampling: SamplingConfig, seed: int = 0
    ) -> list[list[int]]:
        """New token ids per prompt, cut at (and excluding) EOS."""
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt must have at least one token")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
        lengths = np.array([len(p) for p in prompts], np.int32)
        padded_len = bucket_length(int(lengths.max()))
        tokens = np.zeros((len(prompts), padded_len), np.int32)
        for row, prompt in enumerate(prompts):
            tokens[row, : len(prompt)] = prompt
        fn = self._function((len(prompts), padded_len, max_new_tokens, sampling), sampling, max_new_tokens)
        out = np.asarray(jax.device_get(fn(self.params, tokens, lengths, jax.random.key(seed))))
        eos = self.vocabulary.eos_id
        results = []
        for row in out.tolist():
            results.append(row[: row.index(eos)] if eos in row else row)
        return results

    def generate(
        self,
        prompts: Sequence[str],
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int = 0,
    ) -> list[str]:
        """Continuations of ``prompts`` (the prompt itself not included)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        sampling = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p)
        encoded = [list(self.vocabulary.encode(p)) for p in prompts]
        new_tokens = self.generate_tokens(encoded, max_new_tokens, sampling, seed)
        return [self.vocabulary.decode(t) for t in new_tokens]
