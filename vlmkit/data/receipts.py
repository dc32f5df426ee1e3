"""Receipts with line items, quantities, prices, subtotal, tax and total, for extraction.

Money is Decimal at 2 dp from the start, so the printed arithmetic is exact:
price = qty x unit_price, subtotal = sum of prices, tax = subtotal x rate
(half-up to the cent), total = subtotal + tax. With `wrong_total_rate`, some
receipts print a total that is off by a visible amount; the ground truth then
holds what is printed (extraction reads the paper) plus `total_correct: false`
and the correct total, so a verifier can be tested for false "verified".
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal

from PIL import Image, ImageDraw

from .augment import AugmentConfig, augment, get_preset
from .fonts import get_font
from .sample import QA
from .words import ITEMS, MERCHANTS, NUMBER_WORDS

CENT = Decimal("0.01")
TAX_RATES = ("0", "5", "7", "8", "10", "20")  # percent
SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£", "CHF": "CHF "}
STREETS = ("High St", "Market Sq", "Station Rd", "Main St", "Park Ave", "Mill Lane", "Church St", "Harbour Rd")
_EPOCH, _DAYS = date(2019, 1, 1), (date(2025, 12, 31) - date(2019, 1, 1)).days


@dataclass
class ReceiptsConfig:
    size: tuple[int, int] = (384, 640)  # width, height
    augment: str | AugmentConfig = "photo"
    min_items: int = 1
    max_items: int = 6
    wrong_total_rate: float = 0.0  # fraction of receipts whose printed total is deliberately wrong

    def __post_init__(self):
        if isinstance(self.size, int):  # one number is the width; receipts keep a 3:5 page
            self.size = (self.size, round(self.size * 5 / 3))
        self.size = tuple(self.size)
        if not 0.0 <= self.wrong_total_rate <= 1.0:
            raise ValueError("wrong_total_rate must be within 0..1")


def money(x) -> Decimal:
    return Decimal(x).quantize(CENT, rounding=ROUND_HALF_UP)


def compute(items: list[dict], tax_rate: str) -> dict:
    """The receipt arithmetic, in Decimal: (items with prices, subtotal, tax, total)."""
    out = []
    for it in items:
        unit = money(it["unit_price"])
        out.append({"name": it["name"], "qty": int(it["qty"]), "unit_price": unit, "price": money(unit * int(it["qty"]))})
    subtotal = money(sum((it["price"] for it in out), Decimal(0)))
    tax = money(subtotal * Decimal(tax_rate) / 100)
    return {"items": out, "subtotal": subtotal, "tax": tax, "total": money(subtotal + tax)}


def receipt_json(receipt: dict) -> dict:
    """Decimal receipt -> the shared receipt schema, with JSON numbers."""
    return {
        "merchant": receipt["merchant"], "date": receipt["date"],
        "items": [{"name": it["name"], "qty": it["qty"], "unit_price": float(it["unit_price"]), "price": float(it["price"])}
                  for it in receipt["items"]],
        "subtotal": float(receipt["subtotal"]), "tax": float(receipt["tax"]), "total": float(receipt["total"]),
        "currency": receipt["currency"],
    }


class ReceiptsGenerator:
    name = "receipts"
    slices = ("receipt", "receipt-fields")

    def __init__(self, cfg: ReceiptsConfig | None = None, **kw):
        self.cfg = cfg or ReceiptsConfig(**kw)
        self.aug = get_preset(self.cfg.augment)

    def spec(self, rng: random.Random) -> dict:
        k = rng.randint(self.cfg.min_items, self.cfg.max_items)
        items = []
        for name in rng.sample(ITEMS, k):
            cents = rng.choice([rng.randint(50, 999), rng.randint(100, 3000)])
            items.append({"name": name, "qty": rng.choices([1, 2, 3, 4], weights=[6, 3, 1, 1])[0],
                          "unit_price": str(Decimal(cents) / 100)})
        wrong = None
        if self.cfg.wrong_total_rate and rng.random() < self.cfg.wrong_total_rate:
            # off by an amount a reader can see on the paper, never by zero
            wrong = str(Decimal(rng.choice([1, 5, 10, 50, 100, 1000])) / 100 * rng.choice([-1, 1]))
        return {
            "merchant": rng.choice(MERCHANTS),
            "address": f"{rng.randint(1, 250)} {rng.choice(STREETS)}",
            "date": (_EPOCH + timedelta(days=rng.randint(0, _DAYS))).isoformat(),
            "time": f"{rng.randint(7, 22):02d}:{rng.randint(0, 59):02d}",
            "currency": rng.choice(list(SYMBOLS)),
            "tax_rate": rng.choice(TAX_RATES),
            "items": items,
            "wrong_by": wrong,
        }

    def split_key(self, spec: dict) -> str:
        return json.dumps({k: spec[k] for k in ("merchant", "date", "currency", "tax_rate", "items", "wrong_by")}, sort_keys=True)

    def receipt(self, spec: dict) -> tuple[dict, Decimal]:
        """-> (the receipt as printed, the correct total)."""
        calc = compute(spec["items"], spec["tax_rate"])
        printed = dict(calc, merchant=spec["merchant"], date=spec["date"], currency=spec["currency"])
        if spec["wrong_by"] is not None:
            wrong = money(calc["total"] + Decimal(spec["wrong_by"]))
            printed["total"] = wrong if wrong > 0 else money(calc["total"] + abs(Decimal(spec["wrong_by"])))
        return printed, calc["total"]

    def build(self, spec: dict, rng: random.Random):
        printed, correct_total = self.receipt(spec)
        img, fill = self._render(spec, printed, rng)
        img = augment(img, rng, self.aug, fill=fill)
        data = receipt_json(printed)
        truth = {"size": list(self.cfg.size), "receipt": data, "tax_rate": spec["tax_rate"],
                 "total_correct": printed["total"] == correct_total, "correct_total": float(correct_total)}
        sym = SYMBOLS[spec["currency"]]
        k = len(data["items"])
        caption = (f"A receipt from {spec['merchant']} dated {spec['date']} with {NUMBER_WORDS[k]} item{'s' if k > 1 else ''}; "
                   f"the printed total is {sym}{printed['total']}.")
        field = rng.choice(["total", "subtotal", "tax", "merchant", "date"])
        ask = {"total": "What is the total?", "subtotal": "What is the subtotal?", "tax": "How much is the tax?",
               "merchant": "What is the name of the shop?", "date": "What is the date on the receipt?"}[field]
        answer = str(printed[field]) if field in ("total", "subtotal", "tax") else printed[field]
        qa = [QA(rng.choice(["Extract the receipt as JSON.", "Read this receipt and return its fields as JSON."]),
                 json.dumps(data, ensure_ascii=False), "receipt", "json_f1"),
              QA(ask, answer, "receipt-fields", "relaxed" if field in ("total", "subtotal", "tax") else "exact")]
        return img, truth, caption, qa

    def _render(self, spec: dict, printed: dict, rng: random.Random) -> tuple[Image.Image, tuple]:
        w, h = self.cfg.size
        table = tuple(rng.randint(60, 150) for _ in range(3))
        paper = tuple(rng.randint(238, 255) for _ in range(2)) + (rng.randint(225, 250),)
        img = Image.new("RGB", (w, h), table)
        draw = ImageDraw.Draw(img)
        fs = round(0.04 * w)
        font, bold = get_font("mono", fs), get_font("mono-bold", fs)
        head = get_font("mono-bold", round(fs * 1.3))
        step = round(fs * 1.35)
        px0, px1 = round(0.06 * w), round(0.94 * w)
        lx, rx = px0 + round(0.04 * w), px1 - round(0.04 * w)
        ink = (25, 25, 30)
        sym = SYMBOLS[spec["currency"]]
        lines: list[tuple] = [("c", spec["merchant"], head), ("c", spec["address"], font),
                              ("lr", f"Date: {spec['date']}", spec["time"], font), ("rule",)]
        for it in printed["items"]:
            lines.append(("lr", it["name"], f"{it['price']}", font))
            lines.append(("l", f"  {it['qty']} x {it['unit_price']}", font))
        lines += [("rule",), ("lr", "Subtotal", f"{printed['subtotal']}", font),
                  ("lr", f"Tax {spec['tax_rate']}%", f"{printed['tax']}", font),
                  ("lr", "TOTAL", f"{sym}{printed['total']}", bold), ("gap",), ("c", "Thank you!", font)]
        height = sum(round(step * 1.4) if ln[0] == "c" and ln[-1] is head else step for ln in lines) + 3 * fs
        top = rng.randint(round(0.02 * h), max(round(0.02 * h), h - height - round(0.02 * h)))  # anywhere on the table
        draw.rectangle([px0, top, px1, min(h - 1, top + height)], fill=paper)
        y = top + fs
        for ln in lines:
            if ln[0] == "c":
                draw.text(((lx + rx) / 2, y), ln[1], font=ln[2], fill=ink, anchor="mt")
                y += round(step * 1.4) if ln[2] is head else step
                continue
            if ln[0] == "rule":
                draw.line([(lx, y + step // 2), (rx, y + step // 2)], fill=ink, width=1)
            elif ln[0] == "l":
                draw.text((lx, y), ln[1], font=ln[2], fill=ink)
            elif ln[0] == "lr":
                draw.text((lx, y), ln[1], font=ln[3], fill=ink)
                draw.text((rx, y), ln[2], font=ln[3], fill=ink, anchor="ra")
            y += step
        return img, table
