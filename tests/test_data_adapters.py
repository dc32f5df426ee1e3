"""Adapters: the IDX reader, Fashion-MNIST, digits and easy-vqa, with content-disjoint splits."""
from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from vlmkit.data import DataError, make_source
from vlmkit.data.classification import FASHION_DIR, FASHION_LABELS, _digits, _fashion, fashion_dir
from vlmkit.data.fixed import partition
from vlmkit.data.idx import parse_idx, read_idx, write_idx
from vlmkit.data.seeding import image_hash

HAVE_FASHION = all(__import__("os").path.isfile(f"{FASHION_DIR}/{f}") for f in ("train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"))


# ---- IDX --------------------------------------------------------------------------------------------------------

def test_idx_reader_on_a_hand_written_file(tmp_path):
    # written byte by byte, not with our writer: magic 0x00000803, dims 2x2x3, then 12 bytes
    raw = bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 2, 2, 3) + bytes(range(12))
    (tmp_path / "a.idx").write_bytes(raw)
    (tmp_path / "a.idx.gz").write_bytes(gzip.compress(raw))
    for name in ("a.idx", "a.idx.gz"):
        a = read_idx(tmp_path / name)
        assert a.shape == (2, 2, 3) and a.dtype == np.uint8
        assert a[1, 0, 2] == 8 and a.sum() == sum(range(12))


@pytest.mark.parametrize("dtype", ["u1", "i1", "i2", "i4", "f4", "f8"])
def test_idx_round_trip_keeps_values_and_byte_order(tmp_path, dtype):
    a = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    write_idx(tmp_path / "x.gz", a)
    b = read_idx(tmp_path / "x.gz")
    assert b.dtype == np.dtype(dtype).newbyteorder("=") and np.array_equal(a, b)
    if dtype == "i2":  # big-endian on disk, as the format says
        raw = gzip.decompress((tmp_path / "x.gz").read_bytes())
        assert raw[:4] == bytes([0, 0, 0x0B, 3]) and raw[16:18] == struct.pack(">h", -5)


def test_idx_errors_are_clear(tmp_path):
    with pytest.raises(DataError, match="not an IDX file"):
        parse_idx(b"\x01\x02\x03\x04rest")
    with pytest.raises(DataError, match="needs 6 data bytes"):
        parse_idx(bytes([0, 0, 8, 1]) + struct.pack(">I", 6) + b"abc")
    with pytest.raises(DataError, match="too short"):
        parse_idx(b"\x00")
    (tmp_path / "bad.gz").write_bytes(b"\x1f\x8b" + b"garbage")
    with pytest.raises(DataError, match="corrupt gzip"):
        read_idx(tmp_path / "bad.gz")
    with pytest.raises(DataError, match="no such file"):
        read_idx(tmp_path / "missing")


@pytest.mark.skipif(not HAVE_FASHION, reason="apt package dataset-fashion-mnist not installed")
def test_idx_reader_on_the_real_fashion_mnist_files():
    x, y = read_idx(f"{FASHION_DIR}/t10k-images-idx3-ubyte.gz"), read_idx(f"{FASHION_DIR}/t10k-labels-idx1-ubyte.gz")
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8 and y.shape == (10000,)
    assert np.bincount(y).tolist() == [1000] * 10  # the test split is balanced
    assert 60 < x.mean() < 90  # garments on black, not noise or zeros


# ---- Fashion-MNIST ----------------------------------------------------------------------------------------------

def test_missing_fashion_mnist_names_the_apt_package(tmp_path, monkeypatch):
    monkeypatch.setenv("VLMKIT_FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(DataError, match="apt-get install -y dataset-fashion-mnist"):
        make_source("fashion-mnist")


def test_fashion_mnist_from_a_tiny_fake_install(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    train_x = rng.integers(0, 256, (50, 28, 28), dtype=np.uint8)
    test_x = rng.integers(0, 256, (10, 28, 28), dtype=np.uint8)
    train_x[7] = test_x[3]  # one training image is also a test image: it must never be trained on
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", train_x)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(50, dtype=np.uint8) % 10)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", test_x)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(10, dtype=np.uint8))
    monkeypatch.setenv("VLMKIT_FASHION_MNIST_DIR", str(tmp_path))
    splits = {s: list(make_source("fashion-mnist", s)) for s in ("train", "val", "test")}
    assert len(splits["test"]) == 10 and len(splits["train"]) + len(splits["val"]) == 49
    assert "fashion-mnist-train-00007" not in {x.id for x in splits["train"] + splits["val"]}
    s = next(x for x in splits["test"] if x.id == "fashion-mnist-test-00003")
    assert s.label == FASHION_LABELS[3] == "dress" and s.label_id == 3 and s.caption == "a photo of a dress"
    assert np.array_equal(np.asarray(s.image)[..., 0], test_x[3]) and s.image.mode == "RGB"
    assert make_source("fashion-mnist", "test", n=1)[0].qa[0].answer in FASHION_LABELS


