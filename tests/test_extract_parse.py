"""The layout parser on hand-made OCR lines: rows on tilted pages, totals keywords, items, tables, dates, money formats."""
from __future__ import annotations

import math
from decimal import Decimal as D

import numpy as np
import pytest

from vlmkit.apps.ocr import OcrLine, OcrPage
from vlmkit.apps.parse import keyword_of, parse_date, parse_document, parse_money, rows_of, unsquash
from vlmkit.apps.preprocess import skew_angle


def box(x, y, w, h=18, angle=0.0, cx=0.0, cy=0.0):
    """A text box at (x, y), turned by angle degrees (clockwise, image y down) about (cx, cy)."""
    pts = np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], dtype=float)
    a = math.radians(angle)
    R = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return ((pts - [cx, cy]) @ R.T + [cx, cy]).tolist()


def page_from(rows, angle=0.0, step=22):
    """rows: [[(x, text), ...], ...] laid out top-down; 9 px per character."""
    lines = []
    for i, row in enumerate(rows):
        for x, text in row:
            lines.append(OcrLine(text, box(x, 40 + i * step, 9 * len(text), angle=angle, cx=200, cy=300), 0.98))
    return OcrPage(lines, prepared=None, skew=skew_angle([l.box for l in lines]))


RECEIPT = [
    [(120, "MetroMarket")], [(140, "28 Park Ave")], [(30, "Date:2022-10-11"), (300, "12:20")],
    [(30, "Latte"), (300, "16.82")], [(45, "2x8.41")],
    [(30, "PlantPot"), (310, "7.56")], [(45, "3 x 2.52")],
    [(30, "Subtotal"), (300, "24.38")], [(30, "Tax 7%"), (310, "1.71")], [(30, "TOTAL"), (270, "CHF 26.09")],
    [(130, "Thank you!")],
]


def plain(v):
    return None if v is None else (float(v.value) if isinstance(v.value, D) else v.value)


@pytest.mark.parametrize("angle", [0.0, 3.0, -3.0])
def test_receipt_fields_and_items_on_level_and_tilted_pages(angle):
    doc = parse_document(page_from(RECEIPT, angle))
    assert plain(doc["merchant"]) == "Metro Market"
    assert plain(doc["date"]) == "2022-10-11"
    assert (plain(doc["subtotal"]), plain(doc["tax"]), plain(doc["total"])) == (24.38, 1.71, 26.09)
    assert plain(doc["currency"]) == "CHF" and plain(doc["tax_rate"]) == 7.0
    items = [{k: plain(v) for k, v in it.items()} for it in doc["items"]]
    assert items == [{"name": "Latte", "qty": 2, "unit_price": 8.41, "price": 16.82},
                     {"name": "Plant Pot", "qty": 3, "unit_price": 2.52, "price": 7.56}]
    assert doc["total"].lines[-1].text == "CHF 26.09"  # evidence: the line that printed it


def test_rows_follow_a_perspective_lean_that_changes_down_the_page():
    # the top of the page leans 4 degrees, the bottom 0: one angle for the page would misplace the top rows
    lines = []
    for i in range(12):
        y = 40 + 24 * i
        a = 4.0 * (1 - i / 11)
        lines.append(OcrLine(f"Item{i}", box(30, y, 60, angle=a, cx=30, cy=y), 0.9))
        dy = math.tan(math.radians(a)) * 270
        lines.append(OcrLine(f"{i}.00", box(300, y + dy, 36, angle=a, cx=300, cy=y + dy), 0.9))
    rows = rows_of(OcrPage(lines, prepared=None, skew=skew_angle([l.box for l in lines])))
    assert [r.text for r in rows] == [f"Item{i} {i}.00" for i in range(12)]


def test_keywords_subtotal_before_total_and_one_ocr_slip():
    def kw(*texts):
        return keyword_of(rows_of(page_from([[(30 + 200 * i, t) for i, t in enumerate(texts)]]))[0])

    assert kw("Subtotal", "9.00") == "subtotal"
    assert kw("SUB-TOTAL", "9.00") == "subtotal"
    assert kw("TOTAL", "9.00") == "total"
    assert kw("T0TAL", "9.00") == "total"  # one misread letter
    assert kw("Grand Total", "9.00") == "total"
    assert kw("VAT 20%", "1.50") == "tax"
    assert kw("Latte", "9.00") is None


def test_money_formats_and_currency_marks():
    def money(text):
        return [(str(m.value), m.currency, m.standin) for m in parse_money(OcrLine(text, box(0, 0, 90), 0.9))]

    assert money("$61.08") == [("61.08", "USD", False)]
    assert money("CHF46.46") == [("46.46", "CHF", False)]
    assert money("1,234.50") == [("1234.50", None, False)]
    assert money("16,82") == [("16.82", None, False)]
    assert money("f51.27") == [("51.27", None, True)]  # a pound sign the recogniser cannot spell
    assert money("Tax 7% 1.18") == [("1.18", None, False)]
    assert money("12:20") == [] and money("2022-10-11") == []


