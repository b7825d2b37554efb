"""The evaluation harness: runs :mod:`~quark_jax.evaluation.tasks` through a loaded model's compiled functions.

Nothing here calls the model once per example: a task's requests (every (context, choice) pair, every rolling
window, every prompt × sample) are collected, sorted by length (fewer shape buckets, less padding) and sent in
batches of ``batch_size`` through :meth:`Generator.score_tokens` or :meth:`Generator.generate_requests`, which
run on whatever mesh the model's parameters live on.

* ``multiple_choice``: each pair is tokenized as lm-evaluation-harness does (trailing whitespace of the context
  moves into the continuation; the continuation's ids are those of ``encode(context + continuation)`` after the
  context's ids; an empty context is the EOS token). ``acc`` = arg-max of the summed log-likelihoods is the
  target (the first index wins ties); ``acc_norm`` divides each log-likelihood by its choice's length in
  characters first.
* ``loglikelihood_rolling``: see :func:`rolling_windows`; ``perplexity`` = exp(total NLL / total tokens),
  ``bits_per_byte`` = total NLL / (ln 2 × total UTF-8 bytes), both over the whole task (token- and
  byte-weighted).
* ``generate_until``: ``samples`` completions per example (sample i with seed ``seed + i``), cut at the first
  ``until`` string; see :func:`score_generations`.
* ``retrieval``: the model as an embedder (:meth:`quark_jax.retrieval.embedder.Embedder.from_loaded`: a
  contrastive run's own pooling and prefixes, else mean pooling) embeds the task's passage pool and each rendered
  query; exact inner-product search ranks the pool; recall@1/@10, MRR and nDCG@10 per query through trec_eval
  (:mod:`quark_jax.retrieval.metrics`). ``target`` names the example field listing the relevant passage ids.

Every figure comes with a percentile bootstrap interval over examples (corpus figures recomputed on each
resample).
"""

from __future__ import annotations

import concurrent.futures
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from jaxtyping import Float

from quark_jax.evaluation import tasks as task_lib
from quark_jax.evaluation.tasks import EvalTask

BOOTSTRAP_RESAMPLES = 1000
DEFAULT_CONTEXT = 2048


# ---- bootstrap -------------------------------------------------------------------------------------------
def _figure(examples: Sequence[Any], statistic: Callable[[Sequence[Any]], float] | None, confidence: float,
            seed: int) -> dict[str, float]:
    """``{"value", "ci_low", "ci_high"}``: ``statistic`` of all examples (the mean of numbers by default) and its
    percentile bootstrap interval (:func:`metrics.bootstrap_ci`, resampling examples)."""
    m = _metrics_module()
    statistic = statistic or m.mean
    value = float(statistic(list(examples)))
    low, high = m.bootstrap_ci(list(examples), statistic, confidence=confidence, resamples=BOOTSTRAP_RESAMPLES,
                               seed=seed)
    return {"value": value, "ci_low": min(low, value), "ci_high": max(high, value)}


# ---- tokenization ----------------------------------------------------------------------------------------
def _prefix_ids(generator: Any) -> list[int]:
    """What a sequence starts with: the vocabulary's ``prompt_prefix_ids`` (an imported Llama's ``<s>``), else
    nothing (the empty-context case then conditions on EOS, lm-eval's ``prefix_token_id``)."""
    return list(getattr(generator.vocabulary, "prompt_prefix_ids", ()) or ())