@pytest.mark.skipif(not HAVE_FASHION, reason="apt package dataset-fashion-mnist not installed")
def test_real_fashion_mnist_splits_are_disjoint_and_complete():
    data = _fashion(fashion_dir())
    parts = partition(data["train"]["hashes"], data["test"]["hashes"])
    assert len(parts["test"]) == 10000 and len(parts["train"]) + len(parts["val"]) <= 60000
    assert 0.08 < len(parts["val"]) / 60000 < 0.12
    hashes = {s: {data[o]["hashes"][i] for o, i in parts[s]} for s in parts}
    assert not hashes["train"] & hashes["val"] and not hashes["train"] & hashes["test"] and not hashes["val"] & hashes["test"]
    s = make_source("fashion-mnist", "val", seed=0, n=3)[0]
    assert s.caption == f"a photo of {'an' if s.label[0] in 'aeiou' else 'a'} {s.label}"


# ---- digits and easy-vqa ----------------------------------------------------------------------------------------

def test_digits_splits_cover_the_set_without_sharing_an_image():
    data = _digits()
    srcs = {s: make_source("digits", s) for s in ("train", "val", "test")}
    assert sum(len(v) for v in srcs.values()) == len(data["train"]["x"]) == 1797
    px = {s: {image_hash(x.image) for x in v} for s, v in srcs.items()}
    assert not px["train"] & px["val"] and not px["train"] & px["test"] and not px["val"] & px["test"]
    s = srcs["test"][0]
    assert s.label == f"digit {s.label_id}" and s.caption == f"a photo of a digit {s.label_id}"
    assert np.asarray(s.image).max() > 200  # 0..16 scaled to 0..255


def test_seed_orders_a_fixed_split_but_never_changes_it():
    a, b = make_source("digits", "val", seed=0), make_source("digits", "val", seed=1)
    assert {x.id for x in a} == {x.id for x in b} and [x.id for x in a] != [x.id for x in b]
    assert [x.id for x in make_source("digits", "val", seed=1, n=5)] == [x.id for x in b][:5]


def test_easy_vqa_keeps_its_test_split_and_divides_train():
    pytest.importorskip("easy_vqa")
    from vlmkit.data.easyvqa import _index

    sizes = {s: len(make_source("easy-vqa", s)) for s in ("train", "val", "test")}
    assert sizes["test"] == 1000 and sizes["train"] + sizes["val"] <= 4000 and 300 < sizes["val"] < 500
    ix = _index()
    parts = partition(ix["train"]["hashes"], ix["test"]["hashes"])
    hashes = {s: {ix[o]["hashes"][i] for o, i in parts[s]} for s in parts}
    assert not hashes["train"] & hashes["val"] and not hashes["train"] & hashes["test"] and not hashes["val"] & hashes["test"]
    s = make_source("easy-vqa", "test", n=1)[0]
    assert s.id.startswith("easy-vqa-test-") and len(s.qa) >= 2 and {q.slice for q in s.qa} == {"easy-vqa"}
    colour = next(q.answer for q in s.qa if q.question.startswith("what color"))
    assert colour in s.caption


def test_easy_vqa_captions_come_from_the_answers():
    from vlmkit.data.easyvqa import caption_from_answers

    assert caption_from_answers([("what is the blue shape?", "circle")]) == "A blue circle."
    assert caption_from_answers([("is there not a red shape?", "no"), ("does the image contain a triangle?", "yes")]) == "A red triangle."
    assert caption_from_answers([("is there a red shape?", "no")]) == "A shape."
