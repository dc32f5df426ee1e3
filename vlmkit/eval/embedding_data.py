"""Data for the built-in embedding tasks, written from held-out test splits (formats in embedding.py).

retrieval: N test-split scenes per source. Text-to-image pairs each image as its generator makes it
(with the generator's default light augmentation) with its caption. Image-to-image renders the same
scene clean, then "photographs" it twice with the "photo" preset (rotation, perspective, lighting,
blur, noise, JPEG): two views of one scene, never pixel-identical (an identical pair is a free match).
zeroshot-fmnist: Fashion-MNIST's official test split (never trained on, never used for a choice), in the
source's seeded order, so `--limit 2000` is the same 2,000 images bench/zeroshot/run.py measures.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Sequence

from PIL import Image

from ..data import DataError, make_source
from ..data.augment import AugmentConfig, augment, get_preset
from ..data.seeding import derive_seed

# receipts are left out: a 384-px-wide page shrunk to a small encoder's input is unreadable
RETRIEVAL_SOURCES = ("shapes", "text", "charts")
RETRIEVAL_N, VIEW_PRESET, HELD_OUT = 200, "photo", "test"
MAX_VIEW_ATTEMPTS = 20


def _save(img: Image.Image, out: Path, rel: str) -> str:
    img.save(out / rel, format="PNG", compress_level=3)
    return rel


def two_views(img: Image.Image, key: str, cfg: AugmentConfig) -> tuple[Image.Image, Image.Image]:
    """Two augmentations of one image, seeded by key; the second is redrawn while it equals the first."""
    fill = img.getpixel((0, 0))  # a corner is background in every generator, so a warp's uncovered border matches it
    a = augment(img, random.Random(derive_seed(key, "view", "a")), cfg, fill)
    for attempt in range(MAX_VIEW_ATTEMPTS):
        b = augment(img, random.Random(derive_seed(key, "view", "b", attempt)), cfg, fill)
        if b.tobytes() != a.tobytes():
            return a, b
    raise DataError(f"{key}: {MAX_VIEW_ATTEMPTS} augmentations all equal the first view (is the preset the identity?)")


def _retrieval_record(out: Path, shown, clean, cfg: AugmentConfig) -> dict:
    # held out, and the two renders are one scene (a scene's content is drawn before any augmentation)
    if shown.split != HELD_OUT or clean.id != shown.id:
        raise DataError(f"retrieval pairs must be one {HELD_OUT}-split scene: got {shown.id} ({shown.split}) and {clean.id}")
    a, b = two_views(clean.image, shown.id, cfg)
    return {"id": shown.id, "slice": shown.source, "split": shown.split, "caption": shown.caption,
            "image": _save(shown.image, out, f"images/{shown.id}.png"),
            "views": [_save(a, out, f"views/{shown.id}-a.png"), _save(b, out, f"views/{shown.id}-b.png")]}


def write_retrieval_task(out: Path, sources: Sequence[str] = RETRIEVAL_SOURCES, n: int = RETRIEVAL_N, seed: int = 0,
                         views: str = VIEW_PRESET, size: int | None = None, progress: bool = True) -> Path:
    """Write task.json, samples.jsonl, images/, views/ and manifest.json under out (an empty folder); -> task.json."""
    from tqdm.auto import tqdm

    cfg = get_preset(views)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "views").mkdir(exist_ok=True)
    with open(out / "samples.jsonl", "w") as f:
        for name in sources:
            shown = make_source(name, HELD_OUT, seed, n, size=size)  # as `vlmkit data make` writes them
            clean = make_source(name, HELD_OUT, seed, n, size=size, augment="none")  # the same scenes, to photograph
            for i in tqdm(range(n), desc=f"retrieval: {name}", unit="scene", disable=not progress, dynamic_ncols=True):
                f.write(json.dumps(_retrieval_record(out, shown[i], clean[i], cfg)) + "\n")
    manifest = {"sources": list(sources), "split": HELD_OUT, "n_per_source": n, "seed": seed, "views": views, "size": size}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return _write_spec(out, {"name": "retrieval", "kind": "retrieval", "samples": "samples.jsonl", "pass_bars": {}})


def write_zeroshot_task(out: Path, name: str = "zeroshot-fmnist", source: str = "fashion-mnist", n: int | None = None,
                        seed: int = 0, bar: float | None = None, progress: bool = True) -> Path:
    """A classification source's test split as a zeroshot task: single template against the ensemble; -> task.json."""
    from tqdm.auto import tqdm

    from ..search.classify import DEFAULT_TEMPLATES, SINGLE_TEMPLATE

    src = make_source(source, HELD_OUT, seed, n)
    (out / "images").mkdir(parents=True, exist_ok=True)
    with open(out / "samples.jsonl", "w") as f:
        for s in tqdm(src, total=len(src), desc=name, unit="img", disable=not progress, dynamic_ncols=True):
            rec = {"id": s.id, "slice": source, "split": s.split, "label": s.label,
                   "image": _save(s.image, out, f"images/{s.id}.png")}
            f.write(json.dumps(rec) + "\n")
    spec = {"name": name, "kind": "zeroshot", "samples": "samples.jsonl", "classes": list(src.classes),
            "prompts": {"single-template": list(SINGLE_TEMPLATE), "ensemble": list(DEFAULT_TEMPLATES)},
            "pass_bars": {} if bar is None else {"ensemble": bar}}
    return _write_spec(out, spec)


def _write_spec(out: Path, spec: dict) -> Path:
    path = out / "task.json"
    path.write_text(json.dumps(spec, indent=2) + "\n")
    return path
