"""Seeds and splits that are reproducible on any machine and never overlap.

Python's hash() is salted per process, so every seed and bucket comes from
blake2b over a text key. A sample's split is a function of its *content key*
(the scene layout, the word, the chart values, the image bytes), never of its
position in a list: two identical scenes can only ever land in the same split,
and a new seed cannot move content from test into train.
"""
from __future__ import annotations

import hashlib

SPLITS = ("train", "val", "test")
# Fractions of the content-key space; buckets are per mille.
SPLIT_FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}
_BOUNDS = {"train": (0, 800), "val": (800, 900), "test": (900, 1000)}


def digest(*parts) -> bytes:
    key = "\x1f".join(str(p) for p in parts)
    return hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()


def derive_seed(*parts) -> int:
    """A 63-bit seed from any parts (name, split, user seed, index, attempt)."""
    return int.from_bytes(digest(*parts), "big") >> 1


def split_of_key(key: str | bytes) -> str:
    """The split that owns a content key (train 80%, val 10%, test 10%)."""
    raw = key if isinstance(key, bytes) else key.encode("utf-8")
    bucket = int.from_bytes(hashlib.blake2b(raw, digest_size=8, person=b"vlmkit-split").digest(), "big") % 1000
    for split, (lo, hi) in _BOUNDS.items():
        if lo <= bucket < hi:
            return split
    raise AssertionError(bucket)


def check_split(split: str) -> str:
    from .sample import DataError

    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    return split


def image_hash(img) -> str:
    """Hash of decoded pixels (mode, size, bytes), so PNG encoder settings do not matter."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{img.mode}|{img.size}".encode())
    h.update(img.tobytes())
    return h.hexdigest()
