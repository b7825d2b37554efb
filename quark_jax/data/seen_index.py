"""A persistent index of every document already kept: exact hashes and MinHash signatures, without pickle.

``quark data refresh`` checks each new document against it (exact duplicate: the normalized-text hash of
``filters.exact_hash``; near duplicate: MinHash-LSH over word 5-gram shingles, as ``filters.NearDeduper``) and
adds the documents it keeps. On disk it is one ``.npz`` file (``numpy.savez``; loaded with
``allow_pickle=False``):

* ``exact``      uint8 ``[N, 16]``   the blake2b digests of the normalized texts;
* ``signatures`` uint64 ``[N, P]``   the MinHash hash values (P = ``num_perm``);
* ``ids``        unicode ``[N]``     the document ids, for reports;
* ``settings``   unicode scalar     JSON: ``num_perm``, ``seed``, ``threshold``, ``recall_weight`` and
  datasketch's hash ``scheme`` of the stored values.

Loading rebuilds the LSH tables from the signatures (datasketch ``LeanMinHash`` from stored hash values, so
nothing is re-shingled). Saving writes a temporary file in the target directory and renames it over the old one.
"""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np

from quark_jax.data import filters

FILE_NAME = "seen.npz"
DIGEST_BYTES = 16


class SeenIndex:
    """Exact and near-duplicate lookup over the documents kept so far; :meth:`save` / :meth:`load` persist it."""

    def __init__(self, threshold: float = 0.8, num_perm: int = 64, seed: int = 1, recall_weight: float = 0.8):
        from datasketch import MinHashLSH

        self._shingler = filters.NearDeduper(threshold, num_perm, seed, recall_weight)  # validates the settings
        self.settings = {"threshold": threshold, "num_perm": num_perm, "seed": seed, "recall_weight": recall_weight}
        self._lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=(1 - recall_weight, recall_weight))
        self._exact: set[bytes] = set()
        self._digests: list[bytes] = []
        self._signatures: list[np.ndarray] = []
        self.ids: list[str] = []

    def __len__(self) -> int:
        return len(self.ids)

    def exact_duplicate(self, text: str) -> bool:
        """Whether the normalized ``text`` equals a document already added (the cheap check, run first)."""
        return filters.exact_hash(text) in self._exact

    def near_duplicate(self, text: str) -> bool:
        """Whether LSH finds a document already added whose estimated Jaccard similarity passes the threshold."""
        return bool(self._lsh.query(self._shingler.signature(text)))

    def add(self, text: str, doc_id: str) -> None:
        """Records a kept document."""
        minhash = self._shingler.signature(text)
        self.settings.setdefault("scheme", minhash.scheme)
        self._insert(filters.exact_hash(text), np.asarray(minhash.hashvalues, np.uint64), doc_id)

    def _insert(self, digest: bytes, signature: np.ndarray, doc_id: str) -> None:
        from datasketch import LeanMinHash

        key = str(len(self.ids))
        lean = LeanMinHash(seed=self.settings["seed"], hashvalues=signature, scheme=self.settings["scheme"])
        self._lsh.insert(key, lean, check_duplication=False)
        self._exact.add(digest)
        self._digests.append(digest)
        self._signatures.append(signature)
        self.ids.append(doc_id)

    # ---- persistence ----------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Writes the index to ``path`` atomically (temporary file in the same directory, then ``os.replace``)."""
        path = os.fspath(path)
        n, p = len(self.ids), self.settings["num_perm"]
        exact = np.frombuffer(b"".join(self._digests), np.uint8).reshape(n, DIGEST_BYTES)
        signatures = np.stack(self._signatures) if n else np.zeros((0, p), np.uint64)
        fd, tmp = tempfile.mkstemp(prefix=".seen-", suffix=".npz", dir=os.path.dirname(os.path.abspath(path)))
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, exact=exact, signatures=signatures, ids=np.array(self.ids, dtype=str),
                         settings=np.array(json.dumps(self.settings, sort_keys=True)))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike, expected: dict | None = None) -> SeenIndex:
        """Reads an index written by :meth:`save`. ``expected`` settings that differ from the stored ones are an
        error (signatures of another ``num_perm`` or ``seed`` cannot be compared)."""
        path = os.fspath(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                settings = json.loads(str(data["settings"]))
                exact, signatures, ids = data["exact"], data["signatures"], data["ids"]
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"{path} is not a readable seen-document index ({type(e).__name__}: {e}); "
                             f"delete it to start a new one (every document will count as new)") from None
        if expected:
            differ = {k: (settings.get(k), v) for k, v in expected.items() if settings.get(k) != v}
            if differ:
                raise ValueError(f"{path} was built with {', '.join(f'{k}={a}' for k, (a, _) in differ.items())}, "
                                 f"not {', '.join(f'{k}={b}' for k, (_, b) in differ.items())}; bind "
                                 f"quark_jax.data.CleaningConfig to the stored values")
        if exact.shape != (len(ids), DIGEST_BYTES) or signatures.shape != (len(ids), settings["num_perm"]):
            raise ValueError(f"{path}: arrays of inconsistent shapes {exact.shape}, {signatures.shape}, {ids.shape}")
        index = cls(settings["threshold"], settings["num_perm"], settings["seed"], settings["recall_weight"])
        if "scheme" in settings:  # datasketch's hash scheme of the stored values
            index.settings["scheme"] = settings["scheme"]
        for digest, signature, doc_id in zip(exact, signatures.astype(np.uint64), ids):
            index._insert(digest.tobytes(), signature, str(doc_id))
        return index
