"""Send a request to the path that can answer it: retrieval, OCR plus the VLM, or the VLM alone.

    r = route("what is the total on this receipt?", ["r.jpg"])
    r.path, r.reason        # "ocr+vlm", "reading words: total, receipt; 1 image"

A small rule set, printed with its reasons, so a wrong choice is easy to see and to fix:
1. retrieval  the request asks for images ("find photos like ...", "show me pictures of",
              "images similar to"), or it says find/search and gives no image to look at.
2. ocr+vlm    it asks to read or extract text or numbers: total, price, receipt, invoice,
              "what does it say", read, transcribe, ... (OCR gives the exact characters).
3. vlm        anything else: open questions about what an image shows.
Without any image, a reading request still routes to ocr+vlm, which will ask for one.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

PATHS = ("retrieval", "ocr+vlm", "vlm")

# retrieval: a verb of searching aimed at a collection, or a likeness phrase
_FIND = r"(?:find|search(?:\s+for)?|show\s+me|retrieve|look\s+for|get\s+me|fetch|list)"
_COLLECTION = r"(?:images?|photos?|pictures?|pics|photographs|shots|ones|examples|receipts|invoices|documents|scans|files)"
RETRIEVAL_PATTERNS = {
    "find ... images": re.compile(rf"\b{_FIND}\b(?:\s+\w+){{0,4}}?\s+{_COLLECTION}\b"),
    "images like ...": re.compile(rf"\b{_COLLECTION}\s+(?:that\s+(?:look|are)\s+)?(?:like|similar\s+to|resembling)\b"),
    "similar to": re.compile(r"\b(?:similar\s+to|more\s+like\s+(?:this|these)|look(?:s)?\s+like\s+this|near[- ]duplicates?)\b"),
}
SEARCH_VERB = re.compile(rf"\b{_FIND}\b")
READING_WORDS = (
    "total", "subtotal", "tax", "vat", "receipt", "invoice", "bill", "price", "prices", "cost", "amount", "how much",
    "what does it say", "what does this say", "say", "says", "read", "text", "written", "transcribe", "ocr",
    "extract", "spell", "number on", "phone number", "serial number", "digits", "date on", "due date", "document",
    "form", "label", "menu", "ticket", "title of",
)
_READING = [(w, re.compile(rf"\b{re.escape(w)}\b")) for w in READING_WORDS]


@dataclass
class Route:
    path: str  # one of PATHS
    reason: str
    cues: list[str] = field(default_factory=list)  # the words or patterns that decided it

    def to_dict(self) -> dict:
        return {"path": self.path, "reason": self.reason, "cues": self.cues}


def route(request: str, images: list | tuple = ()) -> Route:
    text = " ".join(request.lower().split())
    n = len(images)
    seen = f"{n} image{'s' if n != 1 else ''}"
    retrieval = [name for name, p in RETRIEVAL_PATTERNS.items() if p.search(text)]
    reading = [w for w, p in _READING if p.search(text)]
    if retrieval:
        return Route("retrieval", f"asks for images ({', '.join(retrieval)}); {seen}", retrieval)
    if SEARCH_VERB.search(text) and n == 0 and not reading:
        return Route("retrieval", "a search with no image to look at", [SEARCH_VERB.search(text).group(0)])
    if reading:
        why = f"reading words: {', '.join(reading)}; {seen}"
        if n == 0:
            why += " (give the image to read)"
        return Route("ocr+vlm", why, reading)
    if n == 0:
        return Route("vlm", "an open question with no image: the language model answers alone", [])
    return Route("vlm", f"an open question about what the image shows; {seen}", [])


__all__ = ["route", "Route", "PATHS"]


# ---------------------------------------------------------------- running the chosen path
FIELD_WORDS = {"subtotal": "subtotal", "sub-total": "subtotal", "tax": "tax", "vat": "tax", "total": "total",
               "how much": "total", "date": "date", "merchant": "merchant", "shop": "merchant", "store": "merchant",
               "vendor": "merchant", "currency": "currency", "items": "items", "invoice number": "invoice_number"}
READ_ALOUD = re.compile(r"\b(what does (it|this|the \w+) say|transcribe|read (it|this|out)|what is written|the text)\b")


def dispatch(r: Route, request: str, images: list, model=None, db: str | None = None, k: int = 5,
             extract_mode: str = "ocr") -> dict:
    """Run the chosen path -> {"route", "answer", and "extraction" / "results" / "ocr_text" where they apply}."""
    from ..errors import VlmkitError

    out: dict = {"route": r.to_dict()}
    if r.path == "retrieval":
        if not db:
            raise VlmkitError("retrieval needs an image index: pass --db INDEX (build one with: vlmkit index DIR --db INDEX)")
        from ..search.index import ImageIndex
        from ..search.search import load_encoder_for, search

        index = ImageIndex(db, readonly=True)
        try:
            encoder = load_encoder_for(index, None)
            res = search(index, encoder, text=None if images else request, image=images[0] if images else None, k=k)
        finally:
            index.close()
        out["results"] = [x.to_dict() for x in res]
        out["answer"] = "\n".join(f"{x.rank}. {x.path} ({x.score:.3f})" for x in res) or "no results"
        return out
    if not images:
        if r.path == "ocr+vlm":
            raise VlmkitError("this request reads an image: give the image file after the request")
        from ..api import load

        vlm = model if hasattr(model, "chat") else load(model)
        out["answer"] = vlm.chat([{"role": "user", "content": request}])
        return out
    if r.path == "vlm":
        from ..api import load

        vlm = model if hasattr(model, "ask") else load(model)
        out["answer"] = vlm.ask(images, request)
        return out
    return _reading(request, images, model, extract_mode, out)


def _reading(request: str, images: list, model, extract_mode: str, out: dict) -> dict:
    from .extract import Extractor
    from .parse import rows_of
    from . import preprocess as P
    from .ocr import read

    text = " ".join(request.lower().split())
    schema = "invoice" if "invoice" in text else "receipt"
    fields = [f for w, f in FIELD_WORDS.items() if re.search(rf"\b{re.escape(w)}\b", text)]
    if fields or re.search(r"\b(extract|receipt|invoice)\b", text):
        ex = Extractor(schema, mode=extract_mode, model=model)
        r = ex(images[0])
        out["extraction"] = r.to_dict()
        if fields:
            f = fields[0]
            key = next((k for k, role in ex.fmap.roles.items() if role == f), f)
            value = r.data.get(key)
            shown = f"{value:.2f}" if f in ("total", "subtotal", "tax") and isinstance(value, (int, float)) else value
            out["answer"] = f"{shown} ({r.status})"
        else:
            import json

            out["answer"] = json.dumps(r.data, ensure_ascii=False)
        return out
    page = read(P.load(images[0]))
    ocr_text = "\n".join(row.text for row in rows_of(page))
    out["ocr_text"] = ocr_text
    if READ_ALOUD.search(text):
        out["answer"] = ocr_text  # the exact characters are the answer; no model needed to repeat them
        return out
    from ..api import load

    vlm = model if hasattr(model, "ask") else load(model)
    out["answer"] = vlm.ask(page.prepared.image, f"{request}\nThe text in the image, read by OCR:\n{ocr_text}")
    return out


__all__ += ["dispatch"]
