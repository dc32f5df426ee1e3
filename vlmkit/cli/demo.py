"""vlmkit demo: the README's main job. The default model answers questions about bundled photos."""
from __future__ import annotations

import time
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "assets" / "examples"
QUESTIONS = [
    ("astronaut.jpg", "What is the person in this photo wearing?"),
    ("coffee.jpg", "What is in the cup?"),
    ("chelsea.jpg", "What animal is this?"),
    ("chelsea.jpg", "How many shapes are in this image?"),
]


def register(sub) -> None:
    p = sub.add_parser("demo", help="answer questions about the bundled example photos with the default model")
    p.add_argument("--model", default=None, help="model directory (default: the bundled vlmkit model)")
    p.add_argument("--max-tokens", type=int, default=48)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..api import load

    t0 = time.perf_counter()
    model = load(args.model)
    name = model.path.name if model.path else model.cfg.name
    print(f"model: {name} (loaded in {time.perf_counter() - t0:.1f} s)")
    if "untrained" in name:
        print("NOTE: this model's vision tower and connector are UNTRAINED placeholders: the answers below do not "
              "depend on the image. The trained default (vlmkit-smol) replaces it once trained.")
    for image, question in QUESTIONS:
        t = time.perf_counter()
        answer = model.ask(EXAMPLES / image, question, max_new_tokens=args.max_tokens)
        print(f"\n[{image}] Q: {question}\nA: {answer.strip()}\n({time.perf_counter() - t:.2f} s)")
    return 0
