"""Near-duplicate detection speed (MinHash LSH, datasketch) on 100k documents, as one JSON line.

    python bench/near_dedup.py [--documents 100000] [--threshold 0.8] [--num_perm 64]

The documents are built deterministically: each is 60 words drawn (seeded, with their corpus frequencies)
from the stdlib docstrings, and every 10th is a copy of an earlier document with one word replaced (a near
duplicate; word-5-gram Jaccard 0.84 to 1.0 with its original). Reports documents/s through
``NearDeduper.check`` (shingling, MinHash, LSH query and insert) and the recall and precision of the
injected near duplicates (the independent documents share almost no 5-grams, so any other hit is an error).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def documents(n: int, seed: int = 0) -> tuple[list[str], set[int]]:
    from quark_jax.data import corpus

    words = " ".join(corpus.stdlib_documents("stdlib_docstrings", "train")).split()
    rng = random.Random(seed)
    docs, dups = [], set()
    for i in range(n):
        if i % 10 == 9:
            base = docs[rng.randrange(i)].split()
            base[rng.randrange(len(base))] = rng.choice(words)
            docs.append(" ".join(base))
            dups.add(i)
        else:
            docs.append(" ".join(rng.choices(words, k=60)))
    return docs, dups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=100_000)
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--num_perm", type=int, default=64)
    args = parser.parse_args()
    from quark_jax.data import filters

    docs, dups = documents(args.documents)
    deduper = filters.NearDeduper(args.threshold, args.num_perm)
    start = time.perf_counter()
    flagged = {i for i, d in enumerate(docs) if deduper.check(d)}
    seconds = time.perf_counter() - start
    true_pos = len(flagged & dups)
    print(json.dumps({
        "bench": "near_dedup", "documents": len(docs), "words_per_document": 60, "threshold": args.threshold,
        "num_perm": args.num_perm, "seconds": round(seconds, 2), "documents_per_s": round(len(docs) / seconds),
        "injected_near_duplicates": len(dups), "recall": round(true_pos / len(dups), 4),
        "precision": round(true_pos / max(1, len(flagged)), 4),
    }))


if __name__ == "__main__":
    main()
