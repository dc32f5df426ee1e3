"""Image -> validated JSON: OCR evidence, the layout parser and/or the VLM, checked, retried once, never silently fixed.

    from vlmkit.apps.extract import extract
    r = extract("receipt.jpg", schema="receipt")            # mode "ocr": the deterministic path
    r.data, r.verified, r.status, r.failed_checks, r.confidence, r.evidence["total"]["box"]

Modes (each measured separately in bench/extract):
  ocr      OCR lines -> the layout parser (parse.py). No model.
  ocr+vlm  the parser and the VLM (OCR lines in its prompt, decoding constrained to the schema)
           both propose a document; the one that passes more checks wins, the parser on a tie.
           By default the VLM is asked only when the parser's document fails a check
           (`vlm_when="unverified"`: a verified read needs no second opinion); "always" asks it every time.
  vlm      the VLM alone, without OCR. Its numbers cannot be cited, so it never verifies
           (and is not retried: a second read cannot supply the missing evidence).

Every proposal is checked (verify.py). If a check fails, the image is read a
second time, prepared two more careful ways (strokes thickened; full
resolution rotated level, upsampled so text lines are about 40 px tall,
contrast stretched), and the VLM is given the full-resolution `split` tiling.
The read that passes the most checks is kept. If none passes them all, the
result is `needs_review`, with the values as read and the checks they failed.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from . import preprocess as P
from .ocr import OcrConfig, OcrPage, read
from .parse import Value, parse_document
from .schema import ExtractError, FieldMap, load_schema
from .verify import Check, VerifyConfig, confidence, verify

MODES = ("ocr", "ocr+vlm", "vlm")


@dataclass
class ExtractConfig:
    mode: str = "ocr"
    retry: bool = True  # one more read, differently prepared, when a check fails
    max_side: int = P.MAX_SIDE
    retry_text_height: float = 40.0  # px: the retry upsamples until a median OCR line is this tall
    retry_max_scale: float = 3.0
    retry_max_side: int = 2 * P.MAX_SIDE
    deskew_min_deg: float = 0.5  # the retry rotates the image level when the text leans more than this
    max_new_tokens: int = 512
    vlm_when: str = "unverified"  # ocr+vlm: ask the VLM "always", or only when the parser's document is "unverified"
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    ocr: OcrConfig = field(default_factory=OcrConfig)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ExtractError(f"unknown extraction mode {self.mode!r}; choose from {', '.join(MODES)}")
        if self.vlm_when not in ("unverified", "always"):
            raise ExtractError(f"vlm_when must be 'unverified' or 'always', not {self.vlm_when!r}")
        if isinstance(self.verify, dict):
            self.verify = VerifyConfig(**self.verify)
        if isinstance(self.ocr, dict):
            self.ocr = OcrConfig(**self.ocr)


@dataclass
class Extraction:
    data: dict  # follows the schema
    evidence: dict  # the same shape: each field -> {"text", "box" [x0, y0, x1, y1] in the input image, "score"} or None
    verified: bool
    checks: list[Check]
    confidence: float
    mode: str
    attempts: int
    source: str | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    vlm_text: str | None = None  # the VLM's raw JSON, when it was asked
    candidates: dict = field(default_factory=dict)  # "parser" / "vlm" -> its first proposal (schema names), when both ran

    @property
    def status(self) -> str:
        return "verified" if self.verified else "needs_review"

    @property
    def failed_checks(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def to_dict(self) -> dict:
        out = {"source": self.source, "status": self.status, "verified": self.verified, "confidence": self.confidence,
               "data": self.data, "failed_checks": [c.to_dict() for c in self.failed_checks],
               "checks": [c.to_dict() for c in self.checks], "evidence": self.evidence, "mode": self.mode,
               "attempts": self.attempts, "notes": self.notes, "seconds": round(self.seconds, 3)}
        if self.vlm_text is not None:
            out["vlm_text"] = self.vlm_text
        if len(self.candidates) > 1:
            out["candidates"] = self.candidates
        return out


@dataclass
class _Attempt:
    doc: dict
    checks: list[Check]
    page: OcrPage | None
    source_kind: str  # "parser" | "vlm"
    vlm_text: str | None = None
    others: dict = field(default_factory=dict)  # kind -> the role doc each candidate of this read proposed

    @property
    def rank(self) -> tuple:
        return (all(c.ok for c in self.checks), sum(c.ok for c in self.checks) - sum(not c.ok for c in self.checks))


class Extractor:
    """A schema, a mode and (for the VLM modes) a model, reused across images."""

    def __init__(self, schema: str | dict = "receipt", config: ExtractConfig | None = None, model=None, **kw):
        self.cfg = config or ExtractConfig(**kw)
        self.schema = load_schema(schema)
        self.fmap = FieldMap(self.schema)
        self._model = model  # a VLM, a model directory, or None for the default model (loaded on first use)

    @property
    def vlm(self):
        from ..api import VLM

        if not isinstance(self._model, VLM) and not hasattr(self._model, "generate"):
            from ..api import load

            self._model = load(self._model)
        return self._model

    def __call__(self, image, source: str | None = None) -> Extraction:
        t0 = time.perf_counter()
        if source is None and isinstance(image, (str, Path)):
            source = str(image)
        prep = P.load(image, self.cfg.max_side)
        first = self._attempt(prep, retry=False)
        best, attempts, notes = first, 1, list(prep.steps)
        proposals = dict(first.others)  # every candidate's first proposal, for the record
        if first.page is not None:
            notes += first.page.notes
        if self.cfg.retry and not first.rank[0] and self.cfg.mode != "vlm":
            attempts = 2
            variants = self._retry_preps(image, first.page) if first.page is not None else [prep]
            for i, q in enumerate(variants):
                # the VLM rereads once (with full-resolution tiling); each OCR preparation gets the parser
                a = self._attempt(q, retry=True, ask_vlm=i == len(variants) - 1)
                notes.append("retried: " + ", ".join(q.steps[len(prep.steps):] or ["full-resolution tiling"]))
                proposals = {**a.others, **proposals}
                if a.rank > best.rank:
                    best = a
        return self._result(best, attempts, notes, source, time.perf_counter() - t0, proposals)

    # ---- one read of the image
    def _attempt(self, prep: P.Prepared, retry: bool, ask_vlm: bool = True) -> _Attempt:
        mode = self.cfg.mode
        page = read(prep, self.cfg.ocr) if mode in ("ocr", "ocr+vlm") else None
        candidates = []
        parsed = parse_document(page) if page is not None else None
        if parsed is not None:
            candidates.append(_Attempt(parsed, verify(parsed, page, self.cfg.verify), page, "parser"))
        wants_vlm = ask_vlm and (mode == "vlm" or (mode == "ocr+vlm" and (self.cfg.vlm_when == "always" or not candidates[0].rank[0])))
        if wants_vlm:
            from . import vlm_fields

            image = page.prepared.image if page is not None else prep.image
            tiling = self._full_tiling() if retry else None
            text = vlm_fields.ask(self.vlm, image, self.fmap, page, self.cfg.max_new_tokens, tiling)
            doc = vlm_fields.to_document(text, self.fmap, page)
            if parsed is not None and parsed.get("tax_rate") is not None:
                doc["tax_rate"] = parsed["tax_rate"]  # the printed rate is OCR evidence, whoever reads the fields
            candidates.append(_Attempt(doc, verify(doc, page, self.cfg.verify), page, "vlm", text))
        best = max(candidates, key=lambda a: a.rank)  # max keeps the first (the parser) on a tie
        best.vlm_text = next((c.vlm_text for c in candidates if c.vlm_text is not None), None)
        best.others = {c.source_kind: c.doc for c in candidates}
        return best

    def _retry_preps(self, image, page: OcrPage) -> list[P.Prepared]:
        """Two more careful preparations for the second read (the quarter turn OCR found is kept):

        thickened strokes at the first read's resolution (dotted and thin zeros are
        the recogniser's commonest digit errors), and the image at full resolution
        (up to retry_max_side), rotated level, upsampled until text lines are about
        retry_text_height px tall, contrast stretched.
        """
        thick = P.thicken(page.prepared, 3 if page.median_height < 30 else 5)
        full = P.rotate_quarter(P.load(image, self.cfg.retry_max_side), page.quarter_turns)
        lean = page.levelled + page.skew  # the first read may have levelled a strong lean already
        if abs(lean) >= self.cfg.deskew_min_deg:
            full = P.deskew(full, lean)
        h = page.median_height * max(full.image.size) / max(page.prepared.image.size)
        if 0 < h < self.cfg.retry_text_height:
            s = min(self.cfg.retry_text_height / h, self.cfg.retry_max_scale, self.cfg.retry_max_side / max(full.image.size))
            if s > 1.05:
                full = P.scale(full, s)
        return [thick, P.autocontrast(full)]

    def _full_tiling(self):
        from ..processing.tiling import TilingConfig

        return TilingConfig.for_tower(self.vlm.cfg.vision, policy="split")

    # ---- the answer
    def _result(self, a: _Attempt, attempts: int, notes: list[str], source: str | None, seconds: float,
                proposals: dict) -> Extraction:
        roles = _plain(a.doc)
        data = self.fmap.to_schema(roles)
        ev_roles = _evidence(a.doc, a.page)
        evidence = self.fmap.to_schema(ev_roles)
        checks = list(a.checks)
        try:
            import jsonschema

            jsonschema.validate(data, self.schema)
        except ImportError:
            pass
        except jsonschema.ValidationError as e:
            checks.append(Check("schema", False, f"the output does not follow the schema: {e.message}"))
        verified = all(c.ok for c in checks)
        candidates = {k: self.fmap.to_schema(_plain(d)) for k, d in proposals.items()}
        return Extraction(data, evidence, verified, checks, confidence(a.doc, checks), f"{self.cfg.mode} ({a.source_kind})",
                          attempts, source, notes, seconds, a.vlm_text, candidates)


def _plain(doc: dict) -> dict:
    """role -> Value  ->  role -> JSON value (amounts as numbers with their printed cents)."""
    def conv(v):
        x = v.value if isinstance(v, Value) else v
        if isinstance(x, Decimal):
            return int(x) if x == x.to_integral_value() and x.as_tuple().exponent >= 0 else float(x)
        return x

    out = {k: conv(v) for k, v in doc.items() if k not in ("items", "tax_rate")}
    out["items"] = [{k: conv(v) for k, v in it.items()} for it in doc.get("items") or []]
    return out


def _evidence(doc: dict, page: OcrPage | None) -> dict:
    def ev(v):
        if not isinstance(v, Value) or page is None or not v.lines:
            return {"implied": True} if isinstance(v, Value) and v.implied else None
        line = v.lines[-1]  # the line with the value (a label, when there is one, comes first)
        return {"text": line.text, "box": page.original_bbox(line), "score": round(line.score, 4)}

    out = {k: ev(v) for k, v in doc.items() if k not in ("items", "tax_rate")}
    out["items"] = [{k: ev(v) for k, v in it.items()} for it in doc.get("items") or []]
    return out


def extract(image, schema: str | dict = "receipt", mode: str = "ocr", model=None, **kw) -> Extraction:
    """One image -> Extraction (see Extractor for reuse across many images)."""
    return Extractor(schema, ExtractConfig(mode=mode, **kw), model)(image)


__all__ = ["extract", "Extractor", "ExtractConfig", "Extraction", "MODES"]
