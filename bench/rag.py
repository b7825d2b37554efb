"""The RAG effect: held-out stdlib API questions answered by a fine-tuned tiny model with and without retrieval.

    python bench/rag.py [--init_from RUN | --pretrain_steps 300] [--sft_steps 300] [--questions 80]

1. A base model: ``--init_from`` a run directory, else the tiny model pre-trained here for ``--pretrain_steps``
   (configs/runs/tiny_base.gin).
2. The retriever: the project's BM25 index (:class:`quark_jax.retrieval.index.Index`, lexical: bm25s with the
   code-aware tokenisation of :mod:`quark_jax.retrieval.lexical`) over every API passage of the standard library
   (:func:`quark_jax.retrieval.rag_data.api_passages`, both splits).
3. The SFT set (:mod:`quark_jax.retrieval.rag_data`): train-split questions with retrieved passages (gold
   passage added when missed, shuffled) answered ``"<answer> [n]"``, a quarter closed-book; fine-tuned with
   configs/runs/sft.gin for ``--sft_steps``.
4. ``--questions`` validation-split questions (modules never trained on), half ``module`` and half
   ``parameters``, answered greedily by :class:`~quark_jax.retrieval.rag.RAGPipeline` with retrieval
   (``--k`` passages under ``--budget`` prompt tokens, reranked by the model with ``--rerank``) and without
   (the closed-book prompt).

Prints ONE JSON line: per condition ``exact_match`` (the answer with its ``[n]`` markers removed equals the
gold answer, :func:`quark_jax.evaluation.metrics.exact_match`), ``rougeL`` (rouge_score F-measure, Porter
stemming, :func:`quark_jax.evaluation.metrics.rouge`), and with retrieval ``citation_correct`` (the first
cited passage is the gold one), ``cited`` (answers citing any shown passage), ``gold_shown`` (the gold passage
was among the shown sources: the retriever's recall under the budget), plus sizes and timings.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import chat_runs  # noqa: E402  (bench/chat_runs.py, beside this script)

TASK = "rag_api_sft"
SEQUENCE = 256


def lexical_index(passages, directory: str):
    """The project's BM25 index (:class:`quark_jax.retrieval.index.Index`, lexical part only) over the passages."""
    from quark_jax.retrieval.index import Index

    index = Index.create(directory, embedder=None, lexical=True, dense=False)
    index.add(passages)
    return index


def held_out(count: int, seed: int):
    """``count`` validation questions, half of each kind (seeded draw)."""
    from quark_jax.data.api_questions import api_questions

    questions = api_questions("validation")
    rng = random.Random(seed)
    picked = []
    for kind in ("module", "parameters"):
        pool = [q for q in questions if q.kind == kind]
        picked += rng.sample(pool, min(len(pool), count // 2 if kind == "module" else count - len(picked)))
    return picked


def measure(pipeline, questions) -> dict:
    from quark_jax.evaluation import metrics
    from quark_jax.retrieval.rag import strip_citations

    golds = [q.answer for q in questions]
    out = {}
    for condition in ("with_retrieval", "without_retrieval"):
        start = time.perf_counter()
        answers = [pipeline.answer(q.question) if condition == "with_retrieval"
                   else pipeline.answer_without_retrieval(q.question) for q in questions]
        texts = [strip_citations(a.text) for a in answers]
        result = {
            "exact_match": metrics.mean(metrics.exact_match(texts, golds)),
            "rougeL": metrics.mean(metrics.rouge(texts, golds)["rougeL"]),
            "seconds": round(time.perf_counter() - start, 1),
        }
        if condition == "with_retrieval":
            result["citation_correct"] = metrics.mean(
                [float(bool(a.citations) and a.citations[0].id == q.gold_id) for a, q in zip(answers, questions)])
            result["cited"] = metrics.mean([float(bool(a.citations)) for a in answers])
            result["gold_shown"] = metrics.mean(
                [float(any(h.id == q.gold_id for h in a.sources)) for a, q in zip(answers, questions)])
            result["examples"] = [{"question": q.question, "gold": q.answer, "answer": a.text}
                                  for q, a in list(zip(questions, answers))[:3]]
        else:
            result["examples"] = [{"question": q.question, "gold": q.answer, "answer": a.text}
                                  for q, a in list(zip(questions, answers))[:3]]
        out[condition] = result
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--init_from", default=None, help="a pre-trained run directory (default: pre-train here)")
    parser.add_argument("--pretrain_steps", type=int, default=300)
    parser.add_argument("--sft_steps", type=int, default=300)
    parser.add_argument("--sft_examples", type=int, default=2000, help="train questions used (seeded draw)")
    parser.add_argument("--questions", type=int, default=80, help="held-out questions measured")
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--budget", type=int, default=208, help="prompt tokens (the answer gets the rest of 256)")
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--rerank", action="store_true", help="rerank the k hits by log p(question | passage)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work_dir", default=None, help="keep the runs here (default: a temporary directory)")
    args = parser.parse_args()
    if args.budget + args.max_new_tokens > SEQUENCE:
        parser.error(f"--budget {args.budget} + --max_new_tokens {args.max_new_tokens} exceeds {SEQUENCE} tokens")

    import quark_jax as qj
    from quark_jax.data import chat_tasks, tokenizer
    from quark_jax.data.api_questions import api_questions
    from quark_jax.retrieval import rag_data
    from quark_jax.retrieval.rag import RAGPipeline

    started = time.perf_counter()
    work = args.work_dir or tempfile.mkdtemp(prefix="rag_bench_")
    vocabulary = tokenizer.get_vocabulary()
    passages = list(rag_data.api_passages())
    retriever = lexical_index(passages, os.path.join(work, "index"))
    timings = {}

    t = time.perf_counter()
    train_questions = api_questions("train")
    random.Random(args.seed).shuffle(train_questions)
    train_questions = train_questions[: args.sft_examples]
    records = {
        "train": rag_data.sft_records(train_questions, retriever, vocabulary, args.budget, args.k, seed=args.seed),
        "validation": rag_data.sft_records(api_questions("validation")[:32], retriever, vocabulary, args.budget,
                                           args.k, seed=args.seed + 1),
    }
    paths = {split: os.path.join(work, "sft_data", f"{split}.jsonl") for split in records}
    for split, path in paths.items():
        rag_data.write_jsonl(records[split], path)
    chat_tasks.register_chat_task(TASK, paths)
    timings["sft_data_s"] = round(time.perf_counter() - t, 1)

    sft_dir = chat_runs.pretrain_then_sft(work, args.init_from, args.pretrain_steps, args.sft_steps, TASK, SEQUENCE,
                                          timings)

    model = qj.load(sft_dir)
    pipeline = RAGPipeline(model, retriever, budget_tokens=args.budget, k=args.k, rerank=args.rerank,
                           max_new_tokens=args.max_new_tokens)
    questions = held_out(args.questions, args.seed)
    result = {
        "benchmark": "rag_effect",
        "retriever": "quark_jax.retrieval.index.Index, lexical (BM25) over the stdlib API passages",
        "passages": len(passages),
        "sft_records": {split: len(r) for split, r in records.items()},
        "base": args.init_from or f"tiny_base {args.pretrain_steps} steps",
        "sft_steps": args.sft_steps,
        "held_out_questions": len(questions),
        "k": args.k, "budget_tokens": args.budget, "rerank": args.rerank,
        **measure(pipeline, questions),
        **timings,
        "total_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
