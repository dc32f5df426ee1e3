"""Verification: receipt arithmetic with a tolerance, the citation check against OCR text, confidence; nothing is ever fixed."""
from __future__ import annotations

import copy
from decimal import Decimal as D

import pytest

from vlmkit.apps.ocr import OcrLine, OcrPage
from vlmkit.apps.parse import Value
from vlmkit.apps.verify import VerifyConfig, confidence, find, verify


def line(text: str, y: float = 0.0, score: float = 0.99) -> OcrLine:
    return OcrLine(text, [[0, y], [100, y], [100, y + 10], [0, y + 10]], score)


PAGE_LINES = ["Corner Cafe", "Date: 2024-03-05", "Latte", "16.82", "2 x 8.41", "Bagel", "2.50", "1x2.50",
              "Subtotal", "19.32", "Tax 10%", "1.93", "TOTAL", "$21.25"]


def page(lines=PAGE_LINES) -> OcrPage:
    return OcrPage([line(t, 12 * i) for i, t in enumerate(lines)], prepared=None)


def doc(total="21.25", tax="1.93", subtotal="19.32", items=(("Latte", 2, "8.41", "16.82"), ("Bagel", 1, "2.50", "2.50")),
        rate="10", date="2024-03-05"):
    d = {"merchant": Value("Corner Cafe"), "date": Value(date) if date else None, "currency": Value("USD"),
         "subtotal": Value(D(subtotal)) if subtotal else None, "tax": Value(D(tax)) if tax else None,
         "total": Value(D(total)) if total else None, "tax_rate": Value(D(rate)) if rate else None,
         "items": [{"name": Value(n), "qty": Value(q), "unit_price": Value(D(u)), "price": Value(D(p))} for n, q, u, p in items]}
    return d


def failed(checks):
    return sorted(c.name for c in checks if not c.ok)


def test_a_consistent_cited_receipt_verifies():
    checks = verify(doc(), page())
    assert failed(checks) == []
    names = {c.name for c in checks}
    assert {"present:total", "items_sum", "total_sum", "tax_rate", "item_arithmetic[0]", "item_arithmetic[1]",
            "citation:total", "citation:items[0].qty", "citation:date"} <= names


def test_a_total_one_cent_off_fails_by_default_and_passes_a_wider_tolerance():
    p = page(PAGE_LINES[:-1] + ["$21.26"])
    d = doc(total="21.26")
    assert failed(verify(d, p)) == ["total_sum"]
    assert failed(verify(d, p, VerifyConfig(tolerance=0.02))) == []


def test_each_arithmetic_check_fails_on_its_own():
    p = page(PAGE_LINES + ["8.40", "19.31", "1.50"])
    bad_item = doc(items=(("Latte", 2, "8.40", "16.82"), ("Bagel", 1, "2.50", "2.50")))
    assert failed(verify(bad_item, p)) == ["item_arithmetic[0]"]
    bad_sum = doc(subtotal="19.31", total="21.25", tax="1.93")
    assert failed(verify(bad_sum, p)) == ["items_sum", "total_sum"]
    bad_rate = doc(tax="1.50", total="20.82", subtotal="19.32")
    assert "tax_rate" in failed(verify(bad_rate, page(PAGE_LINES + ["20.82", "1.50"])))


def test_missing_values_fail_rather_than_being_assumed():
    d = doc(total=None)
    assert "present:total" in failed(verify(d, page()))
    d = doc()
    d["items"][1]["qty"] = None
    assert failed(verify(d, page())) == ["item_arithmetic[1]"]
    d = doc(subtotal=None, tax=None, total="19.32")  # no subtotal or tax: the items make the total
    assert failed(verify(d, page(PAGE_LINES + ["19.32"]))) == []


def test_citation_catches_an_invented_number_even_when_the_arithmetic_holds():
    # a self-consistent receipt whose digits were never printed
    d = doc(total="21.35", tax="2.03", rate=None)
    checks = verify(d, page())
    assert failed(checks) == ["citation:tax", "citation:total"]
    assert not any(c.ok for c in verify(d, None) if c.name.startswith("citation:"))  # no OCR at all: nothing is cited


def test_citation_reads_number_formats_but_not_a_bare_integer_for_money():
    p = page(["TOTAL EUR 1.234,50", "1,234.50", "Qty 3", "5", "2x8.41", "16,82"])
    assert [l.text for l in find(D("1234.50"), "money", p)] == ["1,234.50"]
    assert [l.text for l in find(D("16.82"), "money", p)] == ["16,82"]
    assert find(D("5.00"), "money", p) == []  # "5" is not an amount with cents
    assert [l.text for l in find(5, "int", p)] == ["5"]
    assert [l.text for l in find(2, "int", p)] == ["2x8.41"]
    dp = page(["Date: 05/03/2024"])
    assert len(find("2024-03-05", "date", dp)) == 1 and find("2024-03-06", "date", dp) == []


def test_implied_quantities_are_reported_not_hidden():
    d = doc()
    d["items"][1]["qty"] = Value(1, implied=True)
    checks = verify(d, page(PAGE_LINES[:7] + PAGE_LINES[8:]))  # the "1x2.50" line is gone
    c = next(c for c in checks if c.name == "citation:items[1].qty")
    assert c.ok and "implied" in c.detail


def test_verify_never_changes_the_document():
    d = doc(total="99.99")
    before = copy.deepcopy({k: (v.value if isinstance(v, Value) else v) for k, v in d.items() if k != "items"})
    verify(d, page())
    assert {k: (v.value if isinstance(v, Value) else v) for k, v in d.items() if k != "items"} == before


def test_confidence_falls_with_failed_checks_and_weak_ocr():
    p = page()
    strong = doc()
    for k in ("subtotal", "tax", "total"):
        strong[k].lines = [line("x", score=0.99)]
    c_ok = confidence(strong, verify(strong, p))
    weak = copy.deepcopy(strong)
    for k in ("subtotal", "tax", "total"):
        weak[k].lines = [line("x", score=0.6)]
    assert 0.95 < c_ok <= 1.0
    assert confidence(weak, verify(weak, p)) < c_ok
    wrong = doc(total="21.26")
    wrong["total"].lines = [line("x", score=0.99)]
    assert confidence(wrong, verify(wrong, p)) < c_ok


def test_bad_tolerance_is_refused():
    with pytest.raises(ValueError, match="tolerance"):
        VerifyConfig(tolerance=-1)
