"""``quark data distill``: a teacher run's own samples on prompts of its corpus, the training data of a DistillSpec
draft (Zhou et al. 2023: a draft distilled on the target's generations accepts more of its tokens).

    quark data distill --teacher_dir /tmp/target --out /tmp/target_samples --samples 4096 --max_new_tokens 112
    quark train --gin_file=configs/runs/distill_spec.gin --gin.TEACHER_DIR="'/tmp/target'" \
        --gin.SAMPLES_DIR="'/tmp/target_samples'" --gin.MODEL_DIR="'/tmp/draft'"

Prompts are the first ``prompt_tokens`` tokens of examples of the teacher's own training mixture (named by its
``lineage.json``, or ``--mixture``): the train split for the training samples, the validation split for the
validation samples, chunked at the teacher's trained context as training read them. Continuations are sampled at
temperature 1 by default (the teacher's own distribution, DistillSpec's finding); temperature 0 is greedy. Row i
of the training split samples with seed ``seed + i``, row j of the validation split with ``seed + samples + j``,
exactly as ``qj.load(teacher).generate(prompts, seed=seed)`` seeds a batch, so the samples can be reproduced
through the text API. Every call of the compiled generate function has the same shape (the last batch is padded
with copies), so it is compiled once. The directory format is :mod:`quark_jax.data.teacher_samples`.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

from quark_jax import lineage, run_paths, runs
from quark_jax.data import teacher_samples
from quark_jax.data.fingerprint import file_sha256

DEFAULT_PROMPT_TOKENS = 16


def teacher_mixture(run_dir: str) -> str:
    """The mixture or task a run trained on, from its ``lineage.json``; a mixture registered from a built
    directory is registered again from the path the lineage recorded."""
    for entry in lineage.read_lineage(run_dir).get("data", []):
        if entry.get("role") == "mixture" and entry.get("name"):
            if entry.get("path") and not entry.get("missing"):
                import seqio

                from quark_jax.data import built_tasks, catalogue

                catalogue.register_all()
                if entry["name"] not in seqio.MixtureRegistry.names() and run_paths.exists(
                        run_paths.join(entry["path"], built_tasks.MANIFEST)):
                    built_tasks.register_built(entry["path"])
            return entry["name"]
    raise ValueError(f"{run_dir} records no training mixture (no lineage.json data entry); pass --mixture NAME "
                     "(`quark data list` shows the registered ones)")


def generate_samples(model: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int, temperature: float,
                     seed: int, rows: int, on_batch: Callable[[int], None] | None = None) -> list[dict]:
    """One record per prompt (token ids): the teacher's continuation, ``rows`` prompts per compiled call.

    Prompts go through the text API (``model.complete``) as their decoded text, row i with seed ``seed + i``;
    the last call is padded to ``rows`` prompts with copies of its first, so every call has one shape.
    """
    texts = [model.tokenizer.decode(list(p)) for p in prompts]
    records = []
    for start in range(0, len(texts), rows):
        chunk = texts[start:start + rows]
        seeds = [seed + start + i for i in range(len(chunk))]
        padding = rows - len(chunk)
        completions = model.complete(chunk + [chunk[0]] * padding, max_new_tokens=max_new_tokens,
                                     temperature=temperature, seed=seeds + [seeds[0]] * padding)[:len(chunk)]
        for i, completion in enumerate(completions):
            records.append({"prompt": chunk[i], "prompt_ids": list(prompts[start + i]),
                            "completion_ids": list(completion.tokens), "finish_reason": completion.finish_reason,
                            "seed": seeds[i], "completion": completion.text})
        if on_batch is not None:
            on_batch(len(chunk))
    return records


def _tokenizer_sha256(run_dir: str) -> str | None:
    for name in (runs.TOKENIZER_FILE, runs.HF_TOKENIZER_FILE):
        path = runs.safe_path(run_dir, name)
        if run_paths.is_local(path) and os.path.isfile(path):
            return file_sha256(path)
    return None


def distill_data(teacher_dir: str, out: str, samples: int, validation_samples: int, max_new_tokens: int,
                 temperature: float = 1.0, seed: int = 0, prompt_tokens: int = DEFAULT_PROMPT_TOKENS,
                 batch_size: int = 32, mixture: str | None = None, step: int | None = None,
                 progress: bool = True) -> dict:
    """Samples ``teacher_dir`` on prompts of its corpus and writes the samples directory ``out``; returns its
    manifest. Errors a user can fix (a missing run, a request beyond the trained context, too few prompts)
    are ValueErrors naming the fix."""
    import quark_jax as qj

    teacher_dir = runs.resolve(teacher_dir, "--teacher_dir")
    model = qj.load(teacher_dir, step)
    context = model.trained_context
    if context is not None and prompt_tokens + max_new_tokens > context:
        raise ValueError(f"--prompt_tokens {prompt_tokens} + --max_new_tokens {max_new_tokens} is beyond the "
                         f"{context}-token context {teacher_dir} was trained on; lower one of them")
    mixture = mixture or teacher_mixture(teacher_dir)
    sequence_length = context or prompt_tokens + max_new_tokens
    prompts = {split: teacher_samples.corpus_prompts(mixture, split, count, prompt_tokens, seed, sequence_length,
                                                     model.tokenizer)
               for split, count in (("train", samples), ("validation", validation_samples))}
    rows = min(batch_size, max(samples, validation_samples))
    from tqdm import tqdm

    with tqdm(total=samples + validation_samples, desc=f"sampling {os.path.basename(teacher_dir.rstrip('/'))}",
              unit="sample", disable=not progress) as bar:
        splits = {"train": generate_samples(model, prompts["train"], max_new_tokens, temperature, seed, rows,
                                            bar.update),
                  "validation": generate_samples(model, prompts["validation"], max_new_tokens, temperature,
                                                 seed + samples, rows, bar.update)}
    manifest = {
        "teacher_dir": run_paths.absolute(teacher_dir), "teacher_step": model.step,
        "teacher_run_id": lineage.read_lineage(teacher_dir).get("run_id"), "mixture": mixture,
        "prompt_tokens": prompt_tokens, "max_new_tokens": max_new_tokens, "temperature": temperature,
        "decoding": "sample" if temperature > 0 else "greedy", "seed": seed, "batch_rows": rows,
        "tokenizer_sha256": _tokenizer_sha256(teacher_dir),
        "finish_reasons": {r: sum(x["finish_reason"] == r for s in splits.values() for x in s)
                           for r in teacher_samples.FINISH_REASONS},
    }
    return {**teacher_samples.write_samples(out, splits, manifest), "output": os.path.abspath(out)}


def check_arguments(args: argparse.Namespace) -> None:
    """The ``quark data distill`` values a user can get wrong, checked before anything is loaded (ValueError)."""
    from quark_jax.inference.generate import check_generation_args

    for name in ("samples", "validation_samples", "max_new_tokens", "prompt_tokens", "batch_size"):
        value = getattr(args, name)
        if value < 1:
            raise ValueError(f"--{name}={value}: must be >= 1")
    try:
        check_generation_args(args.max_new_tokens, args.temperature, 0, 1.0, 1)
    except ValueError as e:
        raise ValueError(f"--{e}") from None
    runs.resolve(args.teacher_dir, "--teacher_dir")
    out = os.path.expanduser(args.out)
    if os.path.lexists(out) and (not os.path.isdir(out) or os.path.islink(out) or os.listdir(out)):
        raise ValueError(f"--out {args.out} already exists and is not an empty directory; pass a new directory")


def distill_data_main(args: argparse.Namespace) -> int:
    """``quark data distill``: checks the arguments, writes the samples, prints the manifest as one JSON line."""
    check_arguments(args)
    manifest = distill_data(args.teacher_dir, args.out, args.samples, args.validation_samples, args.max_new_tokens,
                            args.temperature, args.seed, args.prompt_tokens, args.batch_size, args.mixture,
                            args.step, progress=not args.no_progress)
    print(json.dumps(manifest))
    print(f"quark data distill: train a draft on it with --gin_file=configs/runs/distill_spec.gin "
          f"--gin.TEACHER_DIR=\"'{manifest['teacher_dir']}'\" --gin.SAMPLES_DIR=\"'{manifest['output']}'\"")
    return 0