def encode_pair(generator: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) exactly as lm-evaluation-harness splits a log-likelihood request:
    trailing whitespace of the context moves to the continuation, and the continuation's ids are what follows
    the context's ids in the encoding of the whole string (``start=True``: with the vocabulary's prefix)."""
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    if not context:
        prefix = _prefix_ids(generator) or [generator.eos_id]
        return prefix, list(generator._encode(continuation))
    whole = generator._encode(context + continuation, start=True)
    context_ids = generator._encode(context, start=True)
    return list(context_ids), list(whole[len(context_ids):])


def _fit(context: list[int], continuation: list[int], max_length: int, what: str) -> tuple[list[int], list[int]]:
    """Left-truncates the context so that context + continuation fit ``max_length`` tokens (lm-eval's
    truncation); the continuation itself must fit with one token of context."""
    if not continuation:
        raise ValueError(f"{what}: the continuation is empty after tokenization")
    if len(continuation) >= max_length:
        raise ValueError(f"{what}: the continuation is {len(continuation)} tokens, longer than the model's "
                         f"{max_length}-token context")
    keep = max_length - len(continuation)
    return context[-keep:], continuation


def rolling_windows(tokens: Sequence[int], prefix: Sequence[int], max_length: int
                    ) -> list[tuple[list[int], list[int]]]:
    """(context ids, predicted ids) windows that predict every token of ``tokens`` exactly once.

    The first window predicts the first ``max_length - len(prefix)`` tokens conditioned on ``prefix`` (the
    vocabulary's start ids, else EOS). Each later window predicts the next ``max_length // 2`` tokens (fewer at
    the end) conditioned on the ``max_length - predicted`` tokens just before them, so every token after the
    first window sees at least half a context of history and no window exceeds ``max_length`` tokens. (lm-eval
    calls this scheme ``get_rolling_token_windows`` + ``make_disjoint_window``; its default keeps one token of
    history, ours half the context.)"""
    tokens, prefix = list(tokens), list(prefix)
    if max_length < len(prefix) + 2:
        raise ValueError(f"a context of {max_length} tokens is too short for rolling windows")
    windows = []
    first = min(len(tokens), max_length - len(prefix))
    if first:
        windows.append((prefix, tokens[:first]))
    done, stride = first, max(1, max_length // 2)
    while done < len(tokens):
        predict = min(stride, len(tokens) - done)
        history = max_length - predict
        windows.append((tokens[max(0, done - history): done], tokens[done: done + predict]))
        done += predict
    return windows


# ---- batched model calls ---------------------------------------------------------------------------------
def _progress(total: int, description: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit="batch", disable=not enabled, dynamic_ncols=True, leave=False)


def score_pairs(generator: Any, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], batch_size: int,
                progress: bool = False, description: str = "score") -> list[Float[np.ndarray, "tokens"]]:
    """Per-token log-probabilities of each (context ids, continuation ids) pair, in batches of ``batch_size``
    (longest first, as lm-eval orders them, so a batch holds similar lengths)."""
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    out: list[Any] = [None] * len(pairs)
    batches = [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
    with _progress(len(batches), description, progress) as bar:
        for batch in batches:
            scores = generator.score_tokens([pairs[i][0] for i in batch], [pairs[i][1] for i in batch])
            for i, s in zip(batch, scores):
                out[i] = np.asarray(s, np.float64)
            bar.update(1)
    return out


def _cut(text: str, until: Sequence[str]) -> str:
    cuts = [text.find(s) for s in until if s and s in text]
    return text[: min(cuts)] if cuts else text


def generate_texts(generator: Any, prompts: Sequence[str], seeds: Sequence[int], max_tokens: int,
                   temperature: float, until: Sequence[str], max_length: int, batch_size: int,
                   progress: bool = False, description: str = "generate") -> list[str]:
    """One completion per (prompt, seed), cut at the first ``until`` string, in batches (longest prompt
    first). Prompts longer than ``max_length - max_tokens`` tokens keep their last tokens."""
    from quark_jax.inference.generate import Request

    stop_ids = [list(generator._encode(s)) for s in until if s]
    stop_ids = [s for s in stop_ids if s]
    keep = max_length - max_tokens
    if keep < 1:
        raise ValueError(f"max_tokens={max_tokens} leaves no room for a prompt in a {max_length}-token context")
    requests = []
    for prompt, seed in zip(prompts, seeds):
        ids = list(generator._encode(prompt, start=True))[-keep:]
        requests.append(Request(ids, max_tokens, float(temperature), 0, 1.0, int(seed) % 2**32, stop_ids))
    order = sorted(range(len(requests)), key=lambda i: -len(requests[i].prompt))
    texts: list[str] = [""] * len(requests)
    batches = [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
    with _progress(len(batches), description, progress) as bar:
        for batch in batches:
            for i, completion in zip(batch, generator.generate_requests([requests[i] for i in batch])):
                texts[i] = _cut(generator.vocabulary.decode(completion.tokens), until)
            bar.update(1)
    return texts


# ---- per-task evaluation -----------------------------------------------------------------------------------
def _metrics_module():
    from quark_jax.evaluation import metrics

    return metrics


def context_length(model: Any) -> int:
    return int(getattr(model, "trained_context", None) or getattr(model.generator, "max_context", None)
               or DEFAULT_CONTEXT)


def evaluate_multiple_choice(model: Any, task: EvalTask, examples: list[dict], batch_size: int, progress: bool,
                             confidence: float, seed: int) -> dict[str, Any]:
    """acc / acc_norm of a ``multiple_choice`` task (see the module docstring)."""
    m = _metrics_module()
    generator, max_length = model.generator, context_length(model)
    pairs = []
    for example in examples:
        context = task_lib.render_prompt(task, example)
        for choice in example[task.choices]:
            ctx, cont = encode_pair(generator, context, task.target_delimiter + choice)
            pairs.append(_fit(ctx, cont, max_length, f"{task.data}:{example['_line']}"))
    scores = score_pairs(generator, pairs, batch_size, progress, task.task)
    records, per_metric = [], {name: [] for name in task.metrics}
    position = 0
    for index, example in enumerate(examples):
        choices = example[task.choices]
        lls = [float(s.sum()) for s in scores[position: position + len(choices)]]
        position += len(choices)
        gold = task_lib.gold_index(task, example)
        pred = m.choose(lls, choices, False)
        pred_norm = m.choose(lls, choices, True)
        values = {"acc": float(pred == gold), "acc_norm": float(pred_norm == gold)}
        for name in task.metrics:
            per_metric[name].append(values[name])
        records.append({"line": example["_line"], "prompt": task_lib.render_prompt(task, example), "choices": choices,
                        "target": gold, "loglikelihoods": lls, "prediction": pred, "prediction_norm": pred_norm,
                        "metrics": {k: values[k] for k in task.metrics}})
    metrics = {name: _figure(per_metric[name], None, confidence, seed) for name in task.metrics}
    return {"metrics": metrics, "samples": records}


def evaluate_rolling(model: Any, task: EvalTask, examples: list[dict], batch_size: int, progress: bool,
                     confidence: float, seed: int) -> dict[str, Any]:
    """perplexity / bits_per_byte of a ``loglikelihood_rolling`` task (see :func:`rolling_windows`)."""
    generator, max_length = model.generator, context_length(model)
    prefix = _prefix_ids(generator) or [generator.eos_id]
    pairs, owners = [], []
    for index, example in enumerate(examples):
        tokens = generator._encode(example[task.text])
        for window in rolling_windows(tokens, prefix, max_length):
            pairs.append(window)
            owners.append(index)
    scores = score_pairs(generator, pairs, batch_size, progress, task.task)
    nll = np.zeros(len(examples))
    counts = np.zeros(len(examples))
    for index, s in zip(owners, scores):
        nll[index] -= s.sum()
        counts[index] += s.size
    nbytes = np.array([len(example[task.text].encode("utf-8")) for example in examples], np.float64)
    m = _metrics_module()
    figures: dict[str, Callable[[Sequence[int]], float]] = {
        "perplexity": lambda idx: m.perplexity(float(nll[idx].sum()), int(counts[idx].sum())),
        "bits_per_byte": lambda idx: m.bits_per_byte(float(nll[idx].sum()), int(nbytes[idx].sum())),
    }
    metrics = {}
    for name in task.metrics:
        if name not in figures:
            raise ValueError(f"{task.path}: metric {name!r} is not computed for loglikelihood_rolling tasks")
        metrics[name] = _figure(list(range(len(examples))), lambda idx, f=figures[name]: f(np.asarray(idx)),
                                confidence, seed)
    records = [{"line": ex["_line"], "text": ex[task.text][:200], "loglikelihood": -float(nll[i]),
                "tokens": int(counts[i]), "bytes": int(nbytes[i]),
                "metrics": {"perplexity": m.perplexity(float(nll[i]), int(counts[i])),
                            "bits_per_byte": m.bits_per_byte(float(nll[i]), int(nbytes[i]))}}
               for i, ex in enumerate(examples)]
    return {"metrics": metrics, "samples": records}


def _run_tests(jobs: list[tuple[str, str]], timeout_s: float) -> list[Any]:
    """Sandbox results of (program, tests) jobs, a few at a time (each is its own subprocess)."""
    from quark_jax.evaluation import sandbox

    workers = max(1, min(len(jobs), os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda job: sandbox.run_tests(job[0], job[1], timeout_s=timeout_s), jobs))


def score_generations(task: EvalTask, examples: list[dict], predictions: list[list[str]], confidence: float = 0.95,
                      seed: int = 0, test_timeout_s: float = 10.0) -> dict[str, Any]:
    """The metrics of a ``generate_until`` task given its completions: ``predictions[i]`` holds the
    ``samples`` completions of ``examples[i]``.

    * ``exact_match``: completion == target after stripping surrounding whitespace (mean over samples).
    * ``rouge``: ROUGE-1/2/L/Lsum F-measures (rouge-score, Porter stemming), reported as ``rouge1``,
      ``rouge2``, ``rougeL``, ``rougeLsum`` (mean over samples, then over examples).
    * ``bleu`` / ``chrf``: sacreBLEU corpus figures (0-100) over the first sample of each example (the interval
      resamples examples and recomputes the corpus figure); their signatures go to ``signatures``.
    * ``pass@k`` (code tasks): ``prompt + completion`` run with the example's ``tests`` in the sandbox; per
      example the unbiased estimator 1 - C(n-c, k) / C(n, k) with n samples of which c passed, averaged.
    """
    m = _metrics_module()
    n = len(examples)
    prompts = [task_lib.render_prompt(task, ex) for ex in examples]
    targets = [str(ex[task.target]) if task.target else None for ex in examples]
    per_example: dict[str, list[float]] = {}
    corpus: dict[str, tuple[list, Callable]] = {}
    tests_passed: list[list[bool]] | None = None
    statuses: list[list[str]] | None = None

    if any(name.startswith("pass@") for name in task.metrics):
        jobs = [(prompts[i] + prediction, str(examples[i][task.tests]))
                for i in range(n) for prediction in predictions[i]]
        results = iter(_run_tests(jobs, test_timeout_s))
        tests_passed, statuses = [], []
        for i in range(n):
            rs = [next(results) for _ in predictions[i]]
            tests_passed.append([bool(r.passed) for r in rs])
            statuses.append([str(getattr(r, "status", "")) for r in rs])

    signatures: dict[str, Any] = {}
    for name in task.metrics:
        if name == "exact_match":
            scores = [m.exact_match(predictions[i], [targets[i]] * len(predictions[i])) for i in range(n)]
            per_example[name] = [float(np.mean(s)) for s in scores]
        elif name == "rouge":
            scores = [m.rouge(predictions[i], [targets[i]] * len(predictions[i])) for i in range(n)]
            for key in m.ROUGE_TYPES:
                per_example[key] = [float(np.mean(s[key])) for s in scores]
            signatures[name] = m.rouge_signature()
        elif name in ("bleu", "chrf"):
            pairs = [(predictions[i][0], targets[i]) for i in range(n)]
            corpus[name] = (pairs, m.corpus_statistic(name))
            signatures[name] = (m.bleu if name == "bleu" else m.chrf)([p for p, _ in pairs],
                                                                      [r for _, r in pairs])["signature"]
        elif name.startswith("pass@"):
            k = int(name.split("@", 1)[1])
            if k > task.samples:
                raise ValueError(f"{task.path}: {name} needs samples >= {k} (the task draws {task.samples})")
            per_example[name] = [m.pass_at_k(len(p), sum(p), k) for p in tests_passed]
        else:
            raise ValueError(f"{task.path}: metric {name!r} is not computed for generate_until tasks")

    metrics = {name: _figure(values, None, confidence, seed) for name, values in per_example.items()}
    metrics.update({name: _figure(pairs, statistic, confidence, seed) for name, (pairs, statistic) in corpus.items()})
    records = []
    for i, example in enumerate(examples):
        record = {"line": example["_line"], "prompt": prompts[i], "target": targets[i], "predictions": predictions[i],
                  "metrics": {name: values[i] for name, values in per_example.items()}}
        if tests_passed is not None:
            record["tests_passed"], record["test_status"] = tests_passed[i], statuses[i]
        records.append(record)
    return {"metrics": metrics, "samples": records, **({"signatures": signatures} if signatures else {})}


def evaluate_generation(model: Any, task: EvalTask, examples: list[dict], batch_size: int, progress: bool,
                        confidence: float, seed: int) -> dict[str, Any]:
    """Generates ``samples`` completions per example (sample i with seed ``seed + i``) and scores them."""
    prompts = [task_lib.render_prompt(task, ex) for ex in examples]
    flat_prompts = [p for p in prompts for _ in range(task.samples)]
    seeds = [seed + i for _ in prompts for i in range(task.samples)]
    texts = generate_texts(model.generator, flat_prompts, seeds, task.max_tokens, task.temperature, task.until,
                           context_length(model), batch_size, progress, task.task)
    predictions = [texts[i * task.samples: (i + 1) * task.samples] for i in range(len(examples))]
    return score_generations(task, examples, predictions, confidence, seed)


MAX_PASSAGES_BYTES = 256 * 2**20


def read_passages(path: str) -> list[dict]:
    """A retrieval task's passage pool: ``{"id", "text"}`` per JSONL line; errors name the file and line."""
    from quark_jax.data.jsonl import iter_jsonl

    passages, seen = [], set()
    for number, record in iter_jsonl(path, MAX_PASSAGES_BYTES):
        if not isinstance(record, dict) or not isinstance(record.get("id"), str) or \
                not isinstance(record.get("text"), str):
            raise ValueError(f"{path}:{number}: a passage needs a string 'id' and a string 'text'")
        if record["id"] in seen:
            raise ValueError(f"{path}:{number}: passage id {record['id']!r} appears twice")
        seen.add(record["id"])
        passages.append(record)
    if not passages:
        raise ValueError(f"{path}: no passages")
    return passages


