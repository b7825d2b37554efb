"""The one train/validation split rule of quark_jax data.

Every document has a key — a relative path for the stdlib corpus and code repositories, a file path or
``path:line`` for text and JSONL sources, a topic name — and goes to ``validation`` when a stable hash of
the key falls in the first ``validation_fraction`` of 10,000 buckets, else to ``train``. The rule depends
on the key alone, so a split is the same on every machine, in every process, whatever the file order,
and the same file read through two sources (``stdlib_code`` and ``quark_demo.stdlib_code``) lands in the
same split.
"""

from __future__ import annotations

import hashlib

SPLITS = ("train", "validation")
VALIDATION_FRACTION = 0.03
BUCKETS = 10_000  # basis points: fractions are rounded to 1/10,000


def split_of(key: str, validation_fraction: float = VALIDATION_FRACTION) -> str:
    """'train' or 'validation' for a document key.

    The bucket is the first 8 bytes of the key's SHA-256 (big-endian) modulo 10,000; buckets below
    ``round(validation_fraction * 10_000)`` are validation. Python's ``hash`` is salted per process, so
    hashlib is used instead.
    """
    if not 0.0 <= validation_fraction <= 1.0:
        raise ValueError(f"validation_fraction={validation_fraction} must be in [0, 1]")
    bucket = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") % BUCKETS
    return "validation" if bucket < round(validation_fraction * BUCKETS) else "train"
