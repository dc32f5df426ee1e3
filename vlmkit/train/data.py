"""Training data: LLaVA-style conversations, caption pairs and local Hugging Face datasets.

Records are read up front (they are small); images load lazily in __getitem__,
so a DataLoader's worker processes decode them in parallel. A sample that
cannot be used (missing or corrupt image, no assistant turn, too long) comes
back as {"skip": reason} and is counted by the collator, never raised mid-epoch.

Formats (shared with the data and eval engineers):
  conversations: {"id", "image" | "images", "conversations": [{"from": "human"|"gpt", "value"}]}
  captions:      {"id", "image", "text"}
Image paths are relative to the JSONL file's folder unless absolute. A data.train entry may be a glob
("data/shapes-shards/*/conversations.jsonl") for data written in shards; it expands in sorted order.
"""
from __future__ import annotations

import glob
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch.utils.data import Dataset, Sampler

from .config import ConfigError

log = logging.getLogger(__name__)

HF_SUFFIXES = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv"}


class SkipSample(Exception):
    """Raised by an encoder: the sample is unusable for the given reason (a short counter key)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(detail or reason)
        self.reason = reason


@dataclass
class Records:
    """Raw records plus the folder their relative image paths hang off, and what was unreadable."""

    rows: list[dict] = field(default_factory=list)
    roots: list[Path] = field(default_factory=list)  # one per row
    bad_lines: Counter = field(default_factory=Counter)


def read_json_records(path: Path) -> Records:
    """A .jsonl file (one record a line) or a .json list. Unparseable lines are counted, not fatal."""
    if not path.is_file():
        raise ConfigError(f"data file not found: {path}")
    out = Records()
    root = path.resolve().parent
    if path.suffix == ".json":
        try:
            rows = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON: {e}") from None
        rows = rows if isinstance(rows, list) else [rows]
    else:
        rows = []
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                out.bad_lines["bad_record"] += 1
    for r in rows:
        if isinstance(r, dict):
            out.rows.append(r)
            out.roots.append(root)
        else:
            out.bad_lines["bad_record"] += 1
    return out


def read_hf_records(path: Path, hf_format: str = "") -> Records:
    """A local Hugging Face dataset: parquet/arrow/csv files, or an imagefolder directory (metadata.jsonl)."""
    try:
        import datasets
    except ImportError:
        raise ConfigError("reading Hugging Face datasets needs the `datasets` package: pip install datasets") from None
    if not path.exists():
        raise ConfigError(f"training data not found: {path}")
    fmt = hf_format or (HF_SUFFIXES.get(path.suffix) if path.is_file() else "imagefolder")
    if fmt is None:
        raise ConfigError(f"cannot tell the dataset format of {path}: set data.hf_format")
    files = sorted(path.glob(f"*{_suffix_of(fmt)}")) if path.is_dir() and fmt != "imagefolder" else None
    kw = {"data_dir": str(path)} if fmt == "imagefolder" else {"data_files": [str(f) for f in files] if files else str(path)}
    try:
        ds = datasets.load_dataset(fmt, split="train", **kw)
    except Exception as e:  # datasets raises many types for bad files
        raise ConfigError(f"cannot read {path} as a {fmt} dataset: {e}") from None
    out = Records()
    root = path.resolve() if path.is_dir() else path.resolve().parent
    out.rows = [dict(r) for r in ds]  # images stay lazily decodable (PIL with its file handle)
    out.roots = [root] * len(out.rows)
    return out


def _suffix_of(fmt: str) -> str:
    return {"parquet": ".parquet", "arrow": ".arrow", "csv": ".csv", "json": ".json*"}.get(fmt, "")


def record_kind(row: dict) -> str:
    if "conversations" in row:
        return "conversations"
    return "captions"


def load_records(paths: list[str], fmt: str = "auto", hf_format: str = "", image_column: str = "image",
                 text_column: str = "text") -> Records:
    if not paths:
        raise ConfigError("data.train is empty: give one or more JSONL files or dataset folders")
    out = Records()
    for p in map(Path, expand_globs(paths)):
        is_hf = fmt == "hf" or (fmt == "auto" and (p.is_dir() or p.suffix in HF_SUFFIXES))
        part = read_hf_records(p, hf_format) if is_hf else read_json_records(p)
        if image_column != "image" or text_column != "text":
            part.rows = [_rename(r, image_column, text_column) for r in part.rows]
        out.rows += part.rows
        out.roots += part.roots
        out.bad_lines.update(part.bad_lines)
    if not out.rows:
        raise ConfigError(f"no usable records in {', '.join(paths)}")
    return out


def expand_globs(paths: list[str]) -> list[str]:
    """Each glob in `paths` replaced by its matches, sorted so that a run's order does not depend on the file system."""
    out = []
    for p in paths:
        if not glob.has_magic(p):
            out.append(p)
            continue
        matches = sorted(glob.glob(p))
        if not matches:
            raise ConfigError(f"training data not found: nothing matches {p}")
        out += matches
    return out


