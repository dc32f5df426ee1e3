"""Deterministic OCR evidence: RapidOCR (PP-OCRv4 detection, orientation and recognition, ONNX on the CPU).

    page = read(prepare.load("receipt.jpg"))
    for line in page.lines: print(line.text, line.bbox, line.score)

The engine is built once per process (it loads three ONNX models). A page is
read with the pieces of RapidOCR's pipeline called one by one, because its
orientation classifier's verdicts are what tell us that a whole page is
upside down, and the public call drops them. Sideways pages show up as tall
text boxes. Either way the page is turned by quarter turns and read again.

PP-OCR's dictionary has "$" and "¥" but not "€" or "£", so those glyphs come
back dropped or misread; `currency_glyph` classifies the ink the recogniser
skipped against rendered templates of the symbols.
"""
from __future__ import annotations

import functools
import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from ..errors import VlmkitError
from . import preprocess as P


class OcrError(VlmkitError):
    """The OCR engine is missing or failed on an image."""


@dataclass
class OcrLine:
    text: str
    box: list  # 4 corners [[x, y], ...] clockwise from top-left, in the prepared image's pixels
    score: float  # recogniser confidence, 0..1

    @property
    def bbox(self) -> list[float]:
        p = np.asarray(self.box)
        return [float(p[:, 0].min()), float(p[:, 1].min()), float(p[:, 0].max()), float(p[:, 1].max())]

    @property
    def height(self) -> float:
        p = np.asarray(self.box, dtype=np.float64)
        return float((np.linalg.norm(p[3] - p[0]) + np.linalg.norm(p[2] - p[1])) / 2)

    @property
    def width(self) -> float:
        p = np.asarray(self.box, dtype=np.float64)
        return float((np.linalg.norm(p[1] - p[0]) + np.linalg.norm(p[2] - p[3])) / 2)

    @property
    def centre(self) -> tuple[float, float]:
        p = np.asarray(self.box, dtype=np.float64)
        return float(p[:, 0].mean()), float(p[:, 1].mean())


@dataclass
class OcrPage:
    lines: list[OcrLine]
    prepared: P.Prepared  # the image the boxes refer to, and its map back to the caller's image
    skew: float = 0.0  # degrees, measured from the boxes (clockwise-positive)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    quarter_turns: int = 0  # counter-clockwise turns applied to the image before these lines were read
    levelled: float = 0.0  # degrees the (turned) image was rotated level before these lines were read

    @property
    def text(self) -> str:
        return "\n".join(l.text for l in self.lines)

    def original_bbox(self, line: OcrLine) -> list[int]:
        """The line's box in the caller's image, as [x0, y0, x1, y1] integer pixels."""
        p = self.prepared.map_points(line.box)
        return [int(round(p[:, 0].min())), int(round(p[:, 1].min())), int(round(p[:, 0].max())), int(round(p[:, 1].max()))]

    @property
    def median_height(self) -> float:
        return float(np.median([l.height for l in self.lines])) if self.lines else 0.0


@dataclass
class OcrConfig:
    min_score: float = 0.5  # recognised lines below this are dropped (RapidOCR's text_score)
    max_side_len: int = 3200  # the engine's own cap; above our preprocessing caps so it never rescales
    fix_orientation: bool = True
    unclip_ratio: float = 1.6  # how far detected text boxes are grown before cropping (RapidOCR's default)
    deskew_above: float = 15.0  # degrees: text leaning more is rotated level and read again (resampling blurs small
    # print, so a moderate lean is better left to the detector, which reads tilted lines well)
    tall_fraction: float = 0.6  # this share of tall boxes means the page is sideways
    flip_fraction: float = 0.6  # this share of lines classified "180" means the page is upside down


_ENGINE_LOCK = threading.Lock()


@functools.lru_cache(maxsize=2)
def engine(max_side_len: int = 3200):
    try:
        from rapidocr_onnxruntime import RapidOCR
    except ImportError:
        raise OcrError("OCR needs rapidocr-onnxruntime: pip install 'rapidocr-onnxruntime>=1.4,<1.5'") from None
    return RapidOCR(max_side_len=max_side_len)


def _run(eng, img: np.ndarray, min_score: float, unclip_ratio: float) -> tuple[list[OcrLine], list[str]]:
    """RapidOCR's own pipeline, step by step -> (lines, orientation label per line)."""
    eng.text_det.postprocess_op.unclip_ratio = unclip_ratio  # the engine is shared: set on every call, under the lock
    h, w = img.shape[:2]
    x, ratio_h, ratio_w = eng.preprocess(img)
    record = {"preprocess": {"ratio_h": ratio_h, "ratio_w": ratio_w}}
    x, record = eng.maybe_add_letterbox(x, record)
    boxes, _ = eng.auto_text_det(x)
    if boxes is None or len(boxes) == 0:
        return [], []
    crops = eng.get_crop_img_list(x, boxes)
    crops, cls_res, _ = eng.text_cls(crops)
    rec_res, _ = eng.text_rec(crops, False)
    pts = eng._get_origin_points(boxes, record, h, w)
    lines, labels = [], []
    for box, cls, rec in zip(pts, cls_res, rec_res):
        text, score = str(rec[0]), float(rec[1])
        if score < min_score or not text.strip():
            continue
        lines.append(OcrLine(text.strip(), [[float(a), float(b)] for a, b in box], score))
        labels.append(str(cls[0]) if float(cls[1]) > eng.text_cls.cls_thresh else "")
    return lines, labels


