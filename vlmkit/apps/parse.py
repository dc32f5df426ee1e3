"""A layout-aware parser: OCR lines -> document fields (receipts and simple invoices), each with its evidence.

No model, only geometry and patterns, so it is deterministic and every value
it returns was read from a line of OCR text:

1. Rows. Line centres are levelled by the page's skew (measured from the
   boxes), then lines whose levelled centres are within half a line height
   join one row, left to right. A right-aligned amount then sits in the row of
   its label even on a tilted photo.
2. Amounts. A money token is digits with two decimals ("16.82", "1,234.50",
   "16,82"), optionally behind a currency symbol or code. The rightmost one in
   a row is that row's amount.
3. Keywords decide the totals rows (subtotal before total, since "subtotal"
   contains "total"; tax with its rate when printed). Rows with a name and an
   amount above the totals are items; "2 x 8.41" (or "2 @ 8.41") under or
   beside an item gives its quantity and unit price. Invoice tables
   ("Widget 2 8.41 16.82") read the same way, right to left.
4. The merchant is the first row of words at the top; dates are normalised to
   ISO 8601.

OCR drops narrow spaces ("PlantPot"), so names get spaces back at case and
letter/digit boundaries ("Plant Pot", "Milk 1L").
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any

from .ocr import OcrLine, OcrPage

CODES = {"USD": "USD", "US$": "USD", "EUR": "EUR", "GBP": "GBP", "CHF": "CHF", "JPY": "JPY", "CAD": "CAD", "AUD": "AUD",
         "SEK": "SEK", "NOK": "NOK", "DKK": "DKK", "PLN": "PLN", "CNY": "CNY", "INR": "INR"}
SYMBOLS = {"$": "USD", "€": "EUR", "£": "GBP", "¥": "JPY"}
# a currency prefix the recogniser may produce for a glyph it cannot spell (€ -> C/E/e, £ -> f/E/L)
_GLYPH_STANDINS = set("CEeLf")

_MONEY = re.compile(r"(?<![\d.,])(?P<cur>US\$|[$€£¥]|[A-Z]{3}(?=\s?\d))?\s?(?P<neg>-)?\s?"
                    r"(?P<num>\d{1,3}(?:,\d{3})+\.\d{2}|\d+[.,] ?\d{2})(?![\d%])")
_QTY = re.compile(r"(?P<qty>\d{1,4})\s*[xX×*@]\s*(?:US\$|[$€£¥]|[A-Z]{3})?\s?(?P<unit>\d{1,3}(?:,\d{3})+\.\d{2}|\d+[.,]\d{2})")
_RATE = re.compile(r"(\d{1,2}(?:[.,]\d{1,3})?)\s*%")
_ISO = re.compile(r"(?<!\d)(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})(?!\d)")
_DMY = re.compile(r"(?<!\d)(\d{1,2})[-/.](\d{1,2})[-/.](\d{4}|\d{2})(?!\d)")
_MONTHS = {m: i + 1 for i, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"))}
_TEXT_DATE = re.compile(r"(?i)(?:(\d{1,2})\s*([a-z]{3})[a-z]*\.?,?\s*(\d{4}))|(?:([a-z]{3})[a-z]*\.?\s*(\d{1,2}),?\s*(\d{4}))")

KEYWORDS = {  # compact lower-case text (OCR drops spaces), checked in this order
    "subtotal": ("subtotal", "sub-total", "subtot", "netamount", "net", "zwischensumme", "sous-total"),
    "tax": ("tax", "vat", "gst", "hst", "mwst", "tva", "iva"),
    "total": ("total", "amountdue", "balancedue", "balance", "grandtotal", "totaldue", "tota1", "totai", "summe"),
}
_STOP_ROWS = ("thankyou", "change", "cash", "card", "visa", "mastercard", "tendered", "payment")
_INVOICE_NO = re.compile(r"(?i)invoice\s*(?:no\.?|number|num\.?|#)?\s*[:#.]?\s*([A-Z0-9][A-Z0-9/-]{2,})")
_DUE = re.compile(r"(?i)\bdue\b")
_BILL_TO = re.compile(r"(?i)^(bill(ed)?\s*to|customer|sold\s*to)\s*[:.]?\s*")


@dataclass
class Value:
    """One extracted value with the OCR lines it was read from."""

    value: Any
    lines: list[OcrLine] = field(default_factory=list)
    implied: bool = False  # set by a stated convention (qty 1 where a receipt prints no quantities), not read

    @property
    def score(self) -> float:
        return min((l.score for l in self.lines), default=1.0 if self.implied else 0.0)


@dataclass
class Row:
    lines: list[OcrLine]  # left to right
    y: float  # levelled centre
    height: float

    @property
    def text(self) -> str:
        return " ".join(l.text for l in self.lines)

    @property
    def compact(self) -> str:
        return re.sub(r"\s+", "", self.text).lower()


@dataclass
class Money:
    value: Decimal
    currency: str | None  # ISO code when printed next to the number
    standin: bool  # a lone letter where a currency glyph was (the recogniser could not spell it)
    line: OcrLine
    start: int  # character span in line.text
    end: int


# ---------------------------------------------------------------- tokens
def parse_money(line: OcrLine) -> list[Money]:
    out = []
    text = line.text
    for m in _MONEY.finditer(text):
        num = m.group("num").replace(" ", "")  # "14. 41": OCR put a space after the point
        if "," in num and "." not in num:
            num = num.replace(",", ".")  # "16,82": a decimal comma
        try:
            v = Decimal(num.replace(",", ""))
        except InvalidOperation:
            continue
        if m.group("neg"):
            v = -v
        cur = m.group("cur")
        code = SYMBOLS.get(cur) or CODES.get(cur or "")
        if cur and not code:
            continue  # three capitals that are not a currency ("ABC12.50") are not an amount's prefix
        before = text[:m.start()].rstrip()
        standin = code is None and len(before) >= 1 and before[-1] in _GLYPH_STANDINS and (len(before) == 1 or not before[-2].isalpha())
        start = m.start() if cur else m.start("num") - (1 if m.group("neg") else 0)
        out.append(Money(v, code, standin, line, start, m.end()))
    return out


def parse_date(text: str, prefer_month_first: bool = False) -> str | None:
    """The first date in text, as YYYY-MM-DD; day/month order is decided by values > 12, else by preference."""
    m = _ISO.search(text)
    if m:
        return _iso(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    m = _DMY.search(text)
    if m:
        a, b, y = int(m.group(1)), int(m.group(2)), int(m.group(3))
        y += 2000 if y < 100 else 0
        if a > 12 or (b <= 12 and not prefer_month_first):
            return _iso(y, b, a)
        return _iso(y, a, b)
    m = _TEXT_DATE.search(text)
    if m:
        if m.group(1):
            d, mon, y = m.group(1), m.group(2), m.group(3)
        else:
            mon, d, y = m.group(4), m.group(5), m.group(6)
        month = _MONTHS.get(mon.lower()[:3])
        if month:
            return _iso(int(y), month, int(d))
    return None


def _iso(y: int, m: int, d: int) -> str | None:
    try:
        return date(y, m, d).isoformat()
    except ValueError:
        return None


_UNITS = r"(?:kg|g|l|L|ml|cl|oz|lb|pk|pcs?)"


def clean_name(text: str) -> str:
    """A name as OCR misspells it in predictable ways: spaces dropped, O read as 0, 1 read as l.

    Only words change, never amounts: "0live 0il" -> "Olive Oil", "Rice lkg" -> "Rice 1kg".
    """
    text = " ".join("1" + w[1:] if re.fullmatch(rf"[lI]{_UNITS}", w) else w for w in text.split())  # "lkg": 1 kg
    words = []
    for w in unsquash(text).split(" "):
        if re.fullmatch(r"[A-Za-z]*0[A-Za-z0]*", w) and sum(c.isalpha() for c in w) >= 2:
            w = w.replace("0", "O")  # a zero inside a word of letters is a letter O
        words.append(w)
    return " ".join(words)


def unsquash(text: str) -> str:
    """Put back spaces OCR dropped between words: "PlantPot" -> "Plant Pot", "Milk1L" -> "Milk 1L"."""
    text = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", text)
    text = re.sub(r"(?<=[A-Z])(?=[A-Z][a-z]{2,})", " ", text)  # "USBCable" -> "USB Cable"
    text = re.sub(r"(?<=[a-z]{2})(?=\d)", " ", text)
    return " ".join(text.split())


# ---------------------------------------------------------------- rows
def rows_of(page: OcrPage) -> list[Row]:
    """Lines grouped into rows, top to bottom, using centres levelled by the page skew."""
    if not page.lines:
        return []
    a, b = _skew_fit(page.lines, page.skew)
    xc = sum(l.centre[0] for l in page.lines) / len(page.lines)
    items = []
    for line in page.lines:
        cx, cy = line.centre
        items.append((cy - math.tan(math.radians(a + b * cy)) * (cx - xc), cx, line))
    items.sort(key=lambda it: it[0])
    rows: list[list] = []  # [y_sum, n, height, [(x, line)]]
    for y, x, line in items:
        h = line.height
        best, gap = None, None
        for r in rows[-4:]:  # rows are built top-down; only the last few can still take a line
            ry = r[0] / r[1]
            if abs(ry - y) < 0.55 * min(h, r[2]) and not any(_overlap_x(line, other) for _, other in r[3]):
                if gap is None or abs(ry - y) < gap:
                    best, gap = r, abs(ry - y)
        if best is None:
            rows.append([y, 1, h, [(x, line)]])
        else:
            best[0] += y
            best[1] += 1
            best[2] = max(best[2], h)
            best[3].append((x, line))
    out = [Row([l for _, l in sorted(r[3], key=lambda xl: xl[0])], r[0] / r[1], r[2]) for r in rows]
    out.sort(key=lambda r: r.y)
    return out


def _skew_fit(lines: list[OcrLine], fallback: float) -> tuple[float, float]:
    """Text angle as a linear function of height on the page, angle(y) = a + b * y, in degrees.

    A phone photo is a perspective view: the top and bottom of a receipt lean by
    different angles, so one angle for the page misplaces rows at one end.
    Weighted least squares over wide boxes, with the largest misfits dropped once.
    """
    import numpy as np

    ys, angs, ws = [], [], []
    for l in lines:
        p = np.asarray(l.box, dtype=np.float64)
        v = (p[1] - p[0]) + (p[2] - p[3])
        if l.height <= 0 or l.width / l.height < 2.0:
            continue
        ys.append(l.centre[1])
        angs.append(math.degrees(math.atan2(v[1], v[0])))
        ws.append(l.width)
    if len(ys) < 6 or max(ys) - min(ys) < 1e-6:
        return fallback, 0.0
    y, t, w = np.asarray(ys), np.asarray(angs), np.asarray(ws)
    keep = np.ones(len(y), bool)
    for _ in range(2):
        A = np.c_[np.ones(keep.sum()), y[keep]] * np.sqrt(w[keep])[:, None]
        coef, *_ = np.linalg.lstsq(A, t[keep] * np.sqrt(w[keep]), rcond=None)
        resid = np.abs(t - (coef[0] + coef[1] * y))
        keep = resid <= max(np.percentile(resid, 80), 0.3)
    return float(coef[0]), float(coef[1])


def _overlap_x(a: OcrLine, b: OcrLine) -> bool:
    ax0, _, ax1, _ = a.bbox
    bx0, _, bx1, _ = b.bbox
    return min(ax1, bx1) - max(ax0, bx0) > 0.3 * min(ax1 - ax0, bx1 - bx0)


def keyword_of(row: Row) -> str | None:
    """'subtotal' | 'tax' | 'total' | None, from the row's words (its amounts removed)."""
    words = re.sub(r"[\d.,%$€£¥:]+", "", row.compact)
    for kind, keys in KEYWORDS.items():
        for k in keys:
            if words.startswith(k) or (len(k) >= 5 and k in words) or (len(k) >= 5 and _near(words[:len(k)], k)):
                if kind == "total" and words.startswith(("subtot", "sub-tot")):
                    continue
                return kind
    return None


