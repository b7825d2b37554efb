"""Evaluation metrics, each from the library people trust, plus bootstrap confidence intervals.

Per-example metrics return one value per example (the caller averages); corpus metrics (BLEU, chrF) return the
corpus score and the library's signature. Every figure gets a confidence interval from :func:`bootstrap_ci`,
which resamples *examples*: for a corpus metric pass ``(hypothesis, reference)`` pairs and
``corpus_statistic("bleu")`` as the statistic, so each resample recomputes the corpus score (the way sacreBLEU's
own bootstrap does), not an average of sentence scores.

Definitions follow lm-evaluation-harness 0.4 where it defines the metric:

* ``acc``: 1 when the choice with the highest total log-likelihood is the gold one.
* ``acc_norm``: the same with each choice's log-likelihood divided by the length **in characters** of the
  choice text as the task lists it (lm-eval's ``doc_to_choice`` string, without the target delimiter, i.e.
  ``np.argmax(lls / [len(c) for c in choices])``). See :func:`choose`.
* ``perplexity``: ``exp(total negative log-likelihood in nats / tokens)``.
* ``bits_per_byte``: ``total negative log-likelihood in nats / ln 2 / UTF-8 bytes`` (lm-eval's
  ``-weighted_mean(loglikelihood, bytes) / log(2)``).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

OUTPUT_TYPES = ("multiple_choice", "loglikelihood_rolling", "generate_until", "retrieval")


# ----------------------------------------------------------------------------------------------- classification
def choose(loglikelihoods: Sequence[float], choices: Sequence[str], normalize: bool) -> int:
    """Index of the predicted choice: argmax of the log-likelihoods (``acc``) or, with ``normalize``, of each
    log-likelihood divided by ``len(choice)`` in characters (``acc_norm``, as lm-evaluation-harness 0.4 defines it:
    the choice text as listed, without the delimiter that precedes it in the scored continuation).

    Ties pick the first index, like ``np.argmax``. A choice of length 0 cannot be normalised (ValueError).
    """
    if len(loglikelihoods) != len(choices):
        raise ValueError(f"{len(loglikelihoods)} log-likelihoods for {len(choices)} choices")
    if not choices:
        raise ValueError("no choices to choose from")
    lls = np.asarray(loglikelihoods, dtype=np.float64)
    if normalize:
        lengths = np.array([float(len(c)) for c in choices])
        if np.any(lengths == 0):
            raise ValueError("acc_norm needs non-empty choice texts (a choice has length 0)")
        lls = lls / lengths
    return int(np.argmax(lls))


def accuracy(predictions: Sequence[int], golds: Sequence[int]) -> list[float]:
    """Per-example 1.0/0.0: whether each predicted index equals the gold index (average for ``acc``)."""
    _same_length(predictions, golds, "predictions", "golds")
    return [1.0 if int(p) == int(g) else 0.0 for p, g in zip(predictions, golds)]


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """Per-example 1.0/0.0: whether the prediction equals the reference after stripping whitespace at both ends
    of both (``str.strip()``); nothing else is normalised (case and inner whitespace count)."""
    _same_length(predictions, references, "predictions", "references")
    return [1.0 if p.strip() == r.strip() else 0.0 for p, r in zip(predictions, references)]


# -------------------------------------------------------------------------------------------- sacreBLEU metrics
def _sacrebleu_metric(name: str, **options: Any):
    from sacrebleu.metrics import BLEU, CHRF

    if name == "bleu":
        return BLEU(**options)
    if name == "chrf":
        return CHRF(**options)
    raise ValueError(f"unknown corpus metric {name!r} (known: bleu, chrf)")


def _reference_streams(references: Sequence[str | Sequence[str]]) -> list[list[str]]:
    """sacreBLEU's layout (one stream per reference slot) from one reference, or a list of them, per example."""
    if not references:
        raise ValueError("no references")
    per_example = [[r] if isinstance(r, str) else list(r) for r in references]
    counts = {len(r) for r in per_example}
    if len(counts) != 1 or 0 in counts:
        raise ValueError("every example needs the same number (>= 1) of references")
    return [list(stream) for stream in zip(*per_example)]