_CACHE: "OrderedDict[str, tuple]" = OrderedDict()  # pixel key -> (quarter turns, deskew, lines, skew, notes)
CACHE_ITEMS = 128


def read(prep: P.Prepared, cfg: OcrConfig | None = None) -> OcrPage:
    """OCR a prepared image, turned first if its text runs sideways or upside down, levelled if it leans far.

    Pages are cached by pixel content and settings, so reading the same image
    for several extraction modes (or a retry that changes nothing) costs one pass.
    """
    cfg = cfg or OcrConfig()
    key = _key(prep.image, cfg)
    hit = _CACHE.get(key)
    if hit is not None:
        _CACHE.move_to_end(key)
        turn, level, lines, skew, notes = hit
        return OcrPage(list(lines), _placed(prep, turn, level), skew, 0.0, list(notes), turn, level)
    t0 = time.perf_counter()
    eng = engine(cfg.max_side_len)
    lines, labels = _read_once(eng, prep, cfg)
    turn, notes = 0, []
    if cfg.fix_orientation and len(lines) >= 3:
        guess = _quarter_turns(lines, labels, cfg)
        if guess:
            turned, labels2 = _read_once(eng, P.rotate_quarter(prep, guess), cfg)
            if guess in (1, 3) and _flipped(labels2, cfg):  # a sideways guess can be 180 degrees off
                guess = (guess + 2) % 4
                turned, _ = _read_once(eng, P.rotate_quarter(prep, guess), cfg)
            if len(turned) >= len(lines) // 2:
                lines, turn = turned, guess
                notes.append(f"turned {90 * turn} degrees by OCR orientation")
    skew, level = P.skew_angle([l.box for l in lines]), 0.0
    if cfg.deskew_above and abs(skew) > cfg.deskew_above:
        levelled = _read_once(eng, _placed(prep, turn, skew), cfg)[0]
        if len(levelled) >= len(lines) // 2:  # PP-OCR's detector is happiest with level lines
            lines, level = levelled, skew
            notes.append(f"rotated {skew:+.1f} degrees level")
            skew = P.skew_angle([l.box for l in lines])
    _CACHE[key] = (turn, level, tuple(lines), skew, tuple(notes))
    if len(_CACHE) > CACHE_ITEMS:
        _CACHE.popitem(last=False)
    return OcrPage(lines, _placed(prep, turn, level), skew, time.perf_counter() - t0, notes, turn, level)


def _placed(prep: P.Prepared, turn: int, level: float) -> P.Prepared:
    return P.deskew(P.rotate_quarter(prep, turn), level) if level else P.rotate_quarter(prep, turn)


def _read_once(eng, prep: P.Prepared, cfg: OcrConfig) -> tuple[list[OcrLine], list[str]]:
    arr = np.ascontiguousarray(np.asarray(prep.image.convert("RGB"))[:, :, ::-1])  # RapidOCR expects BGR, as cv2 reads
    try:
        with _ENGINE_LOCK:  # RapidOCR keeps per-call state on itself (thresholds), so one call at a time
            return _run(eng, arr, cfg.min_score, cfg.unclip_ratio)
    except Exception as e:  # the engine's own failures become one clear line
        raise OcrError(f"OCR failed: {type(e).__name__}: {e}") from None


def _quarter_turns(lines: list[OcrLine], labels: list[str], cfg: OcrConfig) -> int:
    """Counter-clockwise quarter turns that make the page upright: 0, 1, 2 or 3."""
    tall = [i for i, l in enumerate(lines) if l.bbox[3] - l.bbox[1] >= 1.5 * (l.bbox[2] - l.bbox[0])]
    if len(tall) >= cfg.tall_fraction * len(lines):
        # RapidOCR turns each tall crop counter-clockwise before reading it; mostly "180" means the other way
        flipped = sum(1 for i in tall if labels[i] == "180")
        return 3 if flipped > len(tall) / 2 else 1
    return 2 if _flipped(labels, cfg) else 0


def _flipped(labels: list[str], cfg: OcrConfig) -> bool:
    return bool(labels) and sum(lab == "180" for lab in labels) >= cfg.flip_fraction * len(labels)


def _key(img: Image.Image, cfg: OcrConfig) -> str:
    h = hashlib.sha1(img.tobytes())
    h.update(repr((img.size, img.mode, cfg)).encode())  # every setting that changes a reading is in the key
    return h.hexdigest()