def _near(a: str, b: str) -> bool:
    """Edit distance at most 1 (one OCR confusion)."""
    if abs(len(a) - len(b)) > 1 or not a:
        return False
    if len(a) == len(b):
        return sum(x != y for x, y in zip(a, b)) <= 1
    s, l = (a, b) if len(a) < len(b) else (b, a)
    return any(l[:i] + l[i + 1:] == s for i in range(len(l)))


# ---------------------------------------------------------------- the parser
def parse_document(page: OcrPage) -> dict:
    """OCR page -> {role: Value | None, "items": [{role: Value | None}], "tax_rate": Value | None}.

    Roles: merchant, date, due_date, invoice_number, customer, items (name, qty, unit_price, price),
    subtotal, tax, total, currency. A role the page does not show is None, never a guess.
    """
    rows = rows_of(page)
    doc: dict[str, Any] = {k: None for k in ("merchant", "date", "due_date", "invoice_number", "customer", "subtotal",
                                             "tax", "total", "currency", "tax_rate")}
    doc["items"] = []
    if not rows:
        return doc
    money = {id(r): [m for l in r.lines for m in parse_money(l)] for r in rows}
    kinds = {id(r): keyword_of(r) if money[id(r)] or _amount_below(rows, i, money) else None for i, r in enumerate(rows)}
    usd_hint = any(m.currency == "USD" for ms in money.values() for m in ms)

    first_total = next((i for i, r in enumerate(rows) if kinds[id(r)]), len(rows))
    _totals(rows, money, kinds, doc)
    first_total = _unlabelled_totals(rows, money, kinds, doc, first_total)
    _dates(rows, doc, usd_hint)
    _header(rows, money, kinds, doc, first_total)
    doc["items"] = _items(rows, money, kinds, first_total, doc)
    doc["currency"] = _currency(rows, money, doc, page)
    return doc