def _corpus_score(name: str, hypotheses: Sequence[str], references: Sequence[str | Sequence[str]],
                  **options: Any) -> dict[str, Any]:
    _same_length(hypotheses, references, "hypotheses", "references")
    if not hypotheses:
        raise ValueError("no hypotheses")
    metric = _sacrebleu_metric(name, **options)
    score = metric.corpus_score(list(hypotheses), _reference_streams(references))
    return {"score": float(score.score), "signature": str(metric.get_signature())}


def bleu(hypotheses: Sequence[str], references: Sequence[str | Sequence[str]], **options: Any) -> dict[str, Any]:
    """Corpus BLEU with sacreBLEU (default 13a tokenisation, exponential smoothing, mixed case).

    ``references`` holds one reference string (or a list of them, the same count for all) per hypothesis.
    ``options`` go to ``sacrebleu.metrics.BLEU``. Returns ``{"score": 0..100, "signature": "nrefs:1|case:mixed|..."}``.
    """
    return _corpus_score("bleu", hypotheses, references, **options)


def chrf(hypotheses: Sequence[str], references: Sequence[str | Sequence[str]], **options: Any) -> dict[str, Any]:
    """Corpus chrF with sacreBLEU (character 6-grams, beta 2; ``word_order=2`` in ``options`` gives chrF++).

    Same arguments and result as :func:`bleu`.
    """
    return _corpus_score("chrf", hypotheses, references, **options)


class _CorpusStatistic:
    """A statistic over ``(hypothesis, reference)`` examples computing a sacreBLEU corpus score, for the bootstrap.

    Each distinct example's sufficient statistics (n-gram matches and lengths) are extracted once and cached;
    a resample sums the cached rows and scores the sum, which equals rescoring the resampled corpus.
    """

    def __init__(self, name: str, **options: Any):
        self.name = name
        self.metric = _sacrebleu_metric(name, **options)
        self._rows: dict[tuple, np.ndarray] = {}

    def _row(self, example: tuple) -> np.ndarray:
        key = (example[0], example[1] if isinstance(example[1], str) else tuple(example[1]))
        row = self._rows.get(key)
        if row is None:
            refs = [key[1]] if isinstance(key[1], str) else list(key[1])
            stats = self.metric._extract_corpus_statistics([key[0]], [[r] for r in refs])
            row = self._rows[key] = np.asarray(stats[0], dtype=np.float64)
        return row

    def __call__(self, examples: Sequence[tuple]) -> float:
        total = np.sum([self._row(e) for e in examples], axis=0)
        return float(self.metric._compute_score_from_stats(total).score)


def corpus_statistic(name: str, **options: Any) -> Callable[[Sequence[tuple]], float]:
    """A statistic for :func:`bootstrap_ci`: corpus ``"bleu"`` or ``"chrf"`` of a list of ``(hyp, ref)`` pairs.

    ``bootstrap_ci(list(zip(hyps, refs)), statistic=corpus_statistic("bleu"))`` gives the corpus BLEU interval
    (1000 resamples of 100 examples take well under a second: per-example statistics are cached).
    """
    return _CorpusStatistic(name, **options)


# ---------------------------------------------------------------------------------------------------- ROUGE
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def rouge_signature() -> dict[str, Any]:
    """How :func:`rouge` scores, for reports next to the figures."""
    import importlib.metadata

    try:
        version = importlib.metadata.version("rouge_score")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        version = "unknown"
    return {"library": f"rouge_score {version}", "use_stemmer": True, "stemmer": "porter", "measure": "fmeasure",
            "rougeLsum_sentences": "newline-split", "tokenizer": "rouge_score default (lowercase, [a-z0-9] tokens)"}


