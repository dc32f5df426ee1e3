"""Applications built on the library: document extraction with verification, and request routing.

    preprocess.py  EXIF, quarter turns, deskew, size cap, stroke thickening; maps back to the input's pixels
    ocr.py         RapidOCR lines with boxes and confidences (cached engine), page orientation, currency glyphs
    parse.py       the layout-aware parser: OCR lines -> receipt / invoice fields, each with its evidence lines
    vlm_fields.py  the VLM's proposal: OCR rows in the prompt, decoding constrained to the schema
    verify.py      arithmetic and citation checks, confidence
    schema.py      built-in schemas (schemas/receipt.json, schemas/invoice.json), custom ones, field roles
    extract.py     Extractor: modes ocr | ocr+vlm | vlm, one retry, verified or needs_review
    batch.py       a folder in, JSONL out, resumable
    route.py       retrieval vs OCR+VLM vs VLM alone, by a small printed rule set
    http.py        POST /v1/extract for the server

Importing this package loads nothing heavy; OCR and models load on first use.
"""
