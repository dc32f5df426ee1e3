"""vlmkit search: ranked images for a text or image query, from an index built by `vlmkit index`."""
from __future__ import annotations

import json


def register(sub) -> None:
    from .index import add_store_args

    p = sub.add_parser("search", help="search an image index by text or by image")
    p.add_argument("query", nargs="?", default=None, help="text query")
    p.add_argument("--image", default=None, help="query by an image instead of text")
    p.add_argument("--db", required=True, help="index folder built by vlmkit index")
    p.add_argument("-k", type=int, default=10, help="results to return")
    p.add_argument("--model", default=None, help="dual encoder (default: the one the index was built with)")
    add_store_args(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--rerank", action="store_true", help="reorder the top results by asking the VLM whether each matches (text queries)")
    p.add_argument("--rerank-top", type=int, default=10, help="how many top results the VLM rereads")
    p.add_argument("--vlm", default=None, help="VLM directory for --rerank (default: the default model)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..errors import VlmkitError
    from ..search.index import ImageIndex
    from ..search.search import format_table, load_encoder_for, rerank, search
    from .index import store_options

    if (args.query is None) == (args.image is None):
        raise VlmkitError("give a text query or --image QUERY.jpg (one of them)")
    if args.rerank and args.query is None:
        raise VlmkitError("--rerank needs a text query")
    index = ImageIndex(args.db, backend=args.backend, store_options=store_options(args), readonly=True)
    try:
        if not len(index):
            raise VlmkitError(f"the index {args.db} is empty (run: vlmkit index DIR --db {args.db})")
        encoder = load_encoder_for(index, args.model)
        results = search(index, encoder, text=args.query, image=args.image, k=args.k)
    finally:
        index.close()
    if args.rerank:
        import vlmkit

        results = rerank(vlmkit.load(args.vlm), args.query, results, top=args.rerank_top)
    if args.json:
        print(json.dumps({"query": args.query, "image": args.image, "model_id": encoder.model_id,
                          "results": [r.to_dict() for r in results]}, indent=2))
    else:
        print(format_table(results))
    return 0
