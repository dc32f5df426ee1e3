"""Vector stores: one interface over an embedded ANN index, a vector database server, and exact search.

A store holds (int64 id, float32 unit vector) pairs and answers top-k inner-product
queries. It is a derived copy: the index's SQLite file holds every vector too, so a
store that is missing, stale or of another backend is rebuilt from it (see
ImageIndex.sync). `synced_seq` tells how far the store has caught up.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from ...errors import VlmkitError

BACKENDS = ("usearch", "qdrant", "exact")


class VectorStore(Protocol):
    dim: int
    key: str  # names this store's replay position in the index's metadata

    def upsert(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """ids [N] int64, vectors [N, dim] float32; an existing id is replaced."""

    def remove(self, ids: np.ndarray) -> None:
        """Missing ids are ignored, so replays are idempotent."""

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """queries [Q, dim] -> (ids [Q, k] int64 with -1 padding, scores [Q, k] float32, inner products)."""

    def __len__(self) -> int: ...

    def save(self) -> None:
        """Persist (a no-op where the backend persists by itself)."""

    def reset(self) -> None:
        """Drop every vector (before a full rebuild)."""

    def close(self) -> None: ...


def open_store(backend: str, root: Path, dim: int, options: dict | None = None) -> VectorStore:
    """The store of `backend` for an index folder `root` (options: qdrant url/collection, HNSW knobs)."""
    options = dict(options or {})
    if backend == "usearch":
        from .usearch_store import UsearchStore

        return UsearchStore(root / "vectors.usearch", dim, **options)
    if backend == "qdrant":
        from .qdrant_store import QdrantStore

        return QdrantStore(dim, path=None if options.get("url") else root / "qdrant", **options)
    if backend == "exact":
        from .exact import ExactStore

        return ExactStore(dim)
    raise VlmkitError(f"unknown vector store backend {backend!r}; choose from {', '.join(BACKENDS)}")