def _unlabelled_totals(rows, money, kinds, doc, first_total: int) -> int:
    """Amounts whose label OCR lost, placed by position: the subtotal right above the tax/total rows,
    the total right below the subtotal/tax rows. Returns where the totals block starts."""
    def amount_only(r: Row) -> bool:
        return bool(money[id(r)]) and not re.search(r"[A-Za-z]{2}", re.sub(r"[A-Z]{3}", "", r.text))

    if doc["subtotal"] is None and 0 < first_total < len(rows) and kinds[id(rows[first_total])] in ("tax", "total"):
        above = rows[first_total - 1]
        if amount_only(above):
            m = money[id(above)][-1]
            doc["subtotal"] = Value(m.value, [m.line])
            first_total -= 1
    if doc["total"] is None:
        last = max((i for i, r in enumerate(rows) if kinds[id(r)] in ("subtotal", "tax")), default=None)
        if last is not None and last + 1 < len(rows) and amount_only(rows[last + 1]):
            m = money[id(rows[last + 1])][-1]
            doc["total"] = Value(m.value, [m.line])
    return first_total


def _amount_below(rows: list[Row], i: int, money: dict) -> bool:
    """A label whose amount OCR put just below it (a tilted photo): the next row has only an amount."""
    if i + 1 >= len(rows):
        return False
    nxt = rows[i + 1]
    return bool(money[id(nxt)]) and not re.search(r"[a-z]{2}", nxt.compact) and nxt.y - rows[i].y < 1.2 * rows[i].height


