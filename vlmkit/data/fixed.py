"""Fixed datasets (easy-vqa, Fashion-MNIST, digits) as map-style sources, split by image content.

A dataset's own test split stays the test split. Its training images are
divided into train and val by a hash of their pixels, and any training image
whose pixels also occur in the test split is dropped, so no image is ever in
two splits. The user's seed only chooses and orders samples within a split.
"""
from __future__ import annotations

import random
from typing import Callable, Iterator, Sequence

from .sample import Sample
from .seeding import check_split, derive_seed, split_of_key


def content_split(key: str, has_test: bool) -> str:
    """train/val/test by content; with an official test split, the 'test' share of training data stays in train."""
    s = split_of_key(key)
    return "train" if has_test and s == "test" else s


def partition(train_keys: Sequence[str], test_keys: Sequence[str] | None) -> dict[str, list[tuple[str, int]]]:
    """-> {split: [(official split, index), ...]} with no pixel hash shared across splits."""
    out: dict[str, list[tuple[str, int]]] = {"train": [], "val": [], "test": []}
    test_set = set(test_keys or ())
    if test_keys is not None:
        out["test"] = [("test", i) for i in range(len(test_keys))]
    for i, key in enumerate(train_keys):
        if key in test_set:
            continue  # the same picture is in the official test split: it may not be trained on
        out[content_split(key, test_keys is not None)].append(("train", i))
    return out


class FixedSource:
    """`len()` and `source[i]` over one split of a fixed dataset, ordered by the seed."""

    def __init__(self, name: str, split: str, seed: int, n: int | None, entries: list, load: Callable[[object], Sample],
                 slices: Sequence[str], classes: list[str] | None = None):
        self.name, self.split, self.seed = name, check_split(split), int(seed)
        order = list(range(len(entries)))
        random.Random(derive_seed(name, split, seed, "order")).shuffle(order)
        self._entries = [entries[j] for j in (order if n is None else order[:n])]
        self._load = load
        self.slices = list(slices)
        self.classes = classes

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self[i]

    def __getitem__(self, i: int) -> Sample:
        return self._load(self._entries[i])
