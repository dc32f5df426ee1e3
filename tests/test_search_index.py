"""The image index: incremental re-indexing, resume after interruption, corrupt files, model ids, search."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from vlmkit.cli import main
from vlmkit.config import VisionConfig
from vlmkit.errors import VlmkitError
from vlmkit.models.dual_encoder import DualEncoder, DualEncoderConfig, TextTowerConfig
from vlmkit.search.index import ImageIndex, SearchIndexError, index_images
from vlmkit.search.search import search
from vlmkit.search.stores.exact import ExactStore


def tiny_encoder(seed=0, name="tiny") -> DualEncoder:
    torch.manual_seed(seed)
    vc = VisionConfig(image_size=32, patch_size=8, hidden_size=32, num_layers=2, num_heads=2)
    return DualEncoder(DualEncoderConfig(vision=vc, text=TextTowerConfig(kind="hash"), embed_dim=16, name=name)).eval()


class Counting:
    """Wraps an encoder: counts images embedded, and can fail on the n-th batch (an interrupted run)."""

    def __init__(self, enc, fail_on_batch=None):
        self.enc, self.fail_on_batch, self.batches, self.images = enc, fail_on_batch, 0, 0

    def __getattr__(self, name):
        return getattr(self.enc, name)

    def encode_image(self, pixels):
        self.batches += 1
        if self.fail_on_batch is not None and self.batches == self.fail_on_batch:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-run
        self.images += len(pixels)
        return self.enc.encode_image(pixels)


def write_image(path, seed, size=(40, 36)):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return str(path)


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    for i in range(6):
        write_image(d / f"img{i}.png", i)
    return d


@pytest.fixture(scope="module")
def enc():
    return tiny_encoder()


def rows(db):
    with ImageIndex(db, readonly=True) as idx:
        return idx.rows(), len(idx.store), idx.model_id


def test_incremental_add_change_delete(tmp_path, folder, enc):
    db = tmp_path / "db"
    c = Counting(enc)
    r = index_images([str(folder)], db, c, batch_size=4, progress=False)
    assert (r.added, r.changed, r.unchanged, r.removed, r.total) == (6, 0, 0, 0, 6)
    assert c.images == 6 and c.batches == 2

    c = Counting(enc)
    r = index_images([str(folder)], db, c, batch_size=4, progress=False)
    assert (r.added, r.changed, r.unchanged, r.removed) == (0, 0, 6, 0) and c.images == 0

    write_image(folder / "new.png", 100)  # added
    write_image(folder / "img1.png", 101)  # changed content
    os.remove(folder / "img2.png")  # deleted
    same = (folder / "img3.png").read_bytes()
    (folder / "img3.png").write_bytes(same)  # rewritten: new mtime, same content
    os.utime(folder / "img3.png", ns=(1, 1))
    c = Counting(enc)
    r = index_images([str(folder)], db, c, batch_size=4, progress=False)
    assert (r.added, r.changed, r.unchanged, r.removed, r.total) == (1, 1, 4, 1, 6)
    assert c.images == 2  # only the new and the changed file went through the model

    paths, n_store, model_id = rows(db)
    assert str(folder / "img2.png") not in paths and str(folder / "new.png") in paths
    assert n_store == 6 and model_id == enc.model_id
    # the changed file's vector is the new content's
    with ImageIndex(db, readonly=True) as idx:
        got = idx.vector(paths[str(folder / "img1.png")][0])
        hits = search(idx, enc, image=str(folder / "img1.png"), k=3)
    want = enc.encode_images([str(folder / "img1.png")])[0].numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert hits[0].path == str(folder / "img1.png") and hits[0].score == pytest.approx(1.0, abs=1e-4)


def test_interrupted_run_resumes_without_losing_committed_batches(tmp_path, enc):
    d = tmp_path / "many"
    d.mkdir()
    for i in range(10):
        write_image(d / f"{i:02d}.png", i)
    db = tmp_path / "db"
    with pytest.raises(KeyboardInterrupt):
        index_images([str(d)], db, Counting(enc, fail_on_batch=3), batch_size=3, progress=False)
    paths, n_store, _ = rows(db)
    assert len(paths) == 6 and n_store == 6  # two batches of three committed, the third lost
    assert sorted(paths) == [str(d / f"{i:02d}.png") for i in range(6)]

    c = Counting(enc)
    r = index_images([str(d)], db, c, batch_size=3, progress=False)
    assert (r.added, r.unchanged, r.total) == (4, 6, 10)
    assert c.images == 4  # it resumed: the six committed images were not embedded again


def test_store_heals_from_sqlite_after_a_crash(tmp_path, folder, enc):
    db = tmp_path / "db"
    index_images([str(folder)], db, enc, progress=False)
    os.remove(db / "vectors.usearch")  # as if killed before the graph was saved
    with ImageIndex(db, readonly=True) as idx:
        assert len(idx.store) == 6
        assert search(idx, enc, image=str(folder / "img4.png"), k=1)[0].path == str(folder / "img4.png")
    # a stale replay position: replaying again must be idempotent
    with ImageIndex(db) as idx:
        with idx.conn:
            idx.conn.execute("UPDATE meta SET value='0' WHERE key='store_seq:usearch'")
    with ImageIndex(db) as idx:
        assert len(idx.store) == 6 and int(idx.get_meta("store_seq:usearch")) == idx.seq


def test_corrupt_images_are_skipped_and_reported(tmp_path, folder, enc, capsys):
    (folder / "garbage.jpg").write_bytes(b"this is not a jpeg")
    good = (folder / "img0.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    db = tmp_path / "db"
    r = index_images([str(folder)], db, enc, batch_size=4, progress=False)
    failed = dict(r.failed)
    assert set(failed) == {str(folder / "garbage.jpg"), str(folder / "truncated.png")}
    assert "not a readable image" in failed[str(folder / "garbage.jpg")]
    assert r.total == 6 and r.added == 6

    # a file that was fine and turns corrupt loses its stale vector
    (folder / "img5.png").write_bytes(b"\x89PNG broken")
    r = index_images([str(folder)], db, enc, progress=False)
    assert r.total == 5 and str(folder / "img5.png") in dict(r.failed)
    assert str(folder / "img5.png") not in rows(db)[0]


def test_model_ids_never_mix(tmp_path, folder, enc):
    db = tmp_path / "db"
    index_images([str(folder)], db, enc, progress=False)
    other = tiny_encoder(seed=1)
    assert other.model_id != enc.model_id
    with pytest.raises(SearchIndexError, match="cannot be compared"):
        index_images([str(folder)], db, other, progress=False)
    with ImageIndex(db, readonly=True) as idx, pytest.raises(VlmkitError, match="cannot be compared"):
        search(idx, other, text="anything")
    r = index_images([str(folder)], db, other, rebuild=True, progress=False)
    assert r.added == 6 and rows(db)[2] == other.model_id


def test_moved_file_reuses_its_vector_and_scopes_are_respected(tmp_path, folder, enc):
    db = tmp_path / "db"
    other = tmp_path / "other"
    other.mkdir()
    write_image(other / "x.png", 50)
    index_images([str(folder)], db, enc, progress=False)
    index_images([str(other)], db, enc, progress=False)
    assert len(rows(db)[0]) == 7  # indexing another folder does not delete the first one's images
    os.rename(folder / "img0.png", folder / "moved.png")
    c = Counting(enc)
    r = index_images([str(folder)], db, c, progress=False)
    assert (r.added, r.reused, r.removed, c.images) == (1, 1, 1, 0)
    # a glob scopes deletions to what it matches
    os.remove(other / "x.png")
    r = index_images([str(folder / "*.png")], db, enc, progress=False)
    assert r.removed == 0 and str(other / "x.png") in rows(db)[0]


def test_usearch_agrees_with_exact_search(tmp_path, enc):
    d = tmp_path / "imgs"
    d.mkdir()
    files = [write_image(d / f"{i}.png", 200 + i) for i in range(30)]
    db = tmp_path / "db"
    index_images([str(d)], db, enc, progress=False)
    with ImageIndex(db, readonly=True) as idx:
        q = enc.encode_images(files[:10]).numpy()
        ann = [[h.id for h in hits] for hits in idx.search(q, 5)]
        ex = ExactStore(16)
        for ids, vecs in idx._vectors_since(0):
            ex.upsert(ids, vecs)
        exact_ids, exact_scores = ex.search(q, 5)
        ann_scores = [[h.score for h in hits] for hits in idx.search(q, 5)]
    assert ann == exact_ids.tolist()
    np.testing.assert_allclose(ann_scores, exact_scores, atol=1e-5)


def test_cli_index_and_search(tmp_path, folder, enc, capsys):
    model = tmp_path / "model"
    enc.save_pretrained(model)
    db = tmp_path / "db"
    (folder / "bad.png").write_bytes(b"nope")
    assert main(["index", str(folder), "--db", str(db), "--model", str(model), "--json", "--no-progress"]) == 0
    out = capsys.readouterr()
    rep = json.loads(out.out)
    assert rep["added"] == 6 and rep["failed"][0]["path"].endswith("bad.png")
    assert "skipped" in out.err and "bad.png" in out.err
    # search finds the model the index recorded
    assert main(["search", "--image", str(folder / "img3.png"), "--db", str(db), "-k", "2", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["results"][0]["path"] == str(folder / "img3.png") and len(res["results"]) == 2
    assert main(["search", "a red square", "--db", str(db), "-k", "3"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["rank", "score", "path"] and len(table) == 4
    # bad input: one clear line, exit 2
    assert main(["search", "--db", str(db)]) == 2
    assert "give a text query" in capsys.readouterr().err
    assert main(["search", "x", "--db", str(tmp_path / "nowhere")]) == 2
    assert "no index at" in capsys.readouterr().err


def test_switching_backend_rebuilds_from_sqlite(tmp_path, folder, enc):
    db = tmp_path / "db"
    index_images([str(folder)], db, enc, progress=False)
    with ImageIndex(db, backend="exact", readonly=True) as idx:
        assert len(idx.store) == 6
        assert idx.search(enc.encode_images([str(folder / "img2.png")]).numpy(), 1)[0][0].path == str(folder / "img2.png")