# ---------------------------------------------------------------- currency glyphs the recogniser cannot spell
GLYPHS = ("€", "£", "$")
REJECT = "0123456789"  # what else sits at the start of an amount: a match to one of these means "no symbol"
_GLYPH_SIDE = 24


@functools.lru_cache(maxsize=1)
def _templates() -> list[tuple[str, np.ndarray]]:
    """Each symbol and digit in every bundled font, sharp and blurred (photos of receipts are soft)."""
    from PIL import ImageDraw, ImageFilter, ImageFont

    try:
        from ..data.fonts import FAMILIES, font_path
        paths = [font_path(f) for f in FAMILIES]
    except ImportError:
        paths = []
    out = []
    for path in dict.fromkeys(p for p in paths if p):
        font = ImageFont.truetype(path, 48)
        for g in GLYPHS + tuple(REJECT):
            img = Image.new("L", (80, 80), 255)
            ImageDraw.Draw(img).text((10, 5), g, font=font, fill=0)
            for blur in (0, 2, 4):
                t = _normalise(np.asarray(img.filter(ImageFilter.GaussianBlur(blur)) if blur else img))
                if t is not None:
                    out.append((g, t))
    return out


def _normalise(gray: np.ndarray) -> np.ndarray | None:
    """Ink of a glyph crop -> a zero-mean, unit-norm [S, S] array (tight box, aspect kept by padding)."""
    g = gray.astype(np.float32)
    lo, hi = np.percentile(g, 5), np.percentile(g, 95)
    if hi - lo < 40:
        return None  # no contrast: no ink here
    ink = (g < (lo + hi) / 2)
    ys, xs = np.nonzero(ink)
    if len(ys) < 6:
        return None
    crop = ink[ys.min():ys.max() + 1, xs.min():xs.max() + 1].astype(np.float32)
    s = max(crop.shape)
    sq = np.zeros((s, s), np.float32)
    sq[(s - crop.shape[0]) // 2:(s - crop.shape[0]) // 2 + crop.shape[0], (s - crop.shape[1]) // 2:(s - crop.shape[1]) // 2 + crop.shape[1]] = crop
    a = np.asarray(Image.fromarray((sq * 255).astype(np.uint8)).resize((_GLYPH_SIDE, _GLYPH_SIDE), Image.Resampling.BILINEAR), np.float32)
    a -= a.mean()
    n = np.linalg.norm(a)
    return a / n if n > 0 else None


def leading_glyph(image: Image.Image, box_xyxy) -> tuple[float, float, float, float] | None:
    """The box of the first glyph (the first run of inked columns) of a text box, or None.

    The search starts half a line height left of the box: detection boxes often
    clip the first glyph, and a symbol cut in half would not be recognisable.
    """
    bx0, y0, x1, y1 = [int(round(v)) for v in box_xyxy]
    h = y1 - y0
    x0 = max(0, bx0 - h // 2)
    y0, x1, y1 = max(0, y0), min(image.width, x1), min(image.height, y1)
    if x1 - x0 < 4 or y1 - y0 < 4:
        return None
    g = np.asarray(image.crop((x0, y0, x1, y1)).convert("L"), np.float32)
    lo, hi = np.percentile(g, 5), np.percentile(g, 95)
    if hi - lo < 40:
        return None
    cols = (g < (lo + hi) / 2).sum(axis=0) >= max(1, 0.08 * g.shape[0])  # [W]: columns with ink
    runs, start = [], None
    for i, c in enumerate(list(cols) + [False]):
        if c and start is None:
            start = i
        elif not c and start is not None:
            runs.append((start, i))
            start = None
    runs = [r for r in runs if r[1] > bx0 - x0 + 1]  # ink left of the box that never reaches it is other text
    if not runs:
        return None
    start, end = runs[0]
    end = min(end, start + int(0.9 * g.shape[0]))  # a glyph is narrower than its line is tall
    return (x0 + start - 1, y0, x0 + end + 1, y1)


def currency_glyph(image: Image.Image, box_xyxy, min_similarity: float = 0.6) -> tuple[str | None, float]:
    """The currency symbol drawn inside box_xyxy, or None when the ink there looks more like a digit or like nothing.

    Nearest template (normalised correlation of the glyph's tight, square-padded ink
    at 24 x 24) over symbols and digits in the bundled fonts; digits are there to be
    rejected, so an amount without a symbol is not given one.
    """
    x0, y0, x1, y1 = [int(round(v)) for v in box_xyxy]
    x0, y0 = max(0, x0), max(0, y0)
    x1, y1 = min(image.width, x1), min(image.height, y1)
    if x1 - x0 < 3 or y1 - y0 < 3:
        return None, 0.0
    crop = _normalise(np.asarray(image.crop((x0, y0, x1, y1)).convert("L")))
    if crop is None:
        return None, 0.0
    best, score = None, -1.0
    for g, t in _templates():
        sim = float((crop * t).sum())
        if sim > score:
            best, score = g, sim
    if best not in GLYPHS or score < min_similarity:
        return None, score  # a digit, or nothing like any symbol
    return best, score
