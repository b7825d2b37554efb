"""The dense part of an index on Qdrant, the scale-out path: the same vectors, searched by a Qdrant collection
(a server shared by many machines, ``QdrantClient(url=...)``) instead of this process's memory.

Qdrant point ids must be integers or UUIDs: a passage id maps to ``uuid5(QUARK_NAMESPACE, id)`` and the point's
payload keeps ``{"id": <our id>}``, so results map back without a side table. Vectors are L2-normalised, so the
collection uses the ``DOT`` distance (cosine without re-normalising), and its scores equal the local store's.

Without a URL the store runs qdrant-client's in-memory local mode (``QdrantClient(":memory:")``), filled from the
index's ``vectors.npy`` when the index opens. qdrant-client's on-disk local mode (``path=...``) is not used:
it stores points with Python pickle, and an index directory is untrusted input here.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import numpy as np
from jaxtyping import Float

QUARK_NAMESPACE = uuid.UUID("6f1c3f52-3c0e-5b8e-9a57-7c4c1d0e2a11")
_UPLOAD_BATCH = 1024


def point_id(passage_id: str) -> str:
    """The Qdrant point id (a UUID string) of a passage id."""
    return str(uuid.uuid5(QUARK_NAMESPACE, passage_id))


class QdrantStore:
    """One Qdrant collection holding ``(passage id → unit vector)``."""

    def __init__(self, collection: str, dim: int, url: str | None = None, api_key: str | None = None):
        from qdrant_client import QdrantClient

        self.collection, self.dim, self.url = collection, dim, url
        self.client = QdrantClient(url=url, api_key=api_key) if url else QdrantClient(location=":memory:")
        self._ensure_collection()

    def _ensure_collection(self) -> None:
        from qdrant_client import models

        if self.client.collection_exists(self.collection):
            size = self.client.get_collection(self.collection).config.params.vectors.size
            if size != self.dim:
                raise ValueError(f"Qdrant collection {self.collection!r} holds {size}-d vectors but the index is "
                                 f"{self.dim}-d; pass another qdrant collection name")
            return
        self.client.create_collection(
            self.collection, vectors_config=models.VectorParams(size=self.dim, distance=models.Distance.DOT))

    def count(self) -> int:
        """Points in the collection."""
        return self.client.count(self.collection, exact=True).count

    def upsert(self, ids: Sequence[str], vectors: Float[np.ndarray, "N dim"]) -> None:
        """Writes (or overwrites) the points of ``ids``; idempotent, so a retried write is harmless."""
        from qdrant_client import models

        for start in range(0, len(ids), _UPLOAD_BATCH):
            chunk = ids[start:start + _UPLOAD_BATCH]
            points = [models.PointStruct(id=point_id(i), vector=v.tolist(), payload={"id": i})
                      for i, v in zip(chunk, np.asarray(vectors[start:start + _UPLOAD_BATCH], np.float32))]
            self.client.upsert(self.collection, points=points, wait=True)

    def delete(self, ids: Sequence[str]) -> None:
        """Removes the points of ``ids`` (absent ones are ignored)."""
        from qdrant_client import models

        if ids:
            self.client.delete(self.collection, points_selector=models.PointIdsList(points=[point_id(i) for i in ids]),
                               wait=True)

    def replace_all(self, ids: Sequence[str], vectors: Float[np.ndarray, "N dim"]) -> None:
        """Makes the collection hold exactly ``ids`` (drops and re-creates it, then uploads)."""
        self.client.delete_collection(self.collection)
        self._ensure_collection()
        self.upsert(ids, vectors)

    def search(self, queries: Float[np.ndarray, "Q dim"], k: int) -> list[list[tuple[str, float]]]:
        """For each query, up to ``k`` ``(passage id, inner product)`` pairs, best first."""
        from qdrant_client import models

        if k == 0 or len(queries) == 0:
            return [[] for _ in range(len(queries))]
        requests = [models.QueryRequest(query=np.asarray(q, np.float32).tolist(), limit=k, with_payload=True)
                    for q in queries]
        responses = self.client.query_batch_points(self.collection, requests=requests)
        return [[(p.payload["id"], float(p.score)) for p in r.points] for r in responses]

    def close(self) -> None:
        """Releases the client."""
        self.client.close()
