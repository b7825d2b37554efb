"""The standard-library retrieval benchmark, BEIR-style: BM25, dense with an untrained embedder, dense after
contrastive training, and hybrid, on queries held out by module.

    python bench/retrieval.py [--base_dir RUN | --pretrain_steps 300] [--embed_steps 300] [--max_queries N]

1. A base model: ``--base_dir`` (a pre-trained run), else the tiny model pre-trained here for
   ``--pretrain_steps`` (configs/runs/tiny_base.gin).
2. The trained embedder: ``configs/runs/embed.gin`` (InfoNCE, in-batch negatives) from the base for
   ``--embed_steps`` on the train split's pairs (:mod:`quark_jax.data.retrieval_pairs`).
3. For each task (``code``: docstring summary → function source with its docstrings removed; ``docs``: API
   question → docstring), :func:`quark_jax.data.retrieval_pairs.benchmark` gives the validation split's queries
   (modules never trained on, neither in pre-training nor in the contrastive run) and a pool of every passage of
   the task from both splits. Each method searches the whole pool through :class:`quark_jax.retrieval.index.
   Index`: ``bm25`` (lexical part), ``dense_untrained`` (the base run, mean pooling, same prefixes),
   ``dense_trained`` (the contrastive run), ``hybrid`` (BM25 and the trained dense part fused by reciprocal rank
   fusion, c = 60, equal weights: the paper's form) and ``hybrid_weighted`` (the lexical list's RRF weight
   chosen from ``WEIGHTS`` by nDCG@10 on ``--tune_queries`` queries of the *train* split, searched in the same
   pool; the reported queries never take part in the choice).

Metrics through trec_eval (:mod:`quark_jax.retrieval.metrics`): recall@1, recall@10, MRR, nDCG@10. Prints ONE
JSON line with the table, the sizes, the base and embedder runs' validation figures and timings.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ("bm25", "dense_untrained", "dense_trained", "hybrid", "hybrid_weighted")
WEIGHTS = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)  # RRF weight of the lexical list (the dense list's is 1)


def _train(gin_file: str, model_dir: str, steps: int, extra: list[str]) -> dict:
    import quark_jax as qj

    overrides = [f"MODEL_DIR={model_dir!r}", f"TRAIN_STEPS={steps}", f"CHECKPOINT_PERIOD={steps}",
                 "quark_jax.TrainConfig.sample_prompts=()", "quark_jax.TrainConfig.progress_bar=False",
                 "quark_jax.TrainConfig.peak_flops_per_s=1e11", *extra]
    return qj.Trainer.from_gin(os.path.join(REPO, gin_file), overrides).run()


def _figures(queries, hits) -> dict:
    from quark_jax.retrieval.metrics import evaluate, run_from_ranking

    qrels = {q.id: {pid: 1 for pid in q.relevant} for q in queries}
    run = {q.id: run_from_ranking(h) for q, h in zip(queries, hits)}
    return {m: round(v, 4) for m, v in evaluate(qrels, run).items()}


def _evaluate(index, queries, mode: str, k: int) -> dict:
    start = time.perf_counter()
    hits = index.search_batch([q.text for q in queries], k=k, mode=mode)
    seconds = time.perf_counter() - start
    return {**_figures(queries, hits), "queries_per_s": round(len(queries) / seconds, 1)}


def _weighted_hybrid(index, tune, queries, k: int) -> dict:
    """RRF with the lexical weight that gives the best nDCG@10 on the ``tune`` queries, applied to ``queries``."""
    from quark_jax.retrieval.hybrid import fuse_hits

    def lists(qs):
        texts = [q.text for q in qs]
        return index.search_batch(texts, k=k, mode="lexical"), index.search_batch(texts, k=k, mode="dense")

    def fused(pair, weight):
        return [fuse_hits([lex, den], k, weights=(weight, 1.0)) for lex, den in zip(*pair)]

    tune_lists = lists(tune)
    scores = {w: _figures(tune, fused(tune_lists, w))["ndcg@10"] for w in WEIGHTS}
    best = max(WEIGHTS, key=lambda w: (scores[w], -w))
    return {**_figures(queries, fused(lists(queries), best)), "lexical_weight": best,
            "tune_ndcg@10": {str(w): v for w, v in scores.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base_dir", default=None, help="a pre-trained run (default: pre-train the tiny model here)")
    parser.add_argument("--pretrain_steps", type=int, default=300)
    parser.add_argument("--embed_dir", default=None, help="a contrastive run from the base (default: train it here)")
    parser.add_argument("--embed_steps", type=int, default=300)
    parser.add_argument("--tasks", default="code,docs")
    parser.add_argument("--max_queries", type=int, default=None, help="queries per task (default: all)")
    parser.add_argument("--k", type=int, default=100, help="depth of each ranking (and of the fusion)")
    parser.add_argument("--tune_queries", type=int, default=300, help="train-split queries that choose the weight")
    parser.add_argument("--work_dir", default=None, help="keep runs and indexes here (default: a temporary dir)")
    args = parser.parse_args()

    import quark_jax as qj
    from quark_jax.data import retrieval_pairs
    from quark_jax.retrieval.embedder import Embedder
    from quark_jax.retrieval.index import Index

    started = time.perf_counter()
    work = args.work_dir or tempfile.mkdtemp(prefix="retrieval_bench_")
    timings, runs = {}, {}
    base = args.base_dir
    if base is None:
        base = os.path.join(work, "pretrain")
        t = time.perf_counter()
        summary = _train("configs/runs/tiny_base.gin", base, args.pretrain_steps, [])
        timings["pretrain_s"] = round(time.perf_counter() - t, 1)
        runs["base_val_loss"] = summary.get("validation", {}).get("loss")
    embed_dir = args.embed_dir
    if embed_dir is None:
        embed_dir = os.path.join(work, "embed")
        t = time.perf_counter()
        summary = _train("configs/runs/embed.gin", embed_dir, args.embed_steps, [f"INIT_FROM={base!r}"])
        timings["embed_train_s"] = round(time.perf_counter() - t, 1)
        runs["embed_validation"] = {k: round(float(v), 4) for k, v in summary.items() if k.startswith("val_")}

    trained = Embedder.from_run(embed_dir)
    untrained = Embedder(qj.load(base), pooling=trained.pooling, max_len=trained.max_len,
                         query_prefix=trained.prefixes["query"], passage_prefix=trained.prefixes["passage"],
                         model_name=os.path.abspath(base))
    table, sizes = {}, {}
    for task in args.tasks.split(","):
        passages, queries = retrieval_pairs.benchmark("validation", task, max_queries=args.max_queries)
        sizes[task] = {"queries": len(queries), "passages": len(passages)}
        t = time.perf_counter()
        with_trained = Index.create(os.path.join(work, f"index_{task}_trained"), embedder=trained)
        with_trained.add(passages)
        with_untrained = Index.create(os.path.join(work, f"index_{task}_untrained"), embedder=untrained,
                                      lexical=False)
        with_untrained.add(passages)
        timings[f"index_{task}_s"] = round(time.perf_counter() - t, 1)
        table[task] = {
            "bm25": _evaluate(with_trained, queries, "lexical", args.k),
            "dense_untrained": _evaluate(with_untrained, queries, "dense", args.k),
            "dense_trained": _evaluate(with_trained, queries, "dense", args.k),
            "hybrid": _evaluate(with_trained, queries, "hybrid", args.k),
            "hybrid_weighted": _weighted_hybrid(
                with_trained, retrieval_pairs.benchmark("train", task, max_queries=args.tune_queries)[1], queries,
                args.k),
        }
    print(json.dumps({"benchmark": "stdlib_retrieval", "split": "validation", "table": table, "sizes": sizes,
                      "base": args.base_dir or f"tiny_base {args.pretrain_steps} steps",
                      "embedder": args.embed_dir or f"embed.gin {args.embed_steps} steps", **runs, **timings,
                      "total_s": round(time.perf_counter() - started, 1)}))


if __name__ == "__main__":
    main()
