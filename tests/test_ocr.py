"""OCR evidence and preprocessing: coordinate maps back to the caller's image, skew, orientation, currency glyphs."""
from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image, ImageDraw

from vlmkit.apps import preprocess as P
from vlmkit.errors import ImageError


def test_every_preprocessing_step_maps_points_back_to_the_input():
    img = Image.new("RGB", (300, 500), "white")
    ImageDraw.Draw(img).rectangle([40, 60, 80, 90], fill="black")  # a marker whose centre we follow
    prep = P.load(img)
    for step in (lambda p: P.rotate_quarter(p, 1), lambda p: P.rotate_quarter(p, 2), lambda p: P.rotate_quarter(p, 3),
                 lambda p: P.scale(p, 2.5), lambda p: P.deskew(p, 4.0)):
        q = step(prep)
        a = np.asarray(q.image.convert("L"))
        ys, xs = np.nonzero(a < 100)
        centre = q.map_points([[xs.mean(), ys.mean()]])[0]
        assert np.allclose(centre, [60, 75], atol=2.5), (q.steps, centre)


def test_long_side_is_capped_and_the_map_undoes_it():
    prep = P.load(Image.new("RGB", (4000, 1000), "white"))
    assert max(prep.image.size) == P.MAX_SIDE
    assert np.allclose(prep.map_points([[P.MAX_SIDE, 392]])[0], [4000, 1000], atol=3)
    small = P.load(Image.new("RGB", (384, 640), "white"))
    assert small.image.size == (384, 640) and small.steps == []  # small text images are never shrunk


def test_png_bytes_are_lossless():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8))
    import io

    back = Image.open(io.BytesIO(P.load(img).png_bytes()))
    assert back.format == "PNG" and np.array_equal(np.asarray(back), np.asarray(img))


def test_skew_angle_is_the_width_weighted_median_of_wide_boxes():
    def box(angle, w=120, h=20):
        a = math.radians(angle)
        pts = np.array([[0, 0], [w, 0], [w, h], [0, h]], float)
        return (pts @ np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])).tolist()

    boxes = [box(2.0), box(2.2), box(1.8), box(30.0, w=30)]  # the short box (a "1") does not vote
    assert abs(P.skew_angle(boxes) - 2.0) < 0.25
    assert P.skew_angle([box(5.0)]) == 0.0  # one box is not enough to call a page skewed


def test_unreadable_input_is_a_clear_error(tmp_path):
    bad = tmp_path / "x.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ImageError, match="not a readable image"):
        P.load(bad)
    with pytest.raises(ImageError, match="no such file"):
        P.load(tmp_path / "missing.jpg")


def _glyph(ch: str, family: str = "mono-bold") -> Image.Image:
    from vlmkit.data.fonts import get_font

    img = Image.new("RGB", (40, 40), (245, 243, 235))
    ImageDraw.Draw(img).text((10, 8), ch, font=get_font(family, 20), fill=(25, 25, 30))
    return img


@pytest.mark.parametrize("family", ["mono", "mono-bold", "sans", "serif"])
def test_currency_glyphs_the_recogniser_cannot_spell_are_classified(family):
    from vlmkit.apps.ocr import currency_glyph

    for ch in "€£$":
        assert currency_glyph(_glyph(ch, family), (5, 5, 35, 35))[0] == ch
    for digit in "0123456789":  # a digit where a symbol might have been is not a currency
        assert currency_glyph(_glyph(digit, family), (5, 5, 35, 35))[0] is None
    assert currency_glyph(Image.new("RGB", (40, 40), "white"), (5, 5, 35, 35)) == (None, 0.0)  # blank paper


@pytest.fixture(scope="module")
def receipt():
    pytest.importorskip("rapidocr_onnxruntime")
    from vlmkit.data import make_source

    return make_source("receipts", "test", seed=3, n=1, augment="none")[0]


def test_ocr_reads_a_receipt_with_boxes_in_the_input_frame(receipt):
    from vlmkit.apps.ocr import read

    page = read(P.load(receipt.image))
    texts = [l.text.replace(" ", "") for l in page.lines]
    total = f"{receipt.truth['receipt']['total']:.2f}"
    assert any(t.endswith(total) for t in texts)
    assert receipt.truth["receipt"]["merchant"].replace(" ", "") in texts
    line = next(l for l in page.lines if l.text.replace(" ", "").endswith(total))
    x0, y0, x1, y1 = page.original_bbox(line)
    assert 0 <= x0 < x1 <= receipt.image.width and 0 <= y0 < y1 <= receipt.image.height
    assert x1 > 0.7 * receipt.image.width  # amounts are right-aligned
    assert abs(page.skew) < 0.5 and page.notes == []


@pytest.mark.parametrize("turn", [2, 1])
def test_upside_down_and_sideways_pages_are_turned_and_boxes_map_back(receipt, turn):
    from vlmkit.apps.ocr import read

    upright = read(P.load(receipt.image))
    turned_img = receipt.image.transpose([None, Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180][turn])
    page = read(P.load(turned_img))
    assert page.notes and "turned" in page.notes[0]
    assert sorted(l.text for l in page.lines) == sorted(l.text for l in upright.lines)
    total = f"{receipt.truth['receipt']['total']:.2f}"
    a = next(l for l in upright.lines if l.text.replace(" ", "").endswith(total))
    b = next(l for l in page.lines if l.text.replace(" ", "").endswith(total))
    bx = np.array(page.original_bbox(b), float)  # in the turned input's pixels
    w, h = receipt.image.size
    ax0, ay0, ax1, ay1 = upright.original_bbox(a)
    # where the upright box lands after the same turn of the input
    expect = [ay0, w - ax1, ay1, w - ax0] if turn == 1 else [w - ax1, h - ay1, w - ax0, h - ay0]
    assert np.allclose(bx, expect, atol=4), (bx, expect)
