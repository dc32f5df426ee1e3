"""The VLM's share of extraction: structure from the image, with the OCR lines in the prompt.

Decoding is constrained to the schema (vlmkit.constrained), so the output
always parses and validates; whether its numbers are true is the citation
check's business (verify.py), which looks each one up in the OCR text. Each
value the VLM returns is tied to the OCR line that prints it, which is its
evidence box.
"""
from __future__ import annotations

import json
from decimal import Decimal

from .ocr import OcrLine, OcrPage
from .parse import Value, keyword_of, rows_of
from .schema import FieldMap
from .verify import dec, find

PROMPT = ("Read this {title} and return it as JSON with the keys {keys}. Copy every number exactly as printed; "
          "use null for anything the {title} does not show.")
OCR_HEADER = "\nOCR text, one row per line, left to right:\n"


def build_prompt(fmap: FieldMap, page: OcrPage | None, max_rows: int = 80) -> str:
    keys = ", ".join(fmap.schema.get("properties", {}))
    text = PROMPT.format(title=fmap.title, keys=keys)
    if page is not None and page.lines:
        rows = rows_of(page)[:max_rows]
        text += OCR_HEADER + "\n".join(r.text for r in rows)
    return text


def ask(vlm, image, fmap: FieldMap, page: OcrPage | None, max_new_tokens: int = 512, tiling=None) -> str:
    """One constrained generation -> the JSON text."""
    messages = [{"role": "user", "content": [{"type": "image", "image": image},
                                             {"type": "text", "text": build_prompt(fmap, page)}]}]
    kw = {"tiling": tiling} if tiling is not None else {}
    return vlm.generate([messages], json_schema=fmap.schema, max_new_tokens=max_new_tokens, **kw)[0].text


def to_document(text: str, fmap: FieldMap, page: OcrPage | None) -> dict:
    """The VLM's JSON -> role -> Value, each number tied to the OCR line that prints it (if any does)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = {}
    roles = fmap.to_roles(data)
    rows = rows_of(page) if page is not None else []
    kinds = {id(l): keyword_of(r) for r in rows for l in r.lines}
    doc: dict = {}
    for role, x in roles.items():
        if role == "items":
            continue
        kind = "money" if role in ("subtotal", "tax", "total") else "date" if role in ("date", "due_date") else "text"
        doc[role] = _value(x, kind, page, kinds, prefer=role)
    doc["items"] = []
    for it in roles.get("items") or []:
        doc["items"].append({r: _value(it.get(r), "int" if r == "qty" else "money" if r in ("unit_price", "price") else "text",
                                       page, kinds, prefer=None) for r in ("name", "qty", "unit_price", "price")})
    return doc


def _value(x, kind: str, page: OcrPage | None, kinds: dict, prefer: str | None) -> Value | None:
    if x is None:
        return None
    if kind in ("money", "int"):
        d = dec(x)
        if d is None:
            return Value(x)
        x = int(d) if kind == "int" and d == int(d) else (d.quantize(Decimal("0.01")) if kind == "money" and d.as_tuple().exponent >= -2 else d)
    if page is None:
        return Value(x)
    if kind == "text":
        line = _best_text_line(str(x), page.lines)
        return Value(x, [line] if line else [])
    hits = find(x, kind, page)
    if prefer and len(hits) > 1:  # the same amount printed twice (an item and the subtotal): take the labelled row
        hits = sorted(hits, key=lambda l: kinds.get(id(l)) != prefer)
    return Value(x, hits[:1])


def _best_text_line(s: str, lines: list[OcrLine]) -> OcrLine | None:
    import difflib

    target = "".join(s.lower().split())
    best, score = None, 0.0
    for l in lines:
        r = difflib.SequenceMatcher(None, target, "".join(l.text.lower().split())).ratio()
        if r > score:
            best, score = l, r
    return best if score >= 0.8 else None
