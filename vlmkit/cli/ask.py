"""vlmkit ask IMAGE [IMAGE...] "question" [--model DIR]"""
from __future__ import annotations

import sys
import time


def register(sub) -> None:
    p = sub.add_parser("ask", help="answer a question about one or more images, streaming")
    p.add_argument("inputs", nargs="+", metavar="IMAGE... QUESTION", help="image files, then the question")
    p.add_argument("--model", default=None, help="model directory (default: the bundled vlmkit model)")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--timing", action="store_true", help="print the time taken after the answer")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..api import load
    from ..errors import VlmkitError
    from ..processing.images import load_image

    if len(args.inputs) < 2:
        raise VlmkitError("give at least one image and a question")
    *images, question = args.inputs
    pil_images = [load_image(path) for path in images]  # fail fast, before the model loads
    model = load(args.model)
    if getattr(model.cfg, "notice", ""):
        print(f"NOTE: {model.cfg.notice}", file=sys.stderr)  # stderr: stdout stays the answer alone
    t0 = time.perf_counter()
    model.ask(pil_images, question, stream=lambda s: (sys.stdout.write(s), sys.stdout.flush()),
              max_new_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed, stop=tuple(args.stop))
    sys.stdout.write("\n")
    if args.timing:
        print(f"({time.perf_counter() - t0:.2f} s)")
    return 0
