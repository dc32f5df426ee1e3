"""Map-style views of a source as (PIL image, record) pairs, for training code that never writes files.

The record is the exact JSON the exporter writes, with "image" set to a name
(`<id>.png`) instead of a path on disk.
"""
from __future__ import annotations

from typing import Iterator

from PIL import Image

from .sample import DataError

KINDS = ("conversation", "caption", "eval", "truth")


class RecordView:
    """`view[i]` -> (image, record) for conversation/caption/truth; for "eval", a list of records per image."""

    def __init__(self, source, kind: str = "conversation"):
        if kind not in KINDS:
            raise DataError(f"unknown record kind {kind!r}; choose from {', '.join(KINDS)}")
        self.source, self.kind = source, kind

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[Image.Image, dict | list[dict]]:
        s = self.source[i]
        name = f"{s.id}.png"
        if self.kind == "conversation":
            return s.image, s.conversation(name)
        if self.kind == "caption":
            return s.image, s.caption_record(name)
        if self.kind == "eval":
            return s.image, s.eval_records(name)
        return s.image, s.truth_record(name)

    def __iter__(self) -> Iterator[tuple[Image.Image, dict | list[dict]]]:
        for i in range(len(self)):
            yield self[i]
