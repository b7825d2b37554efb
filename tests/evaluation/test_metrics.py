"""Metrics against known values (sacreBLEU, rouge-score, lm-eval's acc_norm, Chen et al.'s pass@k) and the bootstrap."""

import math
import random
import time

import numpy as np
import pytest

from quark_jax.evaluation import metrics as m


def test_accuracy_exact_match_and_choose():
    assert m.accuracy([0, 2, 1], [0, 1, 1]) == [1.0, 0.0, 1.0]
    assert m.exact_match(["  42\n", "a b", "X"], ["42", "a  b", "x"]) == [1.0, 0.0, 0.0]
    # acc picks the highest total log-likelihood; acc_norm divides by the choice length in characters.
    lls, choices = [-4.0, -6.0], ["ab", "abcdef"]
    assert m.choose(lls, choices, normalize=False) == 0
    assert m.choose(lls, choices, normalize=True) == 1  # -2.0 per char vs -1.0 per char
    assert m.choose(lls, choices, True) == int(np.argmax(np.array(lls) / np.array([2.0, 6.0])))
    assert m.choose([-1.0, -1.0, -3.0], ["a", "b", "c"], normalize=False) == 0  # ties: the first, like np.argmax
    with pytest.raises(ValueError, match="predictions"):
        m.accuracy([0], [0, 1])


def test_bleu_and_chrf_match_sacrebleu_with_signature():
    import sacrebleu

    hyps = ["the cat sat on the mat", "a quick brown fox jumps"]
    refs = ["the cat is on the mat", "the quick brown fox jumps"]
    out = m.bleu(hyps, refs)
    assert out["score"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert out["signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert m.chrf(hyps, refs)["score"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    assert m.bleu(hyps, hyps)["score"] == pytest.approx(100.0)
    # The bootstrap statistic recomputes the same corpus score from cached per-example statistics.
    assert m.corpus_statistic("bleu")(list(zip(hyps, refs))) == pytest.approx(out["score"])


def test_rouge_with_stemming():
    out = m.rouge(["The cats ran.\nSecond line", "nothing shared"], ["the cat runs", "totally different"])
    assert set(out) == {"rouge1", "rouge2", "rougeL", "rougeLsum"}
    # stemmed unigrams: {the, cat, ran, second, line} vs {the, cat, run}: P 2/5, R 2/3
    assert out["rouge1"][0] == pytest.approx(2 * (2 / 5) * (2 / 3) / (2 / 5 + 2 / 3))
    assert out["rouge1"][1] == 0.0
    assert m.rouge_signature()["use_stemmer"] is True


def test_pass_at_k_is_the_unbiased_estimator():
    for n, c, k in [(10, 3, 1), (10, 3, 5), (20, 0, 3), (20, 20, 3), (7, 2, 7)]:
        expected = 1.0 - (math.comb(n - c, k) / math.comb(n, k))
        assert m.pass_at_k(n, c, k) == pytest.approx(expected)
    assert m.pass_at_k(10, 3, 1) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="at least 5 samples"):
        m.pass_at_k(3, 1, 5)


def test_perplexity_and_bits_per_byte():
    assert m.perplexity(2.0 * 10, 10) == pytest.approx(math.exp(2.0))
    assert m.bits_per_byte(math.log(2) * 8, 8) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        m.perplexity(1.0, 0)


def test_bootstrap_ci_mean_single_and_paired():
    values = [1.0, 0.0] * 50
    low, high = m.bootstrap_ci(values)
    assert low < 0.5 < high and high - low < 0.3
    assert m.bootstrap_ci(values, seed=3) == m.bootstrap_ci(values, seed=3)
    assert m.bootstrap_ci([0.7]) == (0.7, 0.7)
    with pytest.raises(ValueError):
        m.bootstrap_ci([])
    # a is better on every example: the paired interval excludes 0.
    a, b = [1.0] * 30, [0.0] * 25 + [1.0] * 5
    low, high = m.paired_bootstrap(a, b)
    assert 0 < low <= high <= 1


def test_corpus_bleu_bootstrap_is_fast():
    rng = random.Random(0)
    words = "the cat sat on a mat dog ran fast slow big red".split()
    refs = [" ".join(rng.choice(words) for _ in range(15)) for _ in range(100)]
    hyps = [" ".join(w if rng.random() < 0.7 else rng.choice(words) for w in r.split()) for r in refs]
    score = m.bleu(hyps, refs)["score"]
    start = time.perf_counter()
    low, high = m.bootstrap_ci(list(zip(hyps, refs)), m.corpus_statistic("bleu"), resamples=1000)
    assert time.perf_counter() - start < 5.0
    assert low < score < high


def test_registry_and_check_metric():
    assert m.check_metric("acc_norm", "multiple_choice").name == "acc_norm"
    assert m.check_metric("pass@10", "generate_until").name == "pass@k"
    assert m.METRICS["rouge"].expands_to == ("rouge1", "rouge2", "rougeL", "rougeLsum")
    with pytest.raises(ValueError, match=r"metric 'bleu' does not apply to output_type 'multiple_choice' "
                                         r"\(allowed: acc, acc_norm\)"):
        m.check_metric("bleu", "multiple_choice")
    with pytest.raises(ValueError, match="unknown metric 'f1'"):
        m.check_metric("f1", "generate_until")
    for name, info in m.METRICS.items():
        assert info.output_types and set(info.output_types) <= set(m.OUTPUT_TYPES), name
