"""Grounding conversations: every object's box, one turn each, on the training scenes.

The generator asks for one box per scene, always as its last turn, and vlmkit-smol trained on 40k such turns answers
nearly the same box whatever the image: its box centres do not correlate with the true ones (r = -0.13 across, -0.03
down, on the test slice; MODEL_CARD.md, session 13). It learned each shape's proportions (a tall rectangle gets a tall
box) but not where anything is. Here each training scene asks for the box of every object, named by its shortest
unique description as the generator names it, in random order: 4.5 box answers per scene instead of one, and no
answer that a prior could give. The grounding twin of scripts/make_counting_data.py; written next to the scenes
(same images, training split only):

    .venv/bin/python scripts/make_grounding_data.py data/shapes/train   # -> data/shapes/train/grounding.jsonl
"""
import random
import sys
from pathlib import Path

from vlmkit.data.boxes import format_box
from vlmkit.data.shapes import GROUNDING_QUESTIONS, _describe

sys.path.insert(0, str(Path(__file__).parent))  # the shared writer in make_binding_data.py
from make_binding_data import conversation_of, make  # noqa: E402


def conversation(row: dict, rng: random.Random) -> dict:
    objs = list(row["truth"]["objects"])
    rng.shuffle(objs)
    qa = [(rng.choice(GROUNDING_QUESTIONS).format(_describe(o, objs)), format_box(o["box"])) for o in objs]
    return conversation_of(row, "grounding", qa)


def main(folder: Path) -> None:
    make(folder, "grounding.jsonl", conversation, 17, "box questions")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
