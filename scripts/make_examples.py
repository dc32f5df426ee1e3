"""Regenerate the demo's in-domain example images (vlmkit/assets/examples), none of them from a training split.

  .venv/bin/python scripts/make_examples.py

- shapes.png, word.png: the *test* split of the visual worlds (seed 11), which training never draws from.
- chart.png: a bar chart drawn by matplotlib, a renderer the training charts never used.
The photos (astronaut, coffee, chelsea) come from scikit-image; see the folder's README.
"""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from vlmkit.data import make_source  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "vlmkit" / "assets" / "examples"


def main() -> None:
    shapes = make_source("shapes", "test", seed=11, n=1)[0]
    shapes.image.save(OUT / "shapes.png")
    print("shapes.png", [(q.question, q.answer) for q in shapes.qa])
    word = make_source("text", "test", seed=11, n=1)[0]
    word.image.save(OUT / "word.png")
    print("word.png", [(q.question, q.answer) for q in word.qa])
    fig, ax = plt.subplots(figsize=(2.24, 2.24), dpi=100)
    labels, values = ["Mon", "Tue", "Wed", "Thu"], [12, 30, 21, 7]
    bars = ax.bar(labels, values, color="#4c72b0")
    ax.bar_label(bars, fontsize=8)
    ax.set_title("Visitors", fontsize=9)
    ax.tick_params(labelsize=7)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    fig.savefig(OUT / "chart.png")
    print("chart.png", dict(zip(labels, values)))


if __name__ == "__main__":
    main()