def _rename(row: dict, image_column: str, text_column: str) -> dict:
    row = dict(row)
    if image_column in row:
        row["image"] = row.pop(image_column)
    if text_column in row:
        row["text"] = row.pop(text_column)
    return row


def resolve_image(ref, root: Path):
    """A path relative to the data file's folder (or absolute), or an in-memory image from an HF dataset."""
    if isinstance(ref, str):
        p = Path(ref)
        return p if p.is_absolute() else root / p
    if isinstance(ref, dict) and ref.get("bytes"):  # datasets' undecoded Image feature
        return ref["bytes"]
    if isinstance(ref, dict) and ref.get("path"):
        return resolve_image(ref["path"], root)
    return ref  # PIL image or bytes


def record_length(row: dict) -> int:
    turns = row.get("conversations") or row.get("messages")
    if isinstance(turns, list):
        return sum(len(str(t.get("value", t.get("content", "")))) for t in turns if isinstance(t, dict))
    return len(str(row.get("text", row.get("caption", ""))))


class TrainDataset(Dataset):
    """Records + an encoder (record, root) -> dict of tensors; unusable samples become {"skip": reason}."""

    def __init__(self, records: Records, encode: Callable[[dict, Path], dict]):
        self.records = records
        self.encode = encode

    def __len__(self) -> int:
        return len(self.records.rows)

    def lengths(self) -> list[int]:
        """A cheap length proxy per record (characters of text), for length-grouped batches."""
        return [record_length(r) for r in self.records.rows]

    def __getitem__(self, i: int) -> dict:
        row = self.records.rows[i]
        try:
            return self.encode(row, self.records.roots[i])
        except SkipSample as e:
            log.debug("skip %s: %s", row.get("id", i), e)
            return {"skip": e.reason, "id": str(row.get("id", i))}


GROUP = 32  # global batches per length-sorted mega-batch


class EpochBatchSampler(Sampler):
    """Deterministic batches: a permutation from (seed, epoch), cut into global batches of
    batch_size * world_size, this rank taking its contiguous slice of each.

    `start` skips the first batches of the epoch without loading them, so a
    resumed run sees exactly the batches an uninterrupted run would.
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1,
                 lengths: list[int] | None = None):
        self.n, self.batch_size, self.seed, self.shuffle = n, batch_size, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.lengths = lengths  # given: batches group samples of similar length (see batches())
        self.epoch, self.start = 0, 0
        if self.num_batches() == 0:
            raise ConfigError(f"{n} samples are fewer than one global batch ({batch_size} x {world_size} processes)")

    def set_position(self, epoch: int, start: int) -> None:
        self.epoch, self.start = epoch, start

    def num_batches(self) -> int:
        g = self.batch_size * self.world_size
        # every process needs the same count; one process may keep a short last batch
        return self.n // g if self.world_size > 1 else -(-self.n // g)

    def __len__(self) -> int:
        return self.num_batches() - self.start

    def order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def batches(self) -> list[list[int]]:
        """This epoch's global batches, a pure function of (seed, epoch).

        With lengths, as transformers' group_by_length does: the shuffled order is cut into
        mega-batches of GROUP global batches, each sorted by length, cut into batches, and the
        batches shuffled. A batch is padded to its longest sample, so on a mixture of 40-token
        reading samples and 400-token easy-vqa conversations ungrouped batches are mostly padding."""
        order, g = self.order(), self.batch_size * self.world_size
        if self.lengths is not None and self.shuffle:
            mega = g * GROUP
            order = [i for k in range(0, len(order), mega)
                     for i in sorted(order[k:k + mega], key=lambda i: -self.lengths[i])]
        out = [order[b * g:(b + 1) * g] for b in range(self.num_batches())]
        if self.lengths is not None and self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch + 7_919)
            out = [out[i] for i in torch.randperm(len(out), generator=gen).tolist()]
        return out

    def __iter__(self) -> Iterator[list[int]]:
        for chunk in self.batches()[self.start:]:
            yield chunk[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]


def make_loader(dataset: Dataset, sampler: EpochBatchSampler, collate: Callable, num_workers: int = 0, seed: int = 0):
    from torch.utils.data import DataLoader

    # its own generator: creating an iterator must not draw from the global RNG, or a resumed
    # run (which creates one at a different moment) would see different random numbers
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers,
                      persistent_workers=False, prefetch_factor=2 if num_workers else None,
                      generator=torch.Generator().manual_seed(seed))


@dataclass
class DataPosition:
    """Where a run is in its data: saved in the checkpoint's state JSON."""

    epoch: int = 0
    batch: int = 0  # micro-batches of this epoch already consumed


def micro_batches(loader, sampler: EpochBatchSampler, pos: DataPosition) -> Iterator[dict]:
    """An endless stream of micro-batches across epochs; `pos` always names the next one."""
    while True:
        sampler.set_position(pos.epoch, pos.batch)
        for batch in loader:
            pos.batch += 1
            yield batch
        pos.epoch, pos.batch = pos.epoch + 1, 0
