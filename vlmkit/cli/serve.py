"""vlmkit serve [--model DIR] [--host 127.0.0.1] [--port 8000] ...: the HTTP API and web page."""
from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve a model over HTTP (OpenAI and Anthropic APIs, web page at /)")
    p.add_argument("--model", default=None, help="model directory (default: the bundled vlmkit model)")
    p.add_argument("--embed-model", default=None, help="dual encoder directory for /v1/embeddings")
    p.add_argument("--name", default=None, help="model id reported by /v1/models (default: the directory name)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help="require this key (Authorization: Bearer, or x-api-key)")
    g = p.add_argument_group("batching")
    g.add_argument("--max-batch", type=int, default=8, help="requests per shared forward pass")
    g.add_argument("--batch-window-ms", type=float, default=10.0, help="how long a request waits for others to batch with")
    g.add_argument("--max-queue", type=int, default=64, help="waiting requests before answering 429")
    g.add_argument("--timeout", type=float, default=120.0, help="per-request deadline in seconds (504 after it)")
    g.add_argument("--feature-cache", type=int, default=256, help="image encodings kept, by content hash")
    g = p.add_argument_group("limits")
    g.add_argument("--max-body-mb", type=float, default=20.0)
    g.add_argument("--max-image-mb", type=float, default=10.0)
    g.add_argument("--max-image-pixels", type=int, default=25_000_000)
    g.add_argument("--max-images", type=int, default=8, help="images per request")
    g.add_argument("--max-tokens", type=int, default=256, help="default max_tokens when a request gives none")
    g.add_argument("--temperature", type=float, default=0.0, help="default temperature when a request gives none")
    g.add_argument("--allow-hosts", default="", help="comma-separated hosts (or host:port) whose http(s) image URLs are fetched")
    g.add_argument("--allow-local-files", default=None, metavar="DIR", help="accept local image paths, only under DIR")
    p.add_argument("--graceful-timeout", type=float, default=30.0, help="seconds to finish in-flight requests on shutdown")
    p.set_defaults(func=run)


def run(args) -> int:
    import logging
    from pathlib import Path

    from ..errors import VlmkitError

    try:
        import uvicorn

        from ..serve.app import create_app
        from ..serve.batching import BatchConfig
        from ..serve.limits import MIB, Limits
    except ImportError as e:
        raise VlmkitError(f"serving needs the serve extra: pip install 'vlmkit[serve]' ({e.name} is missing)") from None
    if args.allow_local_files and not Path(args.allow_local_files).is_dir():
        raise VlmkitError(f"--allow-local-files: not a directory: {args.allow_local_files}")
    try:
        limits = Limits(max_body_bytes=int(args.max_body_mb * MIB), max_image_bytes=int(args.max_image_mb * MIB),
                        max_image_pixels=args.max_image_pixels, max_images_per_request=args.max_images,
                        default_max_tokens=args.max_tokens, allow_hosts=tuple(args.allow_hosts.split(",")),
                        allow_local_files=args.allow_local_files)
        batch = BatchConfig(args.max_batch, args.batch_window_ms, args.max_queue, args.timeout)
    except ValueError as e:
        raise VlmkitError(str(e)) from None

    from ..api import load

    vlm = load(args.model)
    embedder = None
    if args.embed_model:
        from ..models.dual_encoder import load_dual_encoder

        embedder = load_dual_encoder(args.embed_model)
    app = create_app(vlm, limits, batch, embedder, args.name, args.api_key, args.temperature, args.feature_cache)

    # access log: one JSON object per line on stdout, easy to ship or grep
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access = logging.getLogger("vlmkit.serve.access")
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    access.propagate = False
    logging.getLogger("vlmkit.serve").setLevel(logging.INFO)

    print(f"vlmkit: serving {app.state.server.model_name} on http://{args.host}:{args.port} (web page at /)", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=args.graceful_timeout)
    return 0