def evaluate_retrieval(model: Any, task: EvalTask, examples: list[dict], batch_size: int, progress: bool,
                       confidence: float, seed: int, model_dir: str | None = None) -> dict[str, Any]:
    """Ranks the task's passage pool for each query with the model's embeddings and scores the rankings."""
    from quark_jax.retrieval import dense
    from quark_jax.retrieval import metrics as retrieval_metrics
    from quark_jax.retrieval.embedder import Embedder

    passages = read_passages(task.passages)
    known = {p["id"] for p in passages}
    qrels = {}
    for i, example in enumerate(examples):
        relevant = example[task.target]
        relevant = [relevant] if isinstance(relevant, str) else relevant
        if not isinstance(relevant, list) or not relevant or not all(isinstance(r, str) for r in relevant):
            raise ValueError(f"{task.data}:{example['_line']}: {task.target!r} must list relevant passage ids")
        missing = [r for r in relevant if r not in known]
        if missing:
            raise ValueError(f"{task.data}:{example['_line']}: relevant passage {missing[0]!r} is not in "
                             f"{task.passages}")
        qrels[str(i)] = {r: 1 for r in relevant}
    embedder = Embedder.from_loaded(model, model_dir, batch_size=batch_size)
    vectors = embedder.embed([p["text"] for p in passages], kind="passage")
    queries = embedder.embed([task_lib.render_prompt(task, ex) for ex in examples], kind="query")
    rows, scores = dense.exact_search(vectors, queries, k=min(100, len(passages)))
    run = {str(i): {passages[r]["id"]: float(s) for r, s in zip(rows[i], scores[i]) if r >= 0}
           for i in range(len(examples))}
    figures = retrieval_metrics.per_query(qrels, run)
    per_example = [figures[str(i)] for i in range(len(examples))]
    metrics = {name: _figure([f[name] for f in per_example], None, confidence, seed) for name in task.metrics}
    samples = [{"query": task_lib.render_prompt(task, ex), "relevant": sorted(qrels[str(i)]),
                "top": [passages[r]["id"] for r in rows[i][:10] if r >= 0], **per_example[i]}
               for i, ex in enumerate(examples)]
    return {"metrics": metrics, "samples": samples, "passages": len(passages), "embedder": embedder.identity}


