"""Cost per token of grammar-constrained decoding against free decoding, one JSON line.

    python bench/constrained.py [--batch 8] [--new_tokens 128] [--repeats 3]

Model: ``configs/models/small.gin`` (~30M parameters, the project tokenizer's 4096 ids) with random weights,
sampling at temperature 1. Both runs produce exactly ``batch × new_tokens`` tokens: the generator's EOS is set
to -1, so no row ends early (a constrained row whose JSON object ``{"text": <any string>}`` closes goes on
writing the tokenizer's EOS, the only token its grammar then allows). The time of one ``generate_requests``
call (prefill + decode loop, warm: compiled first) is the median of ``repeats`` (the two kinds interleaved); ``cost_ratio`` is constrained
time over free time, i.e. the cost per token of the mask (a gather of one table row per row and step, a
``where`` over the logits, the state update).

Also reported: the build time and states of a tool-call grammar (``tool_calls.call_schema`` of a calculator
tool; cold, i.e. not from the automaton cache) and of the long-string grammar.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time

import gin
import jax
from flax import nnx

from quark_jax import gin_utils
from quark_jax.data import tokenizer, tool_calls
from quark_jax.data.hf_tokenizer import SentencePieceTokenizer
from quark_jax.inference import constrained
from quark_jax.inference.generate import Generator, Request
from quark_jax.models.transformer import Transformer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CALCULATOR = [{"type": "function", "function": {"name": "calculator", "description": "evaluates arithmetic",
                                                "parameters": {"type": "object", "properties": {
                                                    "expression": {"type": "string"}}, "required": ["expression"]}}}]
LONG = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}


def timed_build(build):
    started = time.perf_counter()
    automaton = build()
    return automaton, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new_tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    gin_utils.parse([os.path.join(REPO, "configs", "models", "small.gin")])
    config = dataclasses.replace(gin.get_configurable("quark_jax.ModelConfig")())
    vocabulary = SentencePieceTokenizer(str(tokenizer.DEFAULT_SPM_PATH), eos_id=tokenizer.EOS_ID, add_bos=False)
    graphdef, params = nnx.split(Transformer(config, rngs=nnx.Rngs(params=0)), nnx.Param)
    generator = Generator(graphdef, nnx.to_pure_dict(params), vocabulary, eos_id=-1, compilation_cache=False)

    tool_grammar, tool_build_s = timed_build(lambda: constrained.from_json_schema(
        tool_calls.call_schema(CALCULATOR), vocabulary))
    long_grammar, long_build_s = timed_build(lambda: constrained.from_json_schema(LONG, vocabulary))

    prompt = vocabulary.encode("Write the answer as JSON:")

    def run(constraint) -> float:
        requests = [Request(prompt, args.new_tokens, temperature=1.0, seed=row, constraint=constraint)
                    for row in range(args.batch)]
        started = time.perf_counter()
        completions = generator.generate_requests(requests)
        elapsed = time.perf_counter() - started
        assert all(len(c.tokens) == args.new_tokens for c in completions), [len(c.tokens) for c in completions]
        if constraint is not None:
            assert all(constraint.walk(c.tokens) >= 0 for c in completions)
        return elapsed

    runs = {"free": None, "constrained": long_grammar}
    for constraint in runs.values():
        run(constraint)  # compile
    samples = {name: [] for name in runs}
    for _ in range(args.repeats):  # interleaved, so a change in machine load hits both alike
        for name, constraint in runs.items():
            samples[name].append(run(constraint))
    timings = {name: statistics.median(times) for name, times in samples.items()}
    tokens = args.batch * args.new_tokens
    print(json.dumps({
        "bench": "constrained_decoding", "backend": jax.default_backend(), "model": "small.gin (random weights)",
        "batch": args.batch, "new_tokens": args.new_tokens,
        "free_tokens_per_s": round(tokens / timings["free"], 1),
        "constrained_tokens_per_s": round(tokens / timings["constrained"], 1),
        "cost_ratio": round(timings["constrained"] / timings["free"], 3),
        "table_rows": constrained.row_bucket(long_grammar.num_states + 1, constrained.min_rows(config.vocab_size)),
        "tool_call_grammar": {"states": tool_grammar.num_states, "build_s": round(tool_build_s, 3)},
        "long_string_grammar": {"states": long_grammar.num_states, "build_s": round(long_build_s, 3)},
    }))


if __name__ == "__main__":
    main()