def rouge(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, list[float]]:
    """Per-example ROUGE F-measures (``rouge1``, ``rouge2``, ``rougeL``, ``rougeLsum``) with Google's
    ``rouge_score`` and **Porter stemming** (``use_stemmer=True``); average them per key.

    ``rougeLsum`` treats each line as a sentence (summary-level LCS over newline-split sentences); a text without
    newlines is one sentence, so then it equals ``rougeL``. No sentence splitter is applied (that would need NLTK's
    punkt data). :func:`rouge_signature` states these settings.
    """
    _same_length(hypotheses, references, "hypotheses", "references")
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    out: dict[str, list[float]] = {k: [] for k in ROUGE_TYPES}
    for hyp, ref in zip(hypotheses, references):
        scores = scorer.score(ref, hyp)  # rouge_score's order is (target, prediction)
        for k in ROUGE_TYPES:
            out[k].append(float(scores[k].fmeasure))
    return out


# ------------------------------------------------------------------------------------ code and language modelling
def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k estimator of Chen et al. 2021 ("Evaluating Large Language Models Trained on Code").

    With ``n`` samples of which ``c`` pass: ``pass@k = 1 - C(n - c, k) / C(n, k)``, computed stably as
    ``1 - prod_{i = n - c + 1}^{n} (1 - k / i)`` (1.0 when ``n - c < k``). Average over problems.
    ``n < k`` (too few samples) raises ValueError.
    """
    if k < 1:
        raise ValueError(f"pass@k needs k >= 1 (got {k})")
    if n < k:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem (got n={n})")
    if not 0 <= c <= n:
        raise ValueError(f"pass@k: c={c} correct samples out of n={n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def perplexity(total_nll_nats: float, tokens: int) -> float:
    """``exp(total_nll_nats / tokens)``: token-level perplexity from the summed negative log-likelihood."""
    if tokens <= 0:
        raise ValueError(f"perplexity needs tokens > 0 (got {tokens})")
    return float(math.exp(total_nll_nats / tokens))


def bits_per_byte(total_nll_nats: float, num_bytes: int) -> float:
    """``total_nll_nats / ln 2 / num_bytes`` (UTF-8 bytes of the scored text), as lm-evaluation-harness defines it."""
    if num_bytes <= 0:
        raise ValueError(f"bits_per_byte needs num_bytes > 0 (got {num_bytes})")
    return float(total_nll_nats / math.log(2) / num_bytes)


# ------------------------------------------------------------------------------------------------- bootstrap
def mean(values: Sequence[float]) -> float:
    """Arithmetic mean (the default bootstrap statistic)."""
    return float(np.mean(np.asarray(values, dtype=np.float64)))


def bootstrap_ci(values_or_examples: Sequence[Any], statistic: Callable[[Sequence[Any]], float] = mean,
                 confidence: float = 0.95, resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over examples.

    Draws ``resamples`` samples of the examples with replacement (``numpy.random.default_rng(seed)``), applies
    ``statistic`` (any function of a list of examples; :func:`mean` of numbers by default, vectorised) to each and
    returns the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` percentiles. One example gives
    ``(value, value)``; no examples, ValueError.
    """
    items = list(values_or_examples)
    if not items:
        raise ValueError("bootstrap_ci needs at least one example")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1) (got {confidence})")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1 (got {resamples})")
    if len(items) == 1:
        value = float(statistic(items))
        return value, value
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(items), size=(resamples, len(items)))
    if statistic is mean:
        stats = np.asarray(items, dtype=np.float64)[idx].mean(axis=1)
    else:
        stats = np.array([statistic([items[i] for i in row]) for row in idx], dtype=np.float64)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.percentile(stats, [100 * alpha, 100 * (1 - alpha)])
    return float(low), float(high)


