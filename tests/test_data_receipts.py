"""Receipts: exact Decimal arithmetic, the schema, and deliberately wrong totals recorded in the truth."""
from __future__ import annotations

import json
import random
from decimal import ROUND_HALF_UP, Decimal

import numpy as np
import pytest

from vlmkit.data import make_source
from vlmkit.data.receipts import ReceiptsGenerator, compute

SCHEMA_KEYS = {"merchant", "date", "items", "subtotal", "tax", "total", "currency"}
ITEM_KEYS = {"name", "qty", "unit_price", "price"}
D = Decimal


def _dec(x) -> Decimal:
    return D(str(x)).quantize(D("0.01"))


def test_arithmetic_is_exact_on_many_receipts():
    gen = ReceiptsGenerator(augment="none")
    for k in range(500):
        spec = gen.spec(random.Random(k))
        printed, correct = gen.receipt(spec)
        for it in printed["items"]:
            assert it["price"] == it["unit_price"] * it["qty"]
            assert it["price"].as_tuple().exponent == -2
        assert printed["subtotal"] == sum(it["price"] for it in printed["items"])
        assert printed["tax"] == (printed["subtotal"] * D(spec["tax_rate"]) / 100).quantize(D("0.01"), ROUND_HALF_UP)
        assert printed["total"] == correct == printed["subtotal"] + printed["tax"]


def test_half_cent_tax_rounds_half_up():
    calc = compute([{"name": "x", "qty": 1, "unit_price": "0.10"}], "5")  # 0.005 -> 0.01, not banker's 0.00
    assert calc["tax"] == D("0.01") and calc["total"] == D("0.11")


def test_ground_truth_json_follows_the_schema_and_adds_up():
    src = make_source("receipts", "train", seed=0, n=8, augment="none")
    for s in src:
        r = s.truth["receipt"]
        assert set(r) == SCHEMA_KEYS and r["items"] and all(set(it) == ITEM_KEYS for it in r["items"])
        assert isinstance(r["subtotal"], float) and isinstance(r["items"][0]["qty"], int)
        assert _dec(r["subtotal"]) == sum(_dec(it["price"]) for it in r["items"])
        assert _dec(r["total"]) == _dec(r["subtotal"]) + _dec(r["tax"])
        assert s.truth["total_correct"] is True
        extraction = next(q for q in s.qa if q.slice == "receipt")
        assert extraction.metric == "json_f1" and json.loads(extraction.answer) == r
        assert s.image.size == (384, 640)


def test_wrong_totals_are_printed_and_recorded():
    src = make_source("receipts", "test", seed=1, n=6, augment="none", wrong_total_rate=1.0)
    for s in src:
        r = s.truth["receipt"]
        assert s.truth["total_correct"] is False
        assert _dec(s.truth["correct_total"]) == _dec(r["subtotal"]) + _dec(r["tax"])
        assert _dec(r["total"]) != _dec(s.truth["correct_total"]) and r["total"] > 0
    mixed = [s.truth["total_correct"] for s in make_source("receipts", "train", seed=2, n=40, augment="none",
                                                           wrong_total_rate=0.25)]
    assert 2 <= mixed.count(False) <= 20  # a rate, not all or nothing
    assert all(make_source("receipts", "train", seed=2, n=5, augment="none")[i].truth["total_correct"] for i in range(5))


def test_bad_rate_is_a_clear_error():
    from vlmkit.data import DataError

    with pytest.raises(DataError, match="wrong_total_rate"):
        make_source("receipts", wrong_total_rate=1.5)


def test_printed_total_is_legible_to_ocr():
    ocr_mod = pytest.importorskip("rapidocr_onnxruntime")
    s = make_source("receipts", "val", seed=0, n=1, augment="none")[0]
    lines = [t.replace(" ", "") for _, t, _ in (ocr_mod.RapidOCR()(np.asarray(s.image))[0] or [])]  # OCR drops spaces
    total = f"{s.truth['receipt']['total']:.2f}"
    assert any(t.endswith(total) for t in lines), (total, lines)
    assert s.truth["receipt"]["merchant"].replace(" ", "") in lines