_BY_OUTPUT_TYPE = {
    "multiple_choice": evaluate_multiple_choice,
    "loglikelihood_rolling": evaluate_rolling,
    "generate_until": evaluate_generation,
    "retrieval": evaluate_retrieval,
}


def evaluate(model: Any, tasks: str | EvalTask | Sequence[EvalTask | str], batch_size: int = 16,
             limit: int | None = None, progress: bool = True, seed: int = 0, confidence: float = 0.95,
             model_dir: str | None = None) -> dict[str, Any]:
    """Evaluates ``model`` (a ``quark_jax.load`` result, or anything with ``.generator``, ``.step`` and
    ``.trained_context``) on ``tasks`` (:class:`EvalTask`\\ s, YAML paths, names, or a :func:`find_tasks` spec).

    Returns ``{"model_dir", "step", "tasks": {name: {"output_type", "n", "metrics": {metric: {"value",
    "ci_low", "ci_high"}}, "samples": [...]}}, "config": {...}, "seconds"}``. The same model, tasks and
    ``seed`` give the same results."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be >= 1")
    if limit is not None and limit < 1:
        raise ValueError(f"limit={limit}: must be >= 1 (or None for every example)")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence}: must be in (0, 1)")
    if isinstance(tasks, (str, EvalTask)):
        tasks = [tasks]
    resolved: list[EvalTask] = []
    for t in tasks:
        resolved.extend([t] if isinstance(t, EvalTask) else task_lib.find_tasks(t))
    start = time.perf_counter()
    results: dict[str, Any] = {}
    for task in resolved:
        examples = task_lib.load_examples(task, limit)
        task_start = time.perf_counter()
        run = _BY_OUTPUT_TYPE[task.output_type]
        extra = {"model_dir": model_dir or getattr(model, "model_dir", None)} if task.output_type == "retrieval" else {}
        out = run(model, task, examples, batch_size, progress, confidence, seed, **extra)
        results[task.task] = {"output_type": task.output_type, "n": len(examples), "domain": task.domain,
                              "description": task.description, "path": task.path,
                              "seconds": time.perf_counter() - task_start, **out}
    return {
        "model_dir": model_dir or getattr(model, "model_dir", None),
        "step": int(getattr(model, "step", 0) or 0),
        "tasks": results,
        "config": {"batch_size": batch_size, "limit": limit, "seed": seed, "confidence": confidence,
                   "bootstrap_resamples": BOOTSTRAP_RESAMPLES, "max_length": context_length(model),
                   "tasks": [t.path for t in resolved]},
        "seconds": time.perf_counter() - start,
    }
