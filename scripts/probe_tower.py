"""What does a vision tower encode? Linear probes on its features over generated shape scenes.

  .venv/bin/python scripts/probe_tower.py weights/vlmkit-clip [more model dirs...]

For each scene of data/shapes/train (ground truth in truth.jsonl), logistic-regression probes:
  colour@patch  the colour of the first object, from the tower token at the object's centre
  count@mean    the number of objects (1-8), from the mean of all tower tokens
  column@token, row@token  which of the grid's columns (rows) a token sits in, from that token alone, for 4 random
                tokens a scene: how much of its own place each token carries in its content, which is all an LM
                that reads the tokens in raster order gets of a column (the row also follows from the order)
trained on the first 450 scenes and scored on the next 150, against the majority class. With --connector the
probes read a VLM's visual tokens instead (the connector's output, what the LM receives; 8 x 8 for vlmkit-smol):
  .venv/bin/python scripts/probe_tower.py --connector weights/vlmkit-smol
The tower probes located the early vlmkit-smol failure: the tower reads colour at 98%, yet the VLM on top answered colour
questions at 17%, so the loss was in the connector and the LM, not in the tower.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

PLACE_TOKENS = 4  # tokens a scene for the place probes


def tower(src: Path, image_size: int):
    """The vision tower of any vlmkit model dir (VLM or dual encoder), at `image_size` (positions resampled)."""
    import dataclasses

    from vlmkit.models.vision import VisionTower
    from vlmkit.train.stages import copy_vision, read_vision_config

    vcfg = dataclasses.replace(read_vision_config(src), image_size=image_size)
    holder = SimpleNamespace(cfg=SimpleNamespace(vision=vcfg), vision=VisionTower(vcfg))
    copy_vision(holder, src)
    return holder.vision.eval(), vcfg


def visual_tokens(src: Path):
    """What the LM of a vlmkit VLM dir receives: the connector's tokens, as (encode, vision config, grid side)."""
    from vlmkit.models.vlm import VisionLanguageModel

    model = VisionLanguageModel.from_pretrained(src).eval()
    rows, cols = model.cfg.image_grid("the --connector probe")
    assert rows == cols, (rows, cols)
    return model.encode_images, model.cfg.vision, rows


def features(encode, vcfg, g: int, rows: list[dict], root: Path):
    """encode: pixels [B, 3, S, S] -> tokens [B, g * g, D] in raster order."""
    from PIL import Image

    from vlmkit.processing.images import ImageProcessor

    proc = ImageProcessor.from_vision_config(vcfg)
    scale = vcfg.image_size
    p = scale / g  # pixels a token covers, each way
    at_patch, pooled, own, place = [], [], [], []
    pick = np.random.default_rng(0)
    for i in range(0, len(rows), 50):
        chunk = rows[i:i + 50]
        px = proc([Image.open(root / r["image"]).convert("RGB") for r in chunk])
        with torch.no_grad():
            f = encode(px)  # [B, g * g, D]
        for r, fi in zip(chunk, f):
            o = r["truth"]["objects"][0]
            w, h = r["truth"]["size"]
            cx = (o["box_px"][0] + o["box_px"][2]) / 2 * scale / w
            cy = (o["box_px"][1] + o["box_px"][3]) / 2 * scale / h
            at_patch.append(fi[min(g - 1, int(cy // p)) * g + min(g - 1, int(cx // p))].numpy())
            pooled.append(fi.mean(0).numpy())
            for k in pick.choice(g * g, size=PLACE_TOKENS, replace=False):
                own.append(fi[k].numpy())
                place.append(divmod(int(k), g))  # (row, column)
    return np.array(at_patch), np.array(pooled), np.array(own), np.array(place)


def main() -> None:
    from sklearn.linear_model import LogisticRegression

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--truth", type=Path, default=Path("data/shapes/train/truth.jsonl"))
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--n-train", type=int, default=450)
    ap.add_argument("--n-test", type=int, default=150)
    ap.add_argument("--connector", action="store_true",
                    help="probe a VLM's visual tokens (the connector's output, what the LM reads) instead of its tower's")
    a = ap.parse_args()
    rows = [json.loads(l) for l in a.truth.read_text().splitlines() if l.strip()][:a.n_train + a.n_test]
    colour = [r["truth"]["objects"][0]["colour"] for r in rows]
    count = [len(r["truth"]["objects"]) for r in rows]
    print(f"| {'visual tokens of' if a.connector else 'tower'} | probe | accuracy | majority class |\n|---|---|---:|---:|")
    for src in a.models:
        if a.connector:
            encode, vcfg, g = visual_tokens(src)
        else:
            vision, vcfg = tower(src, a.image_size)
            encode, g = vision.forward_features, vcfg.grid_size
        at_patch, pooled, own, place = features(encode, vcfg, g, rows, a.truth.parent)
        n_tokens = PLACE_TOKENS * a.n_train  # each scene's tokens are consecutive rows: the split stays by scene
        for name, x, y, n_train in (("colour@patch", at_patch, colour, a.n_train), ("count@mean", pooled, count, a.n_train),
                                    ("column@token", own, place[:, 1], n_tokens),
                                    ("row@token", own, place[:, 0], n_tokens)):
            y = np.array(y)
            clf = LogisticRegression(max_iter=3000).fit(x[:n_train], y[:n_train])
            test = y[n_train:]
            majority = max(np.mean(test == v) for v in set(test.tolist()))
            print(f"| {src} | {name} | {clf.score(x[n_train:], test):.2f} | {majority:.2f} |")


if __name__ == "__main__":
    main()
