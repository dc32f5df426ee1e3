"""easy-vqa (PyPI `easy-vqa`): 64x64 shape images with yes/no, colour and shape questions.

Its test split is ours; its training images divide into train and val by
pixel hash (see fixed.py). One sample is one image with all its questions.
"""
from __future__ import annotations

import functools
import re

from PIL import Image

from .fixed import FixedSource, partition
from .sample import QA, DataError, Sample
from .seeding import image_hash

SHAPES = ("circle", "rectangle", "triangle")
COLOURS = ("red", "green", "blue", "black", "gray", "teal", "brown", "yellow")


def _module():
    try:
        import easy_vqa
    except ImportError:
        raise DataError("easy-vqa is not installed: run `pip install easy-vqa`") from None
    return easy_vqa


@functools.lru_cache(maxsize=1)
def _index() -> dict:
    """Questions per image, image paths and pixel hashes, for both official splits (about 1 s: 5,000 small PNGs)."""
    ev = _module()
    out = {}
    for official, questions, paths in (("train", ev.get_train_questions, ev.get_train_image_paths),
                                       ("test", ev.get_test_questions, ev.get_test_image_paths)):
        texts, answers, ids = questions()
        path_of = paths()
        per_image: dict[int, list[tuple[str, str]]] = {}
        for q, a, i in zip(texts, answers, ids):
            per_image.setdefault(int(i), []).append((q, a))
        image_ids = sorted(per_image)
        hashes = []
        for i in image_ids:
            with Image.open(path_of[i]) as im:
                hashes.append("easy-vqa|" + image_hash(im.convert("RGB")))
        out[official] = {"ids": image_ids, "qa": per_image, "paths": path_of, "hashes": hashes}
    return out


def caption_from_answers(qa: list[tuple[str, str]]) -> str:
    """easy-vqa images hold one shape; its questions give away its colour and kind."""
    found: dict[str, str] = {}
    for q, a in qa:
        if a in SHAPES:
            found["shape"] = a
        elif a in COLOURS:
            found["colour"] = a
        mentioned = _TERMS.findall(q)
        if a in ("yes", "no"):  # "is there not a red shape?" -> "no" also says red is present
            present = (a == "yes") != bool(_NEGATION.search(q))
            if not present:
                continue
        elif a not in SHAPES:  # "what is the blue shape?" -> "circle" says blue is present
            continue
        for t in mentioned:
            found.setdefault("shape" if t in SHAPES else "colour", t)
    shape, colour = found.get("shape", "shape"), found.get("colour")
    return f"A {colour} {shape}." if colour else f"A {shape}."


_TERMS = re.compile(r"\b(" + "|".join(SHAPES + COLOURS) + r")\b")
_NEGATION = re.compile(r"\b(not|no)\b")


def easy_vqa(split: str = "train", seed: int = 0, n: int | None = None) -> FixedSource:
    index = _index()
    parts = partition(index["train"]["hashes"], index["test"]["hashes"])

    def load(entry) -> Sample:
        official, k = entry
        ix = index[official]
        image_id = ix["ids"][k]
        with Image.open(ix["paths"][image_id]) as im:
            img = im.convert("RGB")
        qa = ix["qa"][image_id]
        return Sample(id=f"easy-vqa-{official}-{image_id}", image=img, caption=caption_from_answers(qa),
                      qa=[QA(q, a, "easy-vqa", "exact") for q, a in qa],
                      truth={"official_split": official, "image_id": image_id}, source="easy-vqa", split=split)

    return FixedSource("easy-vqa", split, seed, n, parts[split], load, slices=["easy-vqa"])
