"""Document photo preprocessing before OCR and the VLM: orientation, deskew, size, contrast.

Every step keeps a 3x3 map from the prepared image back to the caller's
image, so evidence boxes are reported in the pixels the user gave us, however
much the image was turned or scaled on the way.

Practice this follows: decode with EXIF orientation applied, cap the long side
(1568 px, the size above which document VLMs stop gaining and start paying),
never re-encode lossy (text edges are what JPEG damages most: a prepared image
stays a PIL image in memory, and `png_bytes` is the only encoding offered),
turn by whole quarter turns when OCR says the text runs sideways or upside
down, and rotate out a small skew measured from the text boxes.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps

MAX_SIDE = 1568


@dataclass
class Prepared:
    image: Image.Image  # what OCR and the VLM read (RGB)
    to_original: np.ndarray  # [3, 3]: prepared pixel (x, y, 1) -> the caller's image pixel
    original_size: tuple[int, int]  # (w, h) of the caller's image, EXIF rotation applied
    steps: list[str] = field(default_factory=list)  # what was done, for the result's record

    def _then(self, image: Image.Image, new_to_old: np.ndarray, step: str) -> "Prepared":
        return Prepared(image, self.to_original @ new_to_old, self.original_size, self.steps + [step])

    def map_points(self, pts) -> np.ndarray:
        """[N, 2] points in the prepared image -> the caller's image."""
        p = np.c_[np.asarray(pts, dtype=np.float64).reshape(-1, 2), np.ones(len(pts))] @ self.to_original.T
        return p[:, :2] / p[:, 2:3]

    def png_bytes(self) -> bytes:
        buf = io.BytesIO()
        self.image.save(buf, format="PNG")
        return buf.getvalue()


def load(src, max_side: int = MAX_SIDE) -> Prepared:
    """Decode with the library's guards (size limits, EXIF), then cap the long side at max_side."""
    from ..processing.images import load_image

    img = load_image(src, max_side=max_side)
    original = tuple(img.info.get("original_size", img.size))
    # load_image may already have shrunk a huge photo at decode time: map from the decoded size to the original
    prep = Prepared(img, _scale(original[0] / img.width, original[1] / img.height), original)
    return resize_long_side(prep, max_side)


def resize_long_side(prep: Prepared, max_side: int) -> Prepared:
    w, h = prep.image.size
    if max(w, h) <= max_side:
        return prep
    s = max_side / max(w, h)
    return scale(prep, s)


def scale(prep: Prepared, s: float) -> Prepared:
    w, h = prep.image.size
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    img = prep.image.resize((nw, nh), Image.Resampling.LANCZOS)
    return prep._then(img, _scale(w / nw, h / nh), f"scale {s:.2f}")


def rotate_quarter(prep: Prepared, k: int) -> Prepared:
    """Rotate counter-clockwise by k quarter turns (k in 0..3)."""
    k %= 4
    if k == 0:
        return prep
    w, h = prep.image.size
    img = prep.image.transpose([None, Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270][k])
    # new pixel -> old pixel, for a counter-clockwise turn of the content
    new_to_old = {1: np.array([[0, -1, w], [1, 0, 0], [0, 0, 1.0]]),
                  2: np.array([[-1, 0, w], [0, -1, h], [0, 0, 1.0]]),
                  3: np.array([[0, 1, 0], [-1, 0, h], [0, 0, 1.0]])}[k]
    return prep._then(img, new_to_old, f"rotate {90 * k}")


def deskew(prep: Prepared, angle_deg: float, fill=(255, 255, 255)) -> Prepared:
    """Rotate by -angle_deg so text measured at angle_deg (clockwise-positive, image y down) becomes level."""
    if abs(angle_deg) < 0.05:
        return prep
    w, h = prep.image.size
    img = prep.image.rotate(angle_deg, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=_edge_colour(prep.image, fill))
    nw, nh = img.size
    a = math.radians(angle_deg)
    c, s = math.cos(a), math.sin(a)
    # PIL turns the content counter-clockwise by angle_deg on screen; a new pixel maps back by the opposite turn
    to_centre = np.array([[1, 0, -nw / 2], [0, 1, -nh / 2], [0, 0, 1.0]])
    turn = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    back = np.array([[1, 0, w / 2], [0, 1, h / 2], [0, 0, 1.0]])
    return prep._then(img, back @ turn @ to_centre, f"deskew {angle_deg:+.2f}")


def autocontrast(prep: Prepared, cutoff: float = 1.0) -> Prepared:
    img = ImageOps.autocontrast(prep.image, cutoff=cutoff)
    return prep._then(img, np.eye(3), "autocontrast")


def thicken(prep: Prepared, size: int = 3) -> Prepared:
    """Grow dark strokes by a size x size minimum filter.

    Thin or dotted glyphs (a slashed or dotted zero, a hairline 1) are where the
    recogniser confuses digits (0 read as 8 or 6); bolder strokes read differently.
    """
    from PIL import ImageFilter

    size = max(3, int(size) | 1)
    return prep._then(prep.image.filter(ImageFilter.MinFilter(size)), np.eye(3), f"thicken {size}")


def _scale(sx: float, sy: float) -> np.ndarray:
    return np.array([[sx, 0, 0], [0, sy, 0], [0, 0, 1.0]])


def _edge_colour(img: Image.Image, default) -> tuple:
    """The median colour of the border: what the corners uncovered by a rotation should look like."""
    a = np.asarray(img)
    if a.ndim != 3 or min(a.shape[:2]) < 2:
        return tuple(default)
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])  # [n, 3]
    return tuple(int(v) for v in np.median(border, axis=0))


def skew_angle(boxes: list, min_aspect: float = 2.0) -> float:
    """Median text angle in degrees (clockwise-positive, image y down) of wide OCR boxes; 0 with too few."""
    angles, weights = [], []
    for b in boxes:
        p = np.asarray(b, dtype=np.float64)  # [4, 2]: top-left, top-right, bottom-right, bottom-left
        top, bottom = p[1] - p[0], p[2] - p[3]
        width = (np.linalg.norm(top) + np.linalg.norm(bottom)) / 2
        height = (np.linalg.norm(p[3] - p[0]) + np.linalg.norm(p[2] - p[1])) / 2
        if height <= 0 or width / height < min_aspect:
            continue  # short boxes have noisy edges
        v = top + bottom
        angles.append(math.degrees(math.atan2(v[1], v[0])))
        weights.append(width)
    if len(angles) < 2:
        return 0.0
    order = np.argsort(angles)
    cum = np.cumsum(np.asarray(weights)[order])
    return float(np.asarray(angles)[order][np.searchsorted(cum, cum[-1] / 2)])  # width-weighted median