def paired_bootstrap(a_values: Sequence[float], b_values: Sequence[float], confidence: float = 0.95,
                     resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``mean(a - b)`` for two models scored on the same examples (paired: each
    resample draws the same examples for both). An interval excluding 0 means a difference at that confidence."""
    _same_length(a_values, b_values, "a_values", "b_values")
    diffs = (np.asarray(a_values, dtype=np.float64) - np.asarray(b_values, dtype=np.float64)).tolist()
    return bootstrap_ci(diffs, mean, confidence=confidence, resamples=resamples, seed=seed)


# -------------------------------------------------------------------------------------------------- registry
@dataclasses.dataclass(frozen=True)
class MetricInfo:
    """What a metric name in a task YAML means and where it applies."""

    name: str
    description: str
    output_types: tuple[str, ...]
    expands_to: tuple[str, ...] = ()  # the reported keys when one name gives several figures (rouge)


_MC, _ROLL, _GEN, _RET = ("multiple_choice",), ("loglikelihood_rolling",), ("generate_until",), ("retrieval",)
METRICS: dict[str, MetricInfo] = {m.name: m for m in [
    MetricInfo("acc", "accuracy: the choice with the highest log-likelihood is the gold one", _MC),
    MetricInfo("acc_norm", "accuracy with log-likelihoods divided by the choice's length in characters (lm-eval)",
               _MC),
    MetricInfo("exact_match", "generation equals the reference after stripping surrounding whitespace", _GEN),
    MetricInfo("bleu", "corpus BLEU (sacreBLEU, 13a tokenisation), with its signature", _GEN),
    MetricInfo("chrf", "corpus chrF (sacreBLEU), with its signature", _GEN),
    MetricInfo("rouge", "ROUGE-1/2/L/Lsum F-measure (rouge_score, Porter stemming)", _GEN, ROUGE_TYPES),
    MetricInfo("pass@1", "share of problems whose generated code passes its tests (sandboxed), unbiased estimator",
               _GEN),
    MetricInfo("pass@k", "unbiased pass@k (Chen et al. 2021), k from the task's samples per problem", _GEN),
    MetricInfo("perplexity", "exp(negative log-likelihood per token) of the whole text", _ROLL),
    MetricInfo("bits_per_byte", "negative log-likelihood in bits per UTF-8 byte of the text (lm-eval)", _ROLL),
    MetricInfo("recall@1", "share of a query's relevant passages ranked first (trec_eval via pytrec_eval)", _RET),
    MetricInfo("recall@10", "share of a query's relevant passages in the top 10 (trec_eval)", _RET),
    MetricInfo("mrr", "mean reciprocal rank of the first relevant passage (trec_eval recip_rank)", _RET),
    MetricInfo("ndcg@10", "normalised discounted cumulative gain at 10 (trec_eval ndcg_cut_10)", _RET),
]}

_PASS_AT = re.compile(r"pass@(\d+)$")


def metric_info(name: str) -> MetricInfo:
    """The registry entry for ``name``; ``pass@N`` (any N >= 1) resolves to ``pass@1`` or ``pass@k``."""
    if name in METRICS:
        return METRICS[name]
    match = _PASS_AT.match(name)
    if match and int(match.group(1)) >= 1:
        return METRICS["pass@k"]
    raise ValueError(f"unknown metric {name!r} (known: {', '.join(METRICS)})")


def check_metric(name: str, output_type: str) -> MetricInfo:
    """Raise ValueError (one line naming the metric and the allowed ones) unless ``name`` applies to
    ``output_type``; return its :class:`MetricInfo`."""
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"unknown output_type {output_type!r} (known: {', '.join(OUTPUT_TYPES)})")
    info = metric_info(name)
    if output_type not in info.output_types:
        allowed = [m.name for m in METRICS.values() if output_type in m.output_types]
        raise ValueError(f"metric {name!r} does not apply to output_type {output_type!r} "
                         f"(allowed: {', '.join(allowed)})")
    return info


def _same_length(a: Sequence[Any], b: Sequence[Any], a_name: str, b_name: str) -> None:
    if len(a) != len(b):
        raise ValueError(f"{len(a)} {a_name} but {len(b)} {b_name}")
