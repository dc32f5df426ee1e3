"""Fashion-MNIST and scikit-learn digits as "a photo of a {label}" captions (a/an as English wants) plus labels.

For contrastive training and zero-shot tests. Fashion-MNIST comes from the
Debian package `dataset-fashion-mnist` (IDX files); its test split is ours,
its training split divides into train and val by pixel hash. Digits have no
official split, so all three come from the pixel hash.
"""
from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import numpy as np
from PIL import Image

from .fixed import FixedSource, partition
from .idx import read_idx
from .sample import QA, DataError, Sample

FASHION_LABELS = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]
DIGIT_LABELS = [f"digit {d}" for d in range(10)]
FASHION_DIR = "/usr/share/datasets/fashion-mnist"  # where `apt-get install dataset-fashion-mnist` puts it
FASHION_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                 "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
QUESTION = "What is this a photo of?"


def caption_for(label: str) -> str:
    return f"a photo of {'an' if label[0] in 'aeiou' else 'a'} {label}"


def fashion_dir() -> Path:
    d = Path(os.environ.get("VLMKIT_FASHION_MNIST_DIR", FASHION_DIR))
    missing = [f for pair in FASHION_FILES.values() for f in pair if not (d / f).is_file()]
    if missing:
        raise DataError(f"Fashion-MNIST not found in {d} (missing {missing[0]}): install the Debian package with "
                        "`apt-get install -y dataset-fashion-mnist`, or point VLMKIT_FASHION_MNIST_DIR at the IDX files")
    return d


def _row_hashes(name: str, images: np.ndarray) -> list[str]:
    return [f"{name}|" + hashlib.blake2b(row.tobytes(), digest_size=16).hexdigest() for row in images]


@functools.lru_cache(maxsize=2)
def _fashion(d: Path) -> dict:
    out = {}
    for official, (xf, yf) in FASHION_FILES.items():
        x, y = read_idx(d / xf), read_idx(d / yf)
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"{d}: {xf} {x.shape} and {yf} {y.shape} do not pair up as images and labels")
        out[official] = {"x": x.astype(np.uint8), "y": y.astype(np.int64), "hashes": _row_hashes("fashion-mnist", x)}
    return out


@functools.lru_cache(maxsize=1)
def _digits() -> dict:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("scikit-learn is not installed: run `pip install scikit-learn` for the digits data") from None
    d = load_digits()
    x = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)  # [N, 8, 8], 0..16 -> 0..255
    return {"train": {"x": x, "y": d.target.astype(np.int64), "hashes": _row_hashes("digits", x)}}


def _source(name: str, data: dict, labels: list[str], split: str, seed: int, n: int | None) -> FixedSource:
    parts = partition(data["train"]["hashes"], data["test"]["hashes"] if "test" in data else None)

    def load(entry) -> Sample:
        official, k = entry
        y = int(data[official]["y"][k])
        img = Image.fromarray(data[official]["x"][k]).convert("RGB")
        return Sample(id=f"{name}-{official}-{k:05d}", image=img, caption=caption_for(labels[y]),
                      qa=[QA(QUESTION, labels[y], name, "exact")],
                      truth={"official_split": official, "index": k, "label": labels[y], "label_id": y},
                      source=name, split=split, label=labels[y], label_id=y)

    return FixedSource(name, split, seed, n, parts[split], load, slices=[name], classes=list(labels))


def fashion_mnist(split: str = "train", seed: int = 0, n: int | None = None) -> FixedSource:
    return _source("fashion-mnist", _fashion(fashion_dir()), FASHION_LABELS, split, seed, n)


def digits(split: str = "train", seed: int = 0, n: int | None = None) -> FixedSource:
    return _source("digits", _digits(), DIGIT_LABELS, split, seed, n)
