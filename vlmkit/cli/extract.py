"""vlmkit extract IMAGE... --schema receipt|invoice|FILE.json [--json] [--mode ocr|ocr+vlm|vlm] [--model DIR]

A folder argument runs batch mode: every image in it, one JSON line each, to --out (resumable).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("extract", help="receipt/invoice image -> JSON that follows a schema, checked against OCR and its arithmetic")
    p.add_argument("inputs", nargs="+", metavar="IMAGE", help="image files, or one folder for batch mode")
    p.add_argument("--schema", default="receipt", help="receipt, invoice, or a JSON-schema file (default: receipt)")
    p.add_argument("--mode", default="auto", choices=["auto", "ocr", "ocr+vlm", "vlm"],
                   help="ocr: OCR and the layout parser; ocr+vlm: also the VLM, OCR lines in its prompt; vlm: the VLM alone. "
                        "auto: ocr+vlm, or ocr while the default model is the untrained placeholder")
    p.add_argument("--model", default=None, help="VLM directory for the VLM modes (default: the bundled model)")
    p.add_argument("--json", action="store_true", help="print the full result (data, evidence boxes, checks) as JSON")
    p.add_argument("--tolerance", type=float, default=0.005, help="arithmetic tolerance in currency units (default 0.005)")
    p.add_argument("--no-retry", dest="retry", action="store_false", help="do not re-read an image whose checks fail")
    p.add_argument("--out", default=None, help="batch mode: the JSONL file to write (default: FOLDER/extract.jsonl)")
    p.add_argument("--recursive", action="store_true", help="batch mode: include images in subfolders")
    p.add_argument("--retry-errors", action="store_true", help="batch mode: run again the images whose rows are errors")
    p.set_defaults(func=run)


def resolve_mode(mode: str, model) -> tuple[str, str | None]:
    """'auto' -> ocr+vlm with a model you name; OCR alone with the untrained placeholder (its answers would be
    noise) and with the bundled default, which never saw a receipt in training (MODEL_CARD.md)."""
    if mode != "auto":
        return mode, None
    from ..api import default_model_dir
    from ..errors import ModelLoadError

    try:
        path = Path(model) if model else default_model_dir()
    except ModelLoadError:
        return "ocr", "no VLM found: OCR and the layout parser only"
    if "untrained" in path.name:
        return "ocr", f"{path.name} is an untrained placeholder: OCR and the layout parser only (--mode ocr+vlm to use it anyway)"
    if not model:
        return "ocr", (f"the default model ({path.name}) was not trained on receipts: OCR and the layout parser only "
                       "(--mode ocr+vlm to use it anyway, or --model a document VLM)")
    return "ocr+vlm", None


def run(args) -> int:
    from ..apps.extract import ExtractConfig, Extractor
    from ..apps.verify import VerifyConfig
    from ..errors import VlmkitError

    if args.tolerance < 0:
        raise VlmkitError("--tolerance must be >= 0")
    mode, note = resolve_mode(args.mode, args.model)
    if note:
        print(f"vlmkit: mode {mode}: {note}", file=sys.stderr)
    cfg = ExtractConfig(mode=mode, retry=args.retry, verify=VerifyConfig(tolerance=args.tolerance))
    folders = [p for p in args.inputs if Path(p).is_dir()]
    if folders:
        if len(args.inputs) != 1:
            raise VlmkitError("batch mode takes one folder (and no image files beside it)")
        from ..apps.batch import run_batch

        extractor = Extractor(args.schema, cfg, model=args.model)
        out = Path(args.out) if args.out else Path(folders[0]) / "extract.jsonl"
        summary = run_batch(folders[0], out, extractor, recursive=args.recursive, retry_errors=args.retry_errors)
        print(f"{summary.line()} -> {out}")
        return 0 if summary.errors == 0 else 1
    if args.out:
        raise VlmkitError("--out is for batch mode (a folder argument)")
    missing = [p for p in args.inputs if not Path(p).is_file()]
    if missing:
        raise VlmkitError(f"{missing[0]}: no such file")
    extractor = Extractor(args.schema, cfg, model=args.model)
    results = [extractor(p) for p in args.inputs]
    if args.json:
        rows = [r.to_dict() for r in results]
        print(json.dumps(rows[0] if len(rows) == 1 else rows, indent=2, ensure_ascii=False))
    else:
        for r in results:
            print(format_result(r))
    return 0 if all(r.verified for r in results) else 1


def format_result(r) -> str:
    lines = [f"{r.source}: {r.status.upper()} (confidence {r.confidence:.2f}, {r.mode}, {r.attempts} read{'s' if r.attempts > 1 else ''})"]
    lines.append(json.dumps(r.data, ensure_ascii=False))
    for c in r.failed_checks:
        lines.append(f"  failed {c.name}: {c.detail}")
    return "\n".join(lines)
