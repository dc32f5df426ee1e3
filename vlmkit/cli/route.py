"""vlmkit route "request" [IMAGE...]: choose retrieval, OCR+VLM or the VLM alone, say why, and run it."""
from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("route", help="send a request to retrieval, OCR+VLM or the VLM alone (prints the path it chose)")
    p.add_argument("request", help="what you want, in words")
    p.add_argument("images", nargs="*", metavar="IMAGE", help="image files the request is about")
    p.add_argument("--explain", action="store_true", help="only print the chosen path and why; run nothing")
    p.add_argument("--db", default=None, help="image index for retrieval (built by vlmkit index)")
    p.add_argument("-k", type=int, default=5, help="retrieval: results to return")
    p.add_argument("--model", default=None, help="VLM directory (default: the bundled model)")
    p.add_argument("--json", action="store_true", help="print the route and the answer as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from ..apps.route import dispatch, route
    from ..errors import VlmkitError

    missing = [p for p in args.images if not Path(p).is_file()]
    if missing:
        raise VlmkitError(f"{missing[0]}: no such file")
    r = route(args.request, args.images)
    if args.explain:
        print(json.dumps(r.to_dict()) if args.json else f"path: {r.path}\nwhy: {r.reason}")
        return 0
    if not args.json:
        print(f"path: {r.path} ({r.reason})", flush=True)
    out = dispatch(r, args.request, args.images, model=args.model, db=args.db, k=args.k)
    print(json.dumps(out, indent=2, ensure_ascii=False) if args.json else out.get("answer", ""))
    return 0
