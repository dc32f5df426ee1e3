"""The default store: a usearch HNSW graph (Malkov & Yashunin 2018) in one file next to the index.

usearch installs from PyPI as a small self-contained wheel, supports removal and
replacement by key, and saves and loads a single file. Saves go to a temporary
file and are renamed into place, so a crash never leaves half a graph.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import VlmkitError
from ...files import atomic_path


class UsearchStore:
    key = "usearch"

    def __init__(self, path: Path, dim: int, connectivity: int = 16, expansion_add: int = 64, expansion_search: int = 64, **_):
        try:
            from usearch.index import Index
        except ImportError:
            raise VlmkitError("the usearch backend needs usearch: pip install usearch") from None
        self.path, self.dim = Path(path), dim
        self._make = lambda: Index(ndim=dim, metric="ip", dtype="f32", connectivity=connectivity,
                                   expansion_add=expansion_add, expansion_search=expansion_search)
        self.index = self._make()
        if self.path.is_file():
            try:
                self.index.load(str(self.path))
            except Exception:  # a damaged graph is only a cache: the index rebuilds it from SQLite
                self.index = self._make()
            if self.index.ndim != dim:
                self.index = self._make()
            # load() restores the graph but not always the search-time knobs
            self.index.expansion_search = expansion_search
        self._dirty = False

    def upsert(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.uint64)
        if not len(ids):
            return
        self.remove(ids)  # usearch refuses duplicate keys: replace = remove + add
        self.index.add(ids, np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim))
        self._dirty = True

    def remove(self, ids: np.ndarray) -> None:
        ids = [int(i) for i in np.asarray(ids).ravel() if int(i) in self.index]
        if ids:
            self.index.remove(ids)
            self._dirty = True

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        Q = len(queries)
        ids = np.full((Q, k), -1, dtype=np.int64)
        scores = np.full((Q, k), -np.inf, dtype=np.float32)
        if len(self.index) == 0 or Q == 0:
            return ids, scores
        m = self.index.search(queries, k)
        # one query gives Matches (valid hits only), several give BatchMatches (padded, with counts)
        counts = np.asarray(m.counts).reshape(Q) if hasattr(m, "counts") else np.array([len(m.keys)])
        keys = np.asarray(m.keys).reshape(Q, -1)
        dist = np.asarray(m.distances).reshape(Q, -1)
        for q in range(Q):
            c = int(counts[q])
            ids[q, :c] = keys[q, :c].astype(np.int64)
            scores[q, :c] = 1.0 - dist[q, :c]  # usearch's "ip" distance is 1 - <q, v>
        return ids, scores

    def __len__(self) -> int:
        return len(self.index)

    def save(self) -> None:
        if not self._dirty and self.path.is_file():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path) as tmp:
            self.index.save(str(tmp))
        self._dirty = False

    def reset(self) -> None:
        self.index = self._make()
        self._dirty = True

    def close(self) -> None:
        pass
