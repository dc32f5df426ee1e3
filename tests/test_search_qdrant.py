"""Scale-out: the Qdrant store (qdrant-client's local, in-process mode) behind the same interface."""
import numpy as np
import pytest

qdrant_client = pytest.importorskip("qdrant_client", reason="qdrant-client is not installed (pip install qdrant-client)")

from test_search_index import tiny_encoder, write_image  # noqa: E402
from vlmkit.search.index import ImageIndex, index_images  # noqa: E402
from vlmkit.search.stores.exact import ExactStore  # noqa: E402
from vlmkit.search.stores.qdrant_store import QdrantStore  # noqa: E402


def unit(n, d, seed):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_store_interface_matches_exact_search():
    q, ex = QdrantStore(8, location=":memory:"), ExactStore(8)
    vecs = unit(50, 8, 0)
    ids = np.arange(100, 150)
    for s in (q, ex):
        s.upsert(ids, vecs)
        s.upsert(ids[:5], unit(5, 8, 1))  # replace
        s.remove(ids[5:10])
        s.remove(np.array([999]))  # missing ids are ignored
    assert len(q) == len(ex) == 45
    queries = unit(7, 8, 2)
    qi, qs = q.search(queries, 6)
    ei, es = ex.search(queries, 6)
    assert qi.tolist() == ei.tolist()
    np.testing.assert_allclose(qs, es, atol=1e-5)
    q.reset()
    assert len(q) == 0
    q.close()


def test_index_on_qdrant_local_mode(tmp_path):
    enc = tiny_encoder()
    d = tmp_path / "imgs"
    d.mkdir()
    files = [write_image(d / f"{i}.png", i) for i in range(8)]
    db = tmp_path / "db"
    r = index_images([str(d)], db, enc, backend="qdrant", progress=False)
    assert r.added == 8 and (db / "qdrant").is_dir()
    (d / "3.png").unlink()
    r = index_images([str(d)], db, enc, progress=False)  # the index remembers its backend
    assert r.removed == 1 and r.total == 7
    with ImageIndex(db, readonly=True) as idx:
        assert idx.backend == "qdrant" and len(idx.store) == 7
        hits = idx.search(enc.encode_images(files[5:6]).numpy(), 3)[0]
    assert hits[0].path == files[5] and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert files[3] not in [h.path for h in hits]


def test_moving_an_index_to_qdrant_fills_it_from_sqlite_without_embedding(tmp_path):
    from test_search_index import Counting

    enc = tiny_encoder()
    d = tmp_path / "imgs"
    d.mkdir()
    files = [write_image(d / f"{i}.png", i) for i in range(5)]
    db = tmp_path / "db"
    index_images([str(d)], db, enc, progress=False)  # usearch
    c = Counting(enc)
    r = index_images([str(d)], db, c, backend="qdrant", progress=False)
    assert c.images == 0 and r.unchanged == 5
    with ImageIndex(db, readonly=True) as idx:
        assert idx.backend == "qdrant" and len(idx.store) == 5
        assert idx.search(enc.encode_images(files[2:3]).numpy(), 1)[0][0].path == files[2]
