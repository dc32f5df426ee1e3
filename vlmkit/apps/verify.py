"""Checks on an extracted document: its own arithmetic, and that its numbers were printed (the citation check).

    checks = verify(doc, page)          # doc: role -> parse.Value (see parse.py); page: the OCR evidence
    verified = all(c.ok for c in checks)

Arithmetic, in Decimal, each within `tolerance` (default half a cent, so a
total printed one cent off fails):
  qty x unit_price == price           per item
  sum(item prices) == subtotal        (== total when the document prints neither subtotal nor tax)
  subtotal + tax == total             (tax 0 when none is printed)
  tax == subtotal x rate              when a rate is printed, within one cent for rounding
Citation: every number in the document (amounts, quantities, the date) must
occur in the OCR text. A VLM that invents a digit fails here even when its
invented receipt adds up. Values are never changed to make a check pass: a
document that fails is reported as it was read, with the checks it failed.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from .ocr import OcrLine, OcrPage
from .parse import Value, parse_date


@dataclass
class VerifyConfig:
    tolerance: float = 0.005  # currency units; below one cent so an off-by-a-cent total fails
    tax_rate_tolerance: float = 0.01  # rounding of subtotal x rate differs between tills (half-up, half-even, down)
    check_tax_rate: bool = True
    require: tuple[str, ...] = ("total",)  # roles that must be present for a document to verify
    cite_dates: bool = True

    def __post_init__(self):
        if self.tolerance < 0 or self.tax_rate_tolerance < 0:
            raise ValueError("tolerances must be >= 0")
        self.require = tuple(self.require)


@dataclass
class Check:
    name: str  # "items_sum", "total_sum", "item_arithmetic[2]", "tax_rate", "citation:total", "present:total", ...
    ok: bool
    detail: str

    def to_dict(self) -> dict:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


def dec(x) -> Decimal | None:
    if x is None or isinstance(x, bool):
        return None
    try:
        d = Decimal(str(x))
    except (InvalidOperation, ValueError):
        return None
    return d if d.is_finite() else None


def _v(doc: dict, role: str):
    x = doc.get(role)
    return x.value if isinstance(x, Value) else x


def money_str(d: Decimal) -> str:
    return f"{d:.2f}"


def verify(doc: dict, page: OcrPage | None, cfg: VerifyConfig | None = None) -> list[Check]:
    cfg = cfg or VerifyConfig()
    tol = Decimal(str(cfg.tolerance))
    checks: list[Check] = []
    for role in cfg.require:
        present = _v(doc, role) is not None
        checks.append(Check(f"present:{role}", present, "found" if present else f"no {role} was found"))
    subtotal, tax, total = (dec(_v(doc, r)) for r in ("subtotal", "tax", "total"))
    items = doc.get("items") or []
    prices: list[Decimal | None] = []
    for i, it in enumerate(items):
        q, u, p = dec(_v(it, "qty")), dec(_v(it, "unit_price")), dec(_v(it, "price"))
        prices.append(p)
        if p is None:
            checks.append(Check(f"item_arithmetic[{i}]", False, f"item {i + 1}: no price found"))
        elif q is None or u is None:
            checks.append(Check(f"item_arithmetic[{i}]", False, f"item {i + 1}: quantity or unit price not found"))
        else:
            ok = abs(q * u - p) <= tol
            checks.append(Check(f"item_arithmetic[{i}]", ok, f"item {i + 1}: {q} x {money_str(u)} = {money_str(q * u)} "
                                                            f"{'==' if ok else '!='} {money_str(p)}"))
    if items:
        if any(p is None for p in prices):
            checks.append(Check("items_sum", False, "cannot add the items: a price is missing"))
        else:
            s = sum(prices, Decimal(0))
            if subtotal is not None:
                lhs, rhs = s, subtotal
                text = f"sum of items {money_str(s)} {{}} subtotal {money_str(subtotal)}"
            elif total is not None:  # no subtotal printed: the items and any tax make the total
                t = tax if tax is not None else Decimal(0)
                lhs, rhs = s + t, total
                text = f"sum of items {money_str(s)} + tax {money_str(t)} {{}} total {money_str(total)}"
            else:
                lhs = rhs = None
            if lhs is None:
                checks.append(Check("items_sum", False, "cannot check the items: no subtotal or total"))
            else:
                ok = abs(lhs - rhs) <= tol
                checks.append(Check("items_sum", ok, text.format("==" if ok else "!=")))
    if subtotal is not None:
        if total is None:
            checks.append(Check("total_sum", False, "no total to check the subtotal against"))
        else:
            t = tax if tax is not None else Decimal(0)
            ok = abs(subtotal + t - total) <= tol
            checks.append(Check("total_sum", ok, f"subtotal {money_str(subtotal)} + tax {money_str(t)} = {money_str(subtotal + t)} "
                                                 f"{'==' if ok else '!='} total {money_str(total)}"))
    elif not items:
        checks.append(Check("total_sum", False, "nothing to check the total against: no subtotal and no items"))
    rate = dec(_v(doc, "tax_rate"))
    if cfg.check_tax_rate and rate is not None and subtotal is not None and tax is not None:
        expected = subtotal * rate / 100
        ok = abs(tax - expected) <= Decimal(str(cfg.tax_rate_tolerance)) + tol
        checks.append(Check("tax_rate", ok, f"tax {money_str(tax)} {'~=' if ok else '!='} subtotal x {rate}% = {expected:.4f}"))
    checks += citations(doc, page, cfg)
    return checks


def numeric_fields(doc: dict) -> list[tuple[str, object, str]]:
    """(path, Value or plain value, kind) for every number-bearing field: kind 'money' | 'int' | 'date'."""
    out = []
    for role in ("subtotal", "tax", "total"):
        if _v(doc, role) is not None:
            out.append((role, doc[role], "money"))
    for i, it in enumerate(doc.get("items") or []):
        for role, kind in (("qty", "int"), ("unit_price", "money"), ("price", "money")):
            if _v(it, role) is not None:
                out.append((f"items[{i}].{role}", it[role], kind))
    if _v(doc, "date") is not None:
        out.append(("date", doc["date"], "date"))
    if _v(doc, "due_date") is not None:
        out.append(("due_date", doc["due_date"], "date"))
    return out


def citations(doc: dict, page: OcrPage | None, cfg: VerifyConfig) -> list[Check]:
    checks = []
    for path, val, kind in numeric_fields(doc):
        if kind == "date" and not cfg.cite_dates:
            continue
        x = val.value if isinstance(val, Value) else val
        if isinstance(val, Value) and val.implied:
            checks.append(Check(f"citation:{path}", True, f"{x} is implied: this document prints no quantities"))
            continue
        if page is None:
            checks.append(Check(f"citation:{path}", False, f"{x}: no OCR evidence to cite (VLM alone)"))
            continue
        hits = find(x, kind, page)
        shown = money_str(dec(x)) if kind == "money" and dec(x) is not None else x
        checks.append(Check(f"citation:{path}", bool(hits), f"{shown} {'appears in' if hits else 'does not appear in'} the OCR text"))
    return checks


_NUM = re.compile(r"(?<!\d)(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:[.,]\d+)?)(?!\d)")


def _tokens(text: str) -> list[tuple[str, list[Decimal]]]:
    """Numeric tokens of an OCR line, each with its readings ("1,234" may be a thousand or a decimal comma)."""
    out = []
    for m in _NUM.finditer(text.replace(" ", "")):
        t = m.group(1)
        readings = []
        if "," in t:
            if re.fullmatch(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?", t):
                readings.append(t.replace(",", ""))
            if t.count(",") == 1 and "." not in t:
                readings.append(t.replace(",", "."))
        else:
            readings.append(t)
        out.append((t, [Decimal(r) for r in readings]))
    return out


def find(x, kind: str, page: OcrPage) -> list[OcrLine]:
    """OCR lines that print x: money as a number with two decimals, an integer as an integer, a date in any format."""
    hits = []
    if kind == "date":
        for line in page.lines:
            if parse_date(line.text) == x or parse_date(line.text, prefer_month_first=True) == x:
                hits.append(line)
        return hits
    d = dec(x)
    if d is None:
        return hits
    for line in page.lines:
        for raw, readings in _tokens(line.text):
            decimals = raw.split(".")[-1] if "." in raw else (raw.split(",")[-1] if "," in raw else "")
            if kind == "money" and len(decimals) != 2:
                continue  # an amount is printed with cents; "5" does not cite 5.00
            if kind == "int" and decimals:
                continue
            if any(r == d for r in readings):
                hits.append(line)
                break
    return hits


def evidence_scores(doc: dict) -> list[float]:
    return [v.score for _, v, _ in numeric_fields(doc) if isinstance(v, Value) and v.lines]


def confidence(doc: dict, checks: list[Check]) -> float:
    """Share of checks passed x the geometric mean of the OCR confidences of the cited numbers (0..1)."""
    if not checks:
        return 0.0
    passed = sum(c.ok for c in checks) / len(checks)
    scores = [max(1e-6, s) for s in evidence_scores(doc)]
    ocr = math.exp(sum(math.log(s) for s in scores) / len(scores)) if scores else 0.5  # no evidence: at most a coin toss
    return round(passed * ocr, 4)
