"""Two speculative-decoding drafts of one target, compared: one distilled on the corpus (configs/runs/distill.gin),
one on the target's own samples (configs/runs/distill_spec.gin over `quark data distill`, DistillSpec).

    python bench/draft_distillation.py --target /tmp/target --corpus_draft /tmp/draft_corpus \
        --samples_draft /tmp/draft_samples

Both drafts decode the same held-out prompts greedily with the target at γ = --gamma: the first --prompt_tokens
tokens of examples of the validation split of the target's own training mixture (never trained on by either draft).
One JSON line: per draft the acceptance rate α (accepted drafts / drafts judged), the tokens per target call
measured and predicted from α by (1 − α^(γ+1)) / (1 − α), and whether the output equals plain greedy decoding of
the target (it must: speculative decoding is exact); then the gain of the samples draft over the corpus draft.
"""

from __future__ import annotations

import argparse
import json
import os

from speculative import speculation_figures

import quark_jax as qj
from quark_jax.data.teacher_samples import corpus_prompts
from quark_jax.distill_samples import teacher_mixture
from quark_jax.inference.generate import Request


def draft_figures(target, draft_dir: str, requests: list[Request], gamma: int, reference: list[list[int]]) -> dict:
    """α and tokens per target call of ``draft_dir`` drafting for ``target`` on ``requests``, and whether the
    speculative output equals ``reference`` (the target's plain greedy tokens)."""
    completions = target.generator.generate_requests(requests, draft=target.draft(draft_dir, gamma))
    figures = speculation_figures(completions, gamma)
    return {"dir": draft_dir, **figures, "same_output": [c.tokens for c in completions] == reference}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True)
    parser.add_argument("--corpus_draft", required=True, help="the draft distilled on the corpus (distill.gin)")
    parser.add_argument("--samples_draft", required=True, help="the draft distilled on the target's samples")
    parser.add_argument("--gamma", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=64, help="held-out prompts (one batch)")
    parser.add_argument("--prompt_tokens", type=int, default=16)
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--mixture", default=None, help="prompts from this mixture (default: the target's own)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for flag in ("target", "corpus_draft", "samples_draft"):
        if not os.path.isfile(os.path.join(getattr(args, flag), "model_config.json")):
            parser.error(f"--{flag} {getattr(args, flag)}: not a finished run directory (no model_config.json); "
                         "train it first (see the docstring)")

    target = qj.load(args.target)
    mixture = args.mixture or teacher_mixture(args.target)
    length = target.trained_context or args.prompt_tokens + args.max_new_tokens
    prompts = corpus_prompts(mixture, "validation", args.prompts, args.prompt_tokens, args.seed, length,
                             target.tokenizer)
    requests = [Request(p, args.max_new_tokens) for p in prompts]
    reference = [c.tokens for c in target.generator.generate_requests(requests)]
    drafts = {name: draft_figures(target, path, requests, args.gamma, reference)
              for name, path in (("corpus_draft", args.corpus_draft), ("samples_draft", args.samples_draft))}
    print(json.dumps({
        "bench": "draft_distillation", "target": args.target, "mixture": mixture, "split": "validation",
        "prompts": len(prompts), "prompt_tokens": args.prompt_tokens, "max_new_tokens": args.max_new_tokens,
        "gamma": args.gamma, "decoding": "greedy", **drafts,
        "alpha_gain": round(drafts["samples_draft"]["alpha"] - drafts["corpus_draft"]["alpha"], 3),
        "tokens_per_call_gain": round(drafts["samples_draft"]["tokens_per_target_call"]
                                      - drafts["corpus_draft"]["tokens_per_target_call"], 3),
    }))


if __name__ == "__main__":
    main()
