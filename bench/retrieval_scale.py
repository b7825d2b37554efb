"""Retrieval at scale on one machine, as one JSON line.

    python bench/retrieval_scale.py [--sizes 10000,100000,1000000] [--dim 64] [--queries 256]

Synthetic data: unit vectors from a seeded normal (dim 64, the tiny model's width) and synthetic texts for BM25
(24 words each drawn from a Zipf law over 20k synthetic words, some of them camelCase/snake_case identifiers).
Random vectors have no cluster structure, so HNSW recall here is a pessimistic figure.

Per size ``n``:

* ``exact``: queries/s of :func:`dense.exact_search` (queries in batches of 256) and bytes per vector of the
  ``.npy`` file;
* ``hnsw`` (n <= ``--hnsw_max``): build seconds, queries/s at the default efSearch, bytes per vector of the faiss
  file, recall@10 against exact (the issue's goal: >= 0.95 at 100k);
* ``bm25`` (n <= ``--bm25_max``): fit seconds (= the re-fit an add or delete costs), queries/s, bytes per passage;
* ``index`` (n <= ``--index_max``): an :class:`Index` with BM25 + exact vectors built through ``add``, then one
  passage added and one deleted (each a full atomic write: BM25 re-fit, files rewritten, manifest swapped).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402


def unit_vectors(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def synthetic_texts(rng: np.random.Generator, n: int, words: int = 24, vocab: int = 20_000) -> list[str]:
    names = [f"w{i}" if i % 5 else f"parse{i}Value_{i % 97}" for i in range(vocab)]
    ranks = np.minimum(rng.zipf(1.2, size=(n, words)), vocab) - 1
    return [" ".join(names[r] for r in row) for row in ranks]


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


class LookupEmbedder:
    """Passage vectors looked up by text (the synthetic passage ``doc<i>``), queries from a fixed table."""

    def __init__(self, vectors: np.ndarray, queries: dict[str, np.ndarray]):
        self.identity, self.dim = "bench-lookup", vectors.shape[1]
        self._vectors, self._queries = vectors, queries

    def embed(self, texts, kind="passage"):
        if kind == "query":
            return np.stack([self._queries[t] for t in texts])
        return self._vectors[[int(t.split(" ", 1)[0][3:]) for t in texts]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=256)
    parser.add_argument("--hnsw_max", type=int, default=100_000)
    parser.add_argument("--bm25_max", type=int, default=100_000)
    parser.add_argument("--index_max", type=int, default=100_000)
    args = parser.parse_args()

    from quark_jax.retrieval import dense, lexical
    from quark_jax.retrieval.index import Index
    from quark_jax.retrieval.types import Passage

    import bm25s  # noqa: F401  (imported before timing: its import is seconds, not part of a fit)
    import faiss  # noqa: F401

    rng = np.random.default_rng(0)
    params = dense.HNSWParams()
    report = {"dim": args.dim, "queries": args.queries, "cpu_count": os.cpu_count(),
              "hnsw_params": {"m": params.m, "ef_construction": params.ef_construction, "ef_search": params.ef_search},
              "sizes": {}}
    work = tempfile.mkdtemp(prefix="retrieval_scale_")
    try:
        for n in [int(s) for s in args.sizes.split(",")]:
            row: dict = {}
            vectors = unit_vectors(rng, n, args.dim)
            queries = unit_vectors(rng, args.queries, args.dim)
            dense.exact_search(vectors, queries[:1], 10)  # warm-up: BLAS threads, first touch of the pages
            (exact_rows, _), seconds = timed(lambda: dense.exact_search(vectors, queries, 10))
            np.save(os.path.join(work, "v.npy"), vectors, allow_pickle=False)
            row["exact"] = {"queries_per_s": round(args.queries / seconds, 1),
                            "bytes_per_vector": round(os.path.getsize(os.path.join(work, "v.npy")) / n, 1)}
            if n <= args.hnsw_max:
                hnsw, build_s = timed(lambda: dense.build_hnsw(vectors, params))
                (approx, _), search_s = timed(lambda: dense.hnsw_search(hnsw, queries, 10, params.ef_search))
                faiss.write_index(hnsw, os.path.join(work, "h.faiss"))
                row["hnsw"] = {"build_s": round(build_s, 2), "queries_per_s": round(args.queries / search_s, 1),
                               "bytes_per_vector": round(os.path.getsize(os.path.join(work, "h.faiss")) / n, 1),
                               "recall_at_10": round(dense.recall_at_k(approx, exact_rows), 4)}
                del hnsw
            if n <= args.bm25_max:
                texts = synthetic_texts(rng, n)
                query_texts = [" ".join(t.split()[:3]) for t in synthetic_texts(rng, args.queries)]
                model, fit_s = timed(lambda: lexical.BM25.fit(texts))
                _, search_s = timed(lambda: [model.search(q, 10) for q in query_texts])
                model.save(os.path.join(work, "bm25"))
                size = sum(os.path.getsize(os.path.join(work, "bm25", f)) for f in os.listdir(os.path.join(work, "bm25")))
                row["bm25"] = {"fit_s": round(fit_s, 2), "queries_per_s": round(args.queries / search_s, 1),
                               "bytes_per_passage": round(size / n, 1)}
                shutil.rmtree(os.path.join(work, "bm25"))
            if n <= args.index_max:
                query_table = {f"q{i}": queries[i] for i in range(args.queries)}
                embedder = LookupEmbedder(np.concatenate([vectors, unit_vectors(rng, 1, args.dim)]), query_table)
                passages = [Passage(f"p{i}", f"doc{i} {texts[i]}") for i in range(n)]
                path = os.path.join(work, f"index{n}")
                index, build_s = timed(lambda: _build(Index, path, embedder, passages))
                _, add_s = timed(lambda: index.add([Passage("extra", f"doc{n} one more passage")]))
                _, delete_s = timed(lambda: index.delete(["p0"]))
                _, open_s = timed(lambda: Index.open(path, embedder=embedder))
                _, hybrid_s = timed(lambda: index.search_batch(list(query_table)[:64], 10, mode="hybrid"))
                disk = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(path) for f in fs)
                row["index"] = {"build_s": round(build_s, 2), "add_one_s": round(add_s, 2),
                                "delete_one_s": round(delete_s, 2), "open_s": round(open_s, 2),
                                "hybrid_queries_per_s": round(64 / hybrid_s, 1),
                                "disk_bytes_per_passage": round(disk / n, 1)}
                shutil.rmtree(path)
            report["sizes"][str(n)] = row
            print(f"# {n}: {json.dumps(row)}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    skipped = [f"hnsw above {args.hnsw_max}", f"bm25 and index above {args.bm25_max}"]
    report["not_measured"] = skipped
    print(json.dumps(report))


def _build(index_cls, path, embedder, passages):
    index = index_cls.create(path, embedder=embedder)
    index.add(passages)
    return index


if __name__ == "__main__":
    main()