def _totals(rows, money, kinds, doc) -> None:
    for i, r in enumerate(rows):
        kind = kinds[id(r)]
        if not kind or doc[kind] is not None:
            continue
        ms = money[id(r)] or (money[id(rows[i + 1])] if _amount_below(rows, i, money) else [])
        if not ms:
            continue
        m = ms[-1]  # the rightmost amount: "Tax 7% 1.18" has the rate first
        label = next((l for l in r.lines if re.search(r"[A-Za-z]", l.text)), m.line)
        doc[kind] = Value(m.value, [m.line] if label is m.line else [label, m.line])
        if kind == "tax":
            rate = _RATE.search(r.text.replace(" ", ""))
            if rate:
                doc["tax_rate"] = Value(Decimal(rate.group(1).replace(",", ".")), [label])


def _dates(rows, doc, usd_hint: bool) -> None:
    for r in rows:
        d = parse_date(r.text, prefer_month_first=usd_hint)
        if d is None:
            continue
        line = next((l for l in r.lines if parse_date(l.text, usd_hint)), r.lines[0])
        key = "due_date" if _DUE.search(r.text) else "date"
        if doc[key] is None:
            doc[key] = Value(d, [line])


def _header(rows, money, kinds, doc, first_total: int) -> None:
    for i, r in enumerate(rows[:first_total]):
        m = _INVOICE_NO.search(r.text)
        if m and doc["invoice_number"] is None:
            doc["invoice_number"] = Value(m.group(1), [r.lines[0]])
        b = _BILL_TO.match(r.text)
        if b and doc["customer"] is None:
            rest = r.text[b.end():].strip()
            if rest:
                doc["customer"] = Value(unsquash(rest), list(r.lines))
            elif i + 1 < len(rows):
                doc["customer"] = Value(unsquash(rows[i + 1].text), list(rows[i + 1].lines))
    for r in rows[:max(1, min(first_total, 4))]:
        words = r.text.strip()
        if money[id(r)] or parse_date(words) or _INVOICE_NO.search(words) or len(re.findall(r"[A-Za-z]", words)) < 3:
            continue
        if re.match(r"(?i)^(invoice|receipt|tax invoice)\b", words) and len(words.split()) <= 2:
            continue  # a document title is not the merchant
        doc["merchant"] = Value(clean_name(words), list(r.lines))
        return


