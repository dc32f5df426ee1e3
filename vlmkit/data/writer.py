"""Write a source to disk in the shared formats.

DIR/
  images/                PNG (classification sources: images/<label>/, an image folder)
  conversations.jsonl    {"id", "image", "conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", ...}]}
  captions.jsonl         {"id", "image", "text"}
  eval.jsonl             {"id", "image", "question", "answers", "metric", "slice"[, "kind": a finer group in the slice]}
  task.json              {"name", "samples": "eval.jsonl", "pass_bars", "max_new_tokens"}: `vlmkit eval --tasks DIR/task.json`
  truth.jsonl            the generator's full ground truth per image (boxes, values, receipt fields)
  labels.jsonl, classes.json   classification sources only: {"id", "image", "label", "label_id"} and the class names
  manifest.json          what was made and how, with counts per slice (no timestamps: same seed, same bytes)

Everything is written to a hidden sibling folder first and renamed into place at
the end, so an interrupted run never leaves a half dataset under DIR.
"""
from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from dataclasses import asdict, is_dataclass
from pathlib import Path

from .sample import DataError

JSONL = ("conversations", "captions", "eval", "truth")


def export(source, out_dir: str | os.PathLike, overwrite: bool = False, progress: bool = True,
           pass_bars: dict[str, float] | None = None, png_compress_level: int = 3, meta: dict | None = None) -> dict:
    """Write every sample of `source` under out_dir; returns the manifest."""
    from tqdm import tqdm

    from . import PASS_BARS

    out = Path(out_dir)
    _check_target(out, overwrite)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    classes = getattr(source, "classes", None)
    names = JSONL + (("labels",) if classes else ())
    slices: Counter = Counter()
    longest = 0
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "images").mkdir(parents=True)
        files = {k: open(tmp / f"{k}.jsonl", "w", encoding="utf-8") for k in names}
        try:
            for sample in tqdm(source, total=len(source), desc=f"{source.name} {source.split}", unit="img",
                               disable=not progress, dynamic_ncols=True):
                rel = f"images/{_slug(sample.label)}/{sample.id}.png" if classes else f"images/{sample.id}.png"
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                sample.image.save(tmp / rel, format="PNG", compress_level=png_compress_level)
                _write(files["conversations"], sample.conversation(rel))
                _write(files["captions"], sample.caption_record(rel))
                _write(files["truth"], sample.truth_record(rel))
                for rec in sample.eval_records(rel):
                    _write(files["eval"], rec)
                    slices[rec["slice"]] += 1
                    longest = max(longest, max(len(a) for a in rec["answers"]))
                if classes:
                    _write(files["labels"], {"id": sample.id, "image": rel, "label": sample.label, "label_id": sample.label_id})
        finally:
            for f in files.values():
                f.close()
        bars = PASS_BARS if pass_bars is None else pass_bars
        task = {"name": f"{source.name}-{source.split}", "samples": "eval.jsonl",
                "pass_bars": {s: bars[s] for s in slices if s in bars},
                # digits are a token each in small-LM tokenizers, so characters bound the tokens
                "max_new_tokens": min(1024, max(16, longest + 8))}
        manifest = {"source": source.name, "split": source.split, "seed": source.seed, "n": len(source),
                    "config": _config(source), "counts": {"images": len(source), "eval": sum(slices.values()),
                                                          "slices": dict(sorted(slices.items()))},
                    "files": sorted([f"{k}.jsonl" for k in names] + ["task.json", "manifest.json", "images/"]
                                    + (["classes.json"] if classes else []))}
        if meta:
            manifest.update(meta)
        _dump(tmp / "task.json", task)
        _dump(tmp / "manifest.json", manifest)
        if classes:
            _dump(tmp / "classes.json", classes)
        _swap_in(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"writing {out}: {e.strerror or e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _check_target(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise DataError(f"{out} is not empty; pass --overwrite to replace a dataset made by `vlmkit data make`")
        if not (out / "manifest.json").is_file():
            raise DataError(f"{out} is not empty and holds no manifest.json from `vlmkit data make`; refusing to replace it")


def _swap_in(tmp: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write(f, rec: dict) -> None:
    f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def _dump(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _slug(label: str | None) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in str(label)).strip("-") or "unlabelled"


def _config(source) -> dict:
    """The generator settings behind a synthetic source, so a reader can remake it."""
    gens = getattr(source, "generators", None)
    if not gens:
        return {}
    out = {}
    for name, (gen, weight) in gens.items():
        cfg = asdict(gen.cfg) if is_dataclass(gen.cfg) else {}  # a custom AugmentConfig comes out as a dict too
        out[name] = {"weight": weight, **cfg}
    return out
