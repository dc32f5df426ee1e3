"""Bar and line charts with labelled values, drawn with Pillow, for chart question answering.

Every value is printed on the chart, so a value question is answerable by
reading; "which is highest" is asked only when the top value leads by a margin.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

from .augment import AugmentConfig, augment, get_preset
from .fonts import get_font
from .sample import QA
from .words import CHART_LABEL_SETS, CHART_TITLES, NUMBER_WORDS

PALETTE = [(66, 114, 196), (221, 132, 82), (85, 168, 104), (196, 78, 82), (129, 114, 179), (147, 120, 96),
           (218, 139, 195), (100, 100, 100), (204, 185, 116), (100, 181, 205)]
SCALES = (10, 20, 50, 100, 200, 500, 1000)


@dataclass
class ChartsConfig:
    size: int = 224
    augment: str | AugmentConfig = "light"
    min_items: int = 3
    max_items: int = 6


class ChartsGenerator:
    name = "charts"
    slices = ("chart",)

    def __init__(self, cfg: ChartsConfig | None = None, **kw):
        self.cfg = cfg or ChartsConfig(**kw)
        self.aug = get_preset(self.cfg.augment)

    def spec(self, rng: random.Random) -> dict:
        kind = "bar" if rng.random() < 0.6 else "line"
        labels_all = rng.choice(CHART_LABEL_SETS)
        longest = max(max(map(len, labels_all)), 4)  # values print up to 4 digits
        fits = int(0.86 / (longest * 0.6 * 0.052 * 1.15))  # slots whose labels fit at the default font (0.6 em a glyph)
        k = rng.randint(self.cfg.min_items, max(self.cfg.min_items, min(self.cfg.max_items, len(labels_all), fits)))
        start = rng.randint(0, len(labels_all) - k)
        labels = labels_all[start:start + k]  # consecutive: days, months and years stay in order
        scale = rng.choice(SCALES)
        values = [rng.randint(max(1, scale // 20), scale) for _ in labels]
        return {"kind": kind, "labels": labels, "values": values, "scale": scale, "title": rng.choice(CHART_TITLES)}

    def split_key(self, spec: dict) -> str:
        return f"{spec['kind']}|" + ",".join(f"{l}={v}" for l, v in zip(spec["labels"], spec["values"]))

    def build(self, spec: dict, rng: random.Random):
        s = self.cfg.size
        paper = tuple(rng.randint(240, 255) for _ in range(3))
        img = Image.new("RGB", (s, s), paper)
        draw = ImageDraw.Draw(img)
        left, right, top, bottom = round(0.1 * s), round(0.96 * s), round(0.17 * s), round(0.84 * s)
        labels, values, scale = spec["labels"], spec["values"], spec["scale"]
        k = len(labels)
        slot = (right - left) / k
        small = _fitting_font([*labels, *map(str, values)], 0.8 * slot, round(0.052 * s), draw)
        big = get_font("sans-bold", round(0.062 * s))
        if spec["title"]:
            draw.text((s / 2, 0.02 * s), spec["title"], font=big, fill=(20, 20, 20), anchor="mt")
        axis = (60, 60, 60)
        draw.line([(left, top - 0.03 * s), (left, bottom), (right, bottom)], fill=axis, width=max(1, s // 224))
        draw.text((left - 3, bottom), "0", font=small, fill=axis, anchor="rm")
        ys = [bottom - (bottom - top) * v / scale for v in values]
        xs = [left + slot * (i + 0.5) for i in range(k)]
        colour = rng.choice(PALETTE)
        if spec["kind"] == "bar":
            per_bar = rng.random() < 0.3
            half = slot * rng.uniform(0.28, 0.4)
            for i, (x, y) in enumerate(zip(xs, ys)):
                draw.rectangle([x - half, y, x + half, bottom - 1], fill=PALETTE[i % len(PALETTE)] if per_bar else colour)
                draw.text((x, y - 2), str(values[i]), font=small, fill=(20, 20, 20), anchor="mb")
        else:
            draw.line(list(zip(xs, ys)), fill=colour, width=max(2, s // 112))
            r = max(2, s // 75)
            for i, (x, y, v) in enumerate(zip(xs, ys, values)):
                draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
                xy, anchor = _label_spot(ys, i, x, y, r, bottom, small.size)
                draw.text(xy, str(v), font=small, fill=(20, 20, 20), anchor=anchor)
        for x, label in zip(xs, labels):
            draw.text((x, bottom + 3), label, font=small, fill=(30, 30, 30), anchor="ma")
        img = augment(img, rng, self.aug, fill=paper)

        truth = {"size": [s, s], "kind": spec["kind"], "title": spec["title"], "labels": labels, "values": values}
        return img, truth, _caption(spec), self._questions(spec, rng)

    def _questions(self, spec: dict, rng: random.Random) -> list[QA]:
        labels, values = spec["labels"], spec["values"]
        i = rng.randrange(len(labels))
        what = "bar" if spec["kind"] == "bar" else "point"
        qs = [QA(rng.choice(["What is the value of {}?", "What value does {} have?", "What is the value for {} in the chart?"])
                 .format(labels[i]), str(values[i]), "chart", "relaxed")]
        order = sorted(range(len(values)), key=lambda j: values[j])
        lead = 0.05 * spec["scale"]
        if rng.random() < 0.5 and values[order[-1]] - values[order[-2]] >= lead:
            qs.append(QA(f"Which {what} has the highest value?", labels[order[-1]], "chart", "relaxed"))
        elif values[order[1]] - values[order[0]] >= lead:
            qs.append(QA(f"Which {what} has the lowest value?", labels[order[0]], "chart", "relaxed"))
        else:
            j = rng.choice([j for j in range(len(labels)) if j != i])
            qs.append(QA(f"What is the value of {labels[j]}?", str(values[j]), "chart", "relaxed"))
        return qs


def _label_spot(ys: list[float], i: int, x: float, y: float, r: int, bottom: float, text_h: int):
    """Where a point's value label stays off the line: above a peak, below a dip, beside a slope."""
    prev = ys[i - 1] if i > 0 else None
    nxt = ys[i + 1] if i + 1 < len(ys) else None
    nbrs = [v for v in (prev, nxt) if v is not None]
    if all(v >= y for v in nbrs):  # a peak (screen y grows downwards)
        return (x, y - r - 2), "mb"
    if all(v <= y for v in nbrs) and y + r + 2 + text_h < bottom:  # a dip, with room above the axis
        return (x, y + r + 2), "mt"
    rising_in = prev is not None and prev > y or nxt is not None and nxt < y
    # on a rise the line leaves up and to the right, so up-left is clear; on a fall, up-right
    return ((x - r, y - r - 1), "rb") if rising_in else ((x + r, y - r - 1), "lb")


def _fitting_font(texts: list[str], width: float, size: int, draw: ImageDraw.ImageDraw):
    """The largest font up to `size` in which every label fits its slot, so neighbours never touch."""
    while True:
        font = get_font("sans", size)
        if size <= 7 or max(draw.textlength(t, font=font) for t in texts) <= width:
            return font
        size -= 1


def _caption(spec: dict) -> str:
    k = len(spec["labels"])
    kind = "bar chart" if spec["kind"] == "bar" else "line chart"
    things = "bars" if spec["kind"] == "bar" else "points"
    titled = f' titled "{spec["title"]}"' if spec["title"] else ""
    pairs = ", ".join(f"{l} {v}" for l, v in zip(spec["labels"], spec["values"]))
    return f"A {kind}{titled} with {NUMBER_WORDS[k]} {things}: {pairs}."
