"""Boxes in the grounding format: `<box>x1,y1,x2,y2</box>`, integers normalised to 0-1000; points
`<point>x,y</point>`, a box's centre as the tenth of the image it falls in on each axis (one digit each)."""
from __future__ import annotations

import math
import re

_BOX = re.compile(r"<box>\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*</box>")
_POINT = re.compile(r"<point>\s*(\d)\s*,\s*(\d)\s*</point>")


def normalise_box(box_px, size: tuple[int, int]) -> list[int]:
    """Pixel box [x1, y1, x2, y2) -> 0-1000 ints, rounded outward so the box still holds every pixel."""
    w, h = size
    x1, y1, x2, y2 = box_px
    out = [math.floor(x1 * 1000 / w), math.floor(y1 * 1000 / h), math.ceil(x2 * 1000 / w), math.ceil(y2 * 1000 / h)]
    return [min(1000, max(0, v)) for v in out]


def format_box(box: list[int]) -> str:
    return "<box>" + ",".join(str(int(v)) for v in box) + "</box>"


def parse_box(text: str) -> list[int] | None:
    m = _BOX.search(text)
    return [int(v) for v in m.groups()] if m else None


def parse_boxes(text: str) -> list[list[int]]:
    """Every box in the text, in order."""
    return [[int(v) for v in m.groups()] for m in _BOX.finditer(text)]


def format_point(box: list[int]) -> str:
    """A 0-1000 box -> `<point>x,y</point>`: its centre's tenth of the image on each axis. Two centres a tenth of the
    image or more apart get different digits (but for the box's outward rounding, which can move a centre by one
    unit onto a boundary), so comparing digits answers the relations the shapes generator asks (ShapesConfig.clear)."""
    x, y = (min(9, (box[i] + box[i + 2]) // 200) for i in (0, 1))
    return f"<point>{x},{y}</point>"


def parse_points(text: str) -> list[tuple[int, int]]:
    """Every point in the text, in order, as (x, y) digits."""
    return [(int(m.group(1)), int(m.group(2))) for m in _POINT.finditer(text)]


def parse_places(text: str) -> list[list[int]]:
    """Every box and point in the text, in order, as 0-1000 boxes: a point as the zero-size box at the middle of its
    tenths, so that comparing centres (data.shapes.box_side) compares boxes and points alike."""
    places = [(m.start(), [int(v) for v in m.groups()]) for m in _BOX.finditer(text)]
    for m in _POINT.finditer(text):
        x, y = (int(v) * 100 + 50 for v in m.groups())
        places.append((m.start(), [x, y, x, y]))
    return [box for _, box in sorted(places)]


def box_to_pixels(box: list[int], size: tuple[int, int]) -> tuple[float, float, float, float]:
    w, h = size
    return box[0] * w / 1000, box[1] * h / 1000, box[2] * w / 1000, box[3] * h / 1000


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