def _items(rows, money, kinds, first_total: int, doc) -> list[dict]:
    header_end = 0
    for i, r in enumerate(rows[:first_total]):
        if doc["date"] is not None and doc["date"].lines[0] in r.lines:
            header_end = i + 1  # items start below the date line when there is one
    items: list[dict] = []
    used_qty: set[int] = set()
    region = rows[header_end:first_total]
    for k, r in enumerate(region):
        ms = money[id(r)]
        if not ms or any(s in r.compact for s in _STOP_ROWS):
            continue
        qty_here = _qty_in(r)
        name_lines = [l for l in r.lines if re.search(r"[A-Za-z]{2}", l.text) and not _QTY.fullmatch(_compact(l.text))]
        if not name_lines:
            continue  # an amount with no words: not an item row
        price = ms[-1]
        q, table = qty_here, False
        if q is None:
            for j in (k + 1, k - 1):  # the quantity line under the item (or above it)
                if 0 <= j < len(region) and id(region[j]) not in used_qty and not _has_name_amount(region[j], money):
                    q = _qty_in(region[j])
                    if q is not None:
                        used_qty.add(id(region[j]))
                        break
        if q is None:
            q = _table_numbers(r, price)
            table = q is not None
        name_text = " ".join(_strip_amounts(l.text, table) for l in name_lines).strip()
        if not name_text:
            continue
        item = {"name": Value(clean_name(name_text), name_lines), "price": Value(price.value, [price.line]),
                "qty": None, "unit_price": None}
        if q is not None:
            qty, unit, line = q
            item["qty"], item["unit_price"] = Value(qty, [line]), Value(unit, [line])
        items.append(item)
    if items and all(it["qty"] is None for it in items):
        for it in items:  # this receipt prints no quantities: one of each, at the printed price
            it["qty"] = Value(1, implied=True)
            it["unit_price"] = Value(it["price"].value, list(it["price"].lines), implied=True)
    return items


def _compact(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _qty_in(row: Row):
    for l in row.lines:
        m = _QTY.search(_compact(l.text))
        if m:
            unit = m.group("unit").replace(",", ".") if "." not in m.group("unit") else m.group("unit").replace(",", "")
            return int(m.group("qty")), Decimal(unit), l
    return None


def _has_name_amount(row: Row, money) -> bool:
    return bool(money[id(row)]) and any(re.search(r"[A-Za-z]{2}", l.text) and not _QTY.search(_compact(l.text)) for l in row.lines)


def _table_numbers(row: Row, price: Money):
    """An invoice table row "Widget  2  8.41  16.82": the amount before the price, and the whole number before that."""
    ms = [m for l in row.lines for m in parse_money(l)]
    if len(ms) < 2:
        return None
    unit = ms[-2]
    # the quantity column: the last whole number left of the unit price, in its own line or an earlier one
    texts = [unit.line.text[:unit.start]] + [l.text for l in reversed(row.lines[:row.lines.index(unit.line)])]
    for t in texts:
        ints = re.findall(r"(?<![A-Za-z\d.,])(\d{1,4})(?![\d.,A-Za-z])", t)
        if ints:
            return int(ints[-1]), unit.value, unit.line
    return None


def _strip_amounts(text: str, table: bool) -> str:
    """The item's name: the line without its amounts (and, in a table row, without its quantity column)."""
    text = _MONEY.sub("", _QTY.sub("", text))
    if table:
        text = re.sub(r"(?<![A-Za-z\d])\d{1,4}\s*$", "", text.strip())
    return text.strip(" :-")


def _currency(rows, money, doc, page) -> Value | None:
    """A printed code or symbol (total first), else the glyph the recogniser skipped before the total."""
    total = doc.get("total")
    order = [m for ms in money.values() for m in ms]
    if total is not None:
        order = [m for m in order if m.line in total.lines] + order
    for m in order:
        if m.currency:
            return Value(m.currency, [m.line])
    for r in rows:
        for code in CODES:
            if re.search(rf"(?<![A-Z]){re.escape(code)}(?![A-Z])", r.text):
                return Value(CODES[code], [r.lines[0]])
    if total is None:
        return None
    m = next((m for m in order if m.line in total.lines), None)
    if m is None:
        return None
    g = _glyph_before(m, page)
    return Value(SYMBOLS[g], [m.line]) if g else None


def _glyph_before(m: Money, page: OcrPage) -> str | None:
    """Classify the first glyph of the amount's box: a symbol the recogniser skipped or spelled as a letter.

    Only asked when no code or symbol was read anywhere. When nothing was
    skipped, the first glyph is a digit, which the classifier rejects.
    """
    from .ocr import currency_glyph, leading_glyph

    if page.prepared is None or (m.start > 0 and not m.standin):
        return None  # no pixels to look at; or words before the amount were read: a skipped glyph would not be at the box's edge
    box = leading_glyph(page.prepared.image, m.line.bbox)
    return currency_glyph(page.prepared.image, box)[0] if box else None
