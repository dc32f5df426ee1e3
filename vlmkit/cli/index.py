"""vlmkit index: embed a folder of images into a persistent, incremental vector index."""
from __future__ import annotations

import json
import sys


def add_store_args(p) -> None:
    p.add_argument("--backend", choices=["usearch", "qdrant", "exact"], default=None,
                   help="vector store (default: the index's own, usearch for a new one); switching rebuilds it from the index")
    p.add_argument("--qdrant-url", default=None, help="a Qdrant server (default with --backend qdrant: local mode inside the --db folder)")
    p.add_argument("--collection", default="vlmkit", help="Qdrant collection name")


def store_options(args) -> dict:
    opts = {"collection": args.collection}
    if args.qdrant_url:
        opts["url"] = args.qdrant_url
    return opts


def register(sub) -> None:
    p = sub.add_parser("index", help="embed images into a searchable index (incremental)")
    p.add_argument("targets", nargs="+", metavar="DIR_OR_GLOB", help="folders (recursive), glob patterns (quote them) or image files")
    p.add_argument("--db", required=True, help="index folder (created if missing)")
    p.add_argument("--model", default=None, help="dual encoder directory (default: the model the index was built with, else vlmkit-clip)")
    p.add_argument("--batch-size", type=int, default=32)
    add_store_args(p)
    p.add_argument("--rehash", action="store_true", help="hash every file even when its size and mtime are unchanged")
    p.add_argument("--rebuild", action="store_true", help="drop the vectors of another model and re-embed everything")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from ..errors import VlmkitError
    from ..models.dual_encoder import default_dual_encoder_dir, is_dual_encoder_dir, load_dual_encoder
    from ..search.index import DB_NAME, index_images

    if args.batch_size < 1:
        raise VlmkitError("--batch-size must be at least 1")
    model_dir = args.model
    if model_dir is None:
        model_dir = _recorded_model(Path(args.db) / DB_NAME) or str(default_dual_encoder_dir())
    if not is_dual_encoder_dir(model_dir):
        raise VlmkitError(f"{model_dir} is not a dual encoder directory (config.json with \"architecture\": \"dual_encoder\")")
    encoder = load_dual_encoder(model_dir)
    report = index_images(
        args.targets, args.db, encoder, batch_size=args.batch_size, backend=args.backend, store_options=store_options(args),
        rehash=args.rehash, rebuild=args.rebuild, model_path=str(Path(model_dir).resolve()), progress=not args.no_progress,
    )
    if args.json:
        d = dict(report.__dict__)
        d["failed"] = [{"path": p, "reason": r} for p, r in report.failed]
        print(json.dumps(d, indent=2))
    else:
        rate = report.embedded / report.seconds if report.seconds else 0.0
        print(f"{args.db}: {report.total} images | {report.added} new, {report.changed} changed, {report.unchanged} unchanged, "
              f"{report.removed} removed, {report.reused} reused by hash | {report.embedded} embedded in {report.seconds:.1f}s ({rate:.1f} img/s)")
    for path, reason in report.failed:
        print(f"vlmkit: skipped {path}: {reason}", file=sys.stderr)
    return 0


def _recorded_model(db_file) -> str | None:
    """The model path an existing index recorded, read without taking the writer's lock."""
    import sqlite3

    if not db_file.is_file():
        return None
    try:
        conn = sqlite3.connect(f"file:{db_file}?mode=ro", uri=True)
        row = conn.execute("SELECT value FROM meta WHERE key='model_path'").fetchone()
        conn.close()
    except sqlite3.Error:
        return None
    return row[0] if row else None
