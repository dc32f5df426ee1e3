"""Scale-out: the same store interface on Qdrant (qdrant-client).

`path=DIR` runs Qdrant's local mode in-process (no server; what the tests use);
`url=http://host:6333` talks to a Qdrant server, where the collection can grow past
one machine's memory. The index's SQLite file stays the source of truth either way.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import VlmkitError


class QdrantStore:
    def __init__(self, dim: int, path: Path | None = None, url: str | None = None, collection: str = "vlmkit", api_key: str | None = None, location: str | None = None, **_):
        try:
            from qdrant_client import QdrantClient
        except ImportError:
            raise VlmkitError("the qdrant backend needs qdrant-client: pip install qdrant-client") from None
        self.dim, self.collection = dim, collection
        if url:
            self.client = QdrantClient(url=url, api_key=api_key)
            self.key = f"qdrant:{url}/{collection}"
        elif location == ":memory:":
            self.client = QdrantClient(location=":memory:")
            self.key = f"qdrant::memory:/{collection}"
        else:
            Path(path).mkdir(parents=True, exist_ok=True)
            self.client = QdrantClient(path=str(path))
            self.key = f"qdrant:local/{collection}"
        self._ensure()

    def _ensure(self) -> None:
        from qdrant_client import models

        if self.client.collection_exists(self.collection):
            size = self.client.get_collection(self.collection).config.params.vectors.size
            if size == self.dim:
                return
            self.client.delete_collection(self.collection)
        self.client.create_collection(self.collection, vectors_config=models.VectorParams(size=self.dim, distance=models.Distance.DOT))

    def upsert(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        from qdrant_client import models

        ids = [int(i) for i in np.asarray(ids).ravel()]
        if not ids:
            return
        vectors = np.asarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        self.client.upsert(self.collection, points=models.Batch(ids=ids, vectors=vectors.tolist()), wait=True)

    def remove(self, ids: np.ndarray) -> None:
        from qdrant_client import models

        ids = [int(i) for i in np.asarray(ids).ravel()]
        if ids:
            self.client.delete(self.collection, points_selector=models.PointIdsList(points=ids), wait=True)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        from qdrant_client import models

        queries = np.asarray(queries, dtype=np.float32).reshape(-1, self.dim)
        Q = len(queries)
        ids = np.full((Q, k), -1, dtype=np.int64)
        scores = np.full((Q, k), -np.inf, dtype=np.float32)
        if Q == 0:
            return ids, scores
        requests = [models.QueryRequest(query=q.tolist(), limit=k) for q in queries]
        for qi, resp in enumerate(self.client.query_batch_points(self.collection, requests=requests)):
            for j, p in enumerate(resp.points):
                ids[qi, j], scores[qi, j] = int(p.id), float(p.score)
        return ids, scores

    def __len__(self) -> int:
        return int(self.client.count(self.collection, exact=True).count)

    def save(self) -> None:
        pass  # Qdrant persists each write itself

    def reset(self) -> None:
        self.client.delete_collection(self.collection)
        self._ensure()

    def close(self) -> None:
        self.client.close()
