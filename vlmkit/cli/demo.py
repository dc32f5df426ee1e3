"""vlmkit demo: the README's main job. The default model answers questions about bundled photos."""
from __future__ import annotations

import time
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "assets" / "examples"
# (image, question, what a correct answer is). The first three are in the model's domain but from
# outside its training data; the photos are far outside it, where the right answer is an abstention.
QUESTIONS = [
    ("shapes.png", "How many shapes are in the image?", "6"),
    ("shapes.png", "What colour is the small rectangle?", "blue"),
    ("shapes.png", "Give the bounding box of the small rectangle.", "<box>107,575,201,625</box>"),
    ("word.png", "What does the text say?", "cokoba"),
    ("chart.png", "What value does Tue have?", "30"),
    ("astronaut.jpg", "What is the person in this photo wearing?", "(out of domain: should abstain)"),
    ("chelsea.jpg", "What animal is this?", "(out of domain: should abstain)"),
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
    notice = getattr(model.cfg, "notice", "")
    if notice:
        print(f"NOTE: {notice}")
    for image, question, expected in QUESTIONS:
        t = time.perf_counter()
        answer = model.ask(EXAMPLES / image, question, max_new_tokens=args.max_tokens)
        print(f"\n[{image}] Q: {question}\nA: {answer.strip()}\n   expected: {expected}   ({time.perf_counter() - t:.2f} s)")
    return 0