def test_dates_are_normalised_and_impossible_ones_refused():
    assert parse_date("Date:2022-10-11") == "2022-10-11"
    assert parse_date("11/10/2022") == "2022-10-11"  # day first where ambiguous
    assert parse_date("11/10/2022", prefer_month_first=True) == "2022-11-10"
    assert parse_date("25/12/2021", prefer_month_first=True) == "2021-12-25"  # 25 cannot be a month
    assert parse_date("12 Oct 2022") == "2022-10-12" and parse_date("Oct 12, 2022") == "2022-10-12"
    assert parse_date("2025-01-65") is None


def test_unsquash_restores_dropped_spaces():
    assert unsquash("PlantPot") == "Plant Pot"
    assert unsquash("MainStGrocery") == "Main St Grocery"
    assert unsquash("USBCable") == "USB Cable"
    assert unsquash("Milk1L") == "Milk 1L" and unsquash("Rice1kg") == "Rice 1kg" and unsquash("Eggs12") == "Eggs 12"
    assert unsquash("Light Bulb") == "Light Bulb"


def test_invoice_table_rows_and_header_fields():
    rows = [
        [(30, "ACME Supplies Ltd")], [(30, "INVOICE No: INV-2041")], [(30, "Date: 03/02/2024")],
        [(30, "Due date: 04/03/2024")], [(30, "Bill to: Blue Bottle Deli")],
        [(30, "Description"), (200, "Qty"), (260, "Unit"), (330, "Amount")],
        [(30, "Paper A4"), (210, "3"), (260, "4.50"), (330, "13.50")],
        [(30, "Toner"), (210, "1"), (260, "39.99"), (330, "39.99")],
        [(30, "Subtotal"), (330, "53.49")], [(30, "VAT 20%"), (330, "10.70")], [(30, "Total due"), (320, "EUR 64.19")],
    ]
    doc = parse_document(page_from(rows))
    assert plain(doc["merchant"]) == "ACME Supplies Ltd"
    assert plain(doc["invoice_number"]) == "INV-2041"
    assert (plain(doc["date"]), plain(doc["due_date"])) == ("2024-02-03", "2024-03-04")
    assert plain(doc["customer"]) == "Blue Bottle Deli"
    assert [{k: plain(v) for k, v in it.items()} for it in doc["items"]] == [
        {"name": "Paper A4", "qty": 3, "unit_price": 4.5, "price": 13.5},
        {"name": "Toner", "qty": 1, "unit_price": 39.99, "price": 39.99}]
    assert (plain(doc["subtotal"]), plain(doc["tax"]), plain(doc["total"]), plain(doc["currency"])) == (53.49, 10.7, 64.19, "EUR")


def test_receipts_without_quantities_get_one_each_marked_implied():
    rows = [[(100, "Corner Cafe")], [(30, "Coffee"), (300, "3.20")], [(30, "Muffin"), (300, "2.80")],
            [(30, "TOTAL"), (300, "6.00")]]
    doc = parse_document(page_from(rows))
    assert [(plain(it["qty"]), plain(it["unit_price"]), it["qty"].implied) for it in doc["items"]] == [(1, 3.2, True), (1, 2.8, True)]
    assert doc["subtotal"] is None and plain(doc["total"]) == 6.0


def test_an_empty_page_gives_nulls_not_guesses():
    doc = parse_document(OcrPage([], prepared=None))
    assert doc["items"] == [] and all(doc[k] is None for k in ("merchant", "date", "total", "currency"))


def test_amounts_whose_label_was_lost_are_placed_by_position():
    rows = [[(100, "Corner Cafe")], [(30, "Latte"), (300, "16.82")], [(45, "2x8.41")],
            [(300, "16.82")], [(30, "Tax 10%"), (300, "1.68")], [(300, "18.50")], [(130, "Thank you!")]]
    doc = parse_document(page_from(rows))
    assert (plain(doc["subtotal"]), plain(doc["tax"]), plain(doc["total"])) == (16.82, 1.68, 18.5)
    assert len(doc["items"]) == 1  # the label-less subtotal is not taken for an item


def test_ocr_spelling_slips_in_names_are_undone_but_never_in_amounts():
    from vlmkit.apps.parse import clean_name

    assert clean_name("0live 0il") == "Olive Oil" and clean_name("Rice lkg") == "Rice 1kg"
    assert clean_name("Milk lL") == "Milk 1L" and clean_name("Eggs 12") == "Eggs 12" and clean_name("Pizza 2000") == "Pizza 2000"
    rows = [[(100, "Fresh Mart")], [(30, "0live 0il"), (300, "20.00")], [(45, "1x20.00")],
            [(30, "Subtotal"), (300, "20. 00")], [(30, "TOTAL"), (300, "20.00")]]
    doc = parse_document(page_from(rows))
    assert plain(doc["items"][0]["name"]) == "Olive Oil" and plain(doc["subtotal"]) == 20.0
