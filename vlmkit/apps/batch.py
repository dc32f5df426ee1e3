"""Batch extraction: a folder of images in, one JSON line per image out; resumable; a bad file is a row, not a crash.

    summary = run_batch("scans/", "out.jsonl", Extractor("receipt"))

Each row is {"id": path relative to the folder, "path", ...Extraction.to_dict()},
or {"id", "path", "error": "one line"} when that image could not be read or
extracted. Rows are flushed and fsynced one by one, so an interrupted run
loses at most the image in progress; running again skips every id already in
the file (error rows too, unless retry_errors, whose new rows then follow the
old ones: the last row for an id is the one that counts).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import VlmkitError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


@dataclass
class BatchSummary:
    total: int = 0  # images found
    skipped: int = 0  # already in the output
    verified: int = 0
    needs_review: int = 0
    errors: int = 0

    def line(self) -> str:
        return (f"{self.total} images: {self.verified} verified, {self.needs_review} need review, {self.errors} errors, "
                f"{self.skipped} already done")


def find_images(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    root = Path(folder)
    if not root.is_dir():
        raise VlmkitError(f"{root}: not a folder")
    files = root.rglob("*") if recursive else root.iterdir()
    return sorted(p for p in files if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def done_ids(out_path: Path, retry_errors: bool = False) -> set[str]:
    """Ids with a row in the output already (rows cut short by a crash are ignored)."""
    ids: set[str] = set()
    if not out_path.is_file():
        return ids
    with open(out_path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and "id" in row:
                if retry_errors and row.get("error"):
                    ids.discard(row["id"])
                else:
                    ids.add(row["id"])
    return ids


def run_batch(folder: str | os.PathLike, out_path: str | os.PathLike, extractor, recursive: bool = False,
              retry_errors: bool = False, progress: bool = True) -> BatchSummary:
    from tqdm.auto import tqdm

    root, out = Path(folder), Path(out_path)
    images = find_images(root, recursive)
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    done = done_ids(out, retry_errors)
    summary = BatchSummary(total=len(images))
    todo = [p for p in images if _id(p, root) not in done]
    summary.skipped = len(images) - len(todo)
    _end_with_newline(out)
    with open(out, "a", encoding="utf-8") as f, tqdm(total=len(images), initial=summary.skipped, unit="image",
                                                      desc="extract", disable=not progress, dynamic_ncols=True) as bar:
        for p in todo:
            rid = _id(p, root)
            try:
                r = extractor(p, source=str(p))
                row = {"id": rid, "path": str(p), **r.to_dict()}
                summary.verified += r.verified
                summary.needs_review += not r.verified
            except VlmkitError as e:
                row = {"id": rid, "path": str(p), "error": str(e)}
                summary.errors += 1
            except Exception as e:  # one broken file must not stop a night's batch
                row = {"id": rid, "path": str(p), "error": f"{type(e).__name__}: {e}"}
                summary.errors += 1
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
            bar.update(1)
            bar.set_postfix(verified=summary.verified, review=summary.needs_review, errors=summary.errors, refresh=False)
    return summary


def _id(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _end_with_newline(path: Path) -> None:
    """A run killed mid-line leaves a partial row: start the next one on a line of its own."""
    if path.is_file() and path.stat().st_size:
        with open(path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")
