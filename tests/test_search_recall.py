"""recall@k helpers on synthetic embeddings whose answers are known."""
import numpy as np
import pytest
import torch

from vlmkit.search.metrics import embedding_recall, image_to_image_recall, recall_at_k, text_to_image_recall


def test_recall_at_k_exact_values():
    # 4 queries, 12 gallery items; the correct item sits at rank 0, 2, 7 and 11
    sim = np.tile(-np.arange(12, dtype=float), (4, 1))  # item j has rank j for every query
    targets = [0, 2, 7, 11]
    r = recall_at_k(sim, targets, ks=(1, 3, 5, 10, 12))
    assert r == {1: 0.25, 3: 0.5, 5: 0.5, 10: 0.75, 12: 1.0}


def test_ties_count_against_the_query_and_sets_of_targets():
    assert recall_at_k(np.zeros((3, 20)), [0, 1, 2], ks=(1, 10)) == {1: 0.0, 10: 0.0}  # a collapsed encoder scores 0
    sim = np.array([[0.1, 0.9, 0.8, 0.2]])
    assert recall_at_k(sim, [{2, 3}], ks=(1, 2)) == {1: 0.0, 2: 1.0}  # the best correct item counts
    with pytest.raises(ValueError):
        recall_at_k(sim, [0, 1])


def test_embedding_recall_with_noisy_pairs():
    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(100, 32))
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    exact = embedding_recall(gallery, gallery, list(range(100)))
    assert exact == {1: 1.0, 5: 1.0, 10: 1.0}
    shuffled = embedding_recall(gallery, gallery, list(np.roll(np.arange(100), 1)))
    assert shuffled[1] == 0.0  # each query's own vector outranks the wrong target
    noisy = gallery + rng.normal(scale=0.5, size=gallery.shape) / np.sqrt(32) * 4
    r = embedding_recall(noisy / np.linalg.norm(noisy, axis=1, keepdims=True), gallery, list(range(100)))
    assert 0.0 < r[1] < r[5] <= r[10] <= 1.0


class Lookup:
    """An 'encoder' whose images are vectors already and whose texts index a table: the answer is known."""

    def __init__(self, table):
        self.table = torch.nn.functional.normalize(torch.as_tensor(table, dtype=torch.float32), dim=-1)

    def encode_image(self, x):
        return torch.nn.functional.normalize(x.float(), dim=-1)

    def encode_text(self, texts):
        return self.table[[int(t.split()[-1]) for t in texts]]


def test_text_and_image_recall_through_an_encoder():
    rng = np.random.default_rng(1)
    vecs = torch.as_tensor(rng.normal(size=(30, 8)), dtype=torch.float32)
    enc = Lookup(vecs.numpy())
    captions = [f"caption {i}" for i in range(30)]
    assert text_to_image_recall(enc, vecs, captions, batch_size=7) == {1: 1.0, 5: 1.0, 10: 1.0}
    # captions pointing at the next image: the true image is the previous one's, so recall@1 is 0
    wrong = [f"caption {(i + 1) % 30}" for i in range(30)]
    assert text_to_image_recall(enc, vecs, wrong)[1] == 0.0
    views = vecs + 0.01 * torch.randn(30, 8, generator=torch.Generator().manual_seed(0))
    assert image_to_image_recall(enc, views, vecs, list(range(30))) == {1: 1.0, 5: 1.0, 10: 1.0}
