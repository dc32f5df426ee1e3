"""Grounding: IoU between "<box>x1,y1,x2,y2</box>" boxes, and accuracy at IoU >= 0.5.

Coordinates are normalised to 0-1000 (our shared data format) and treated as
continuous: area = (x2 - x1) * (y2 - y1), with no +1 pixel convention. The first
<box> in the prediction counts; a prediction without one, or a box with x2 <= x1 or
y2 <= y1, has IoU 0. Against several answers a sample takes its best IoU.

IoU cannot tell a box in the wrong place from a stock box that ignores the image, so
`placement` also correlates predicted with true box centres and sizes, one axis at a
time (ours): a model that finds the row but not the column shows r near 1 down and
near 0 across.
"""
from __future__ import annotations

import re
import statistics

_NUM = r"\s*([-+]?(?:\d+\.?\d*|\.\d+))\s*"
BOX_RE = re.compile(r"<box>" + ",".join([_NUM] * 4) + r"</box>")


def parse_box(text: str) -> tuple[float, float, float, float] | None:
    m = BOX_RE.search(text)
    return tuple(float(v) for v in m.groups()) if m else None


def iou(a, b) -> float:
    ax1, ay1, ax2, ay2 = a
    bx1, by1, bx2, by2 = b
    if ax2 <= ax1 or ay2 <= ay1 or bx2 <= bx1 or by2 <= by1:
        return 0.0
    iw = max(0.0, min(ax2, bx2) - max(ax1, bx1))
    ih = max(0.0, min(ay2, by2) - max(ay1, by1))
    inter = iw * ih
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    return inter / union if union > 0 else 0.0


def box_iou(prediction: str, answers: list[str]) -> float:
    pred = parse_box(prediction)
    if pred is None:
        return 0.0
    gts = [parse_box(a) for a in answers]
    return max((iou(pred, g) for g in gts if g is not None), default=0.0)


def _pearson(xs: list[float], ys: list[float]) -> float | None:
    if len(xs) < 3:
        return None
    try:
        return statistics.correlation(xs, ys)
    except statistics.StatisticsError:  # a constant answer (or truth) has no correlation to speak of
        return None


def placement(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    """Where the boxes go: the share of answers with a box, and Pearson r between predicted and true (first answer)
    box centre x, centre y, width and height over those. An r is left out when it is undefined (fewer than 3 boxes,
    or one side constant)."""
    boxes = [parse_box(p) for p in predictions]
    out = {"boxed": sum(b is not None for b in boxes) / len(boxes) if boxes else 0.0}
    pairs = [(p, parse_box(refs[0])) for p, refs in zip(boxes, references) if p is not None and refs]
    pairs = [(p, t) for p, t in pairs if t is not None]
    measures = {"centre_r_x": lambda b: (b[0] + b[2]) / 2, "centre_r_y": lambda b: (b[1] + b[3]) / 2,
                "width_r": lambda b: b[2] - b[0], "height_r": lambda b: b[3] - b[1]}
    for name, f in measures.items():
        r = _pearson([f(t) for _, t in pairs], [f(p) for p, _ in pairs])
        if r is not None:
            out[name] = r
    return out
