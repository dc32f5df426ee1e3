"""Retrieval recall@k (text->image, image->image) for the evaluation harness.

recall@k = the fraction of queries whose correct item is among the k most similar
gallery items. Ties count against the query (a wrong item as similar as the correct
one ranks above it), so a collapsed encoder that maps everything to one vector scores 0, not 1.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

KS = (1, 5, 10)


def recall_at_k(similarity: np.ndarray, targets: Sequence, ks: Sequence[int] = KS) -> dict[int, float]:
    """similarity [Q, N]; targets: for each query, the gallery index of its match or a set of them.

    -> {k: recall@k}."""
    ranks = match_ranks(similarity, targets)
    return {int(k): float((ranks < k).mean()) for k in ks}


def match_ranks(similarity: np.ndarray, targets: Sequence) -> np.ndarray:
    """-> [Q] 0-based rank of each query's best-ranked correct item (recall@k is the mean of rank < k)."""
    sim = np.asarray(similarity, dtype=np.float64)
    Q = sim.shape[0]
    if Q != len(targets):
        raise ValueError(f"{Q} queries but {len(targets)} targets")
    ranks = np.empty(Q, dtype=np.int64)
    for q, t in enumerate(targets):
        t = np.atleast_1d(np.asarray(list(t) if isinstance(t, (set, frozenset)) else t, dtype=np.int64))
        best = sim[q, t].max()
        wrong = np.ones(sim.shape[1], dtype=bool)
        wrong[t] = False
        ranks[q] = int((sim[q, wrong] >= best).sum())  # wrong items at least as similar rank above it
    return ranks


def embedding_recall(queries: np.ndarray, gallery: np.ndarray, targets: Sequence, ks: Sequence[int] = KS) -> dict[int, float]:
    """queries [Q, D], gallery [N, D] (L2-normalised) -> recall@k by cosine similarity."""
    return recall_at_k(np.asarray(queries) @ np.asarray(gallery).T, targets, ks)


def text_to_image_recall(encoder, images, captions: list[str], ks: Sequence[int] = KS, batch_size: int = 64) -> dict[int, float]:
    """Caption i describes image i. images: [N, 3, H, W] tensor, or paths / PIL images."""
    img = _encode_images(encoder, images, batch_size)
    txt = _batched(lambda i, j: encoder.encode_text(captions[i:j]), len(captions), batch_size)
    return embedding_recall(txt, img, list(range(len(captions))), ks)


def image_to_image_recall(encoder, queries, gallery, targets: Sequence, ks: Sequence[int] = KS, batch_size: int = 64) -> dict[int, float]:
    """Query image q matches gallery item targets[q] (e.g. another view of the same scene)."""
    return embedding_recall(_encode_images(encoder, queries, batch_size), _encode_images(encoder, gallery, batch_size), targets, ks)


def _encode_images(encoder, images, batch_size: int) -> np.ndarray:
    import torch

    if isinstance(images, torch.Tensor):
        return _batched(lambda i, j: encoder.encode_image(images[i:j]), len(images), batch_size)
    return encoder.encode_images(list(images), batch_size=batch_size).float().cpu().numpy()


def _batched(fn, n: int, batch_size: int) -> np.ndarray:
    import torch

    with torch.no_grad():
        return torch.cat([fn(i, min(n, i + batch_size)) for i in range(0, n, batch_size)]).float().cpu().numpy()
