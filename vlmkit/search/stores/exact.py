"""Exact brute-force inner-product search in numpy: the reference the ANN stores are measured against."""
from __future__ import annotations

import numpy as np


def exact_topk(queries: np.ndarray, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """queries [Q, D], vectors [N, D] -> (row indices [Q, k], scores [Q, k]), best first (-1 pads when N < k)."""
    Q, N = queries.shape[0], vectors.shape[0]
    idx = np.full((Q, k), -1, dtype=np.int64)
    scores = np.full((Q, k), -np.inf, dtype=np.float32)
    if N == 0:
        return idx, scores
    sims = queries @ vectors.T  # [Q, N]
    kk = min(k, N)
    part = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]  # top kk, unordered: O(N) instead of a full sort
    part_scores = np.take_along_axis(sims, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    idx[:, :kk] = np.take_along_axis(part, order, axis=1)
    scores[:, :kk] = np.take_along_axis(part_scores, order, axis=1)
    return idx, scores


class ExactStore:
    """In memory only: rebuilt from the index's SQLite vectors each time it is opened."""

    key = "exact"

    def __init__(self, dim: int):
        self.dim = dim
        self._ids = np.zeros(0, dtype=np.int64)
        self._vecs = np.zeros((0, dim), dtype=np.float32)

    def upsert(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        self.remove(ids)
        self._ids = np.concatenate([self._ids, ids])
        self._vecs = np.concatenate([self._vecs, np.asarray(vectors, dtype=np.float32).reshape(-1, self.dim)])

    def remove(self, ids: np.ndarray) -> None:
        keep = ~np.isin(self._ids, np.asarray(ids, dtype=np.int64))
        self._ids, self._vecs = self._ids[keep], self._vecs[keep]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        rows, scores = exact_topk(np.asarray(queries, dtype=np.float32).reshape(-1, self.dim), self._vecs, k)
        ids = np.where(rows >= 0, self._ids[np.clip(rows, 0, None)] if len(self._ids) else -1, -1)
        return ids.astype(np.int64), scores

    def __len__(self) -> int:
        return len(self._ids)

    def save(self) -> None:
        pass

    def reset(self) -> None:
        self.__init__(self.dim)

    def close(self) -> None:
        pass
