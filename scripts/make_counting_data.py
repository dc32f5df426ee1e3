"""Counting conversations for stage 2: every count a training scene can be asked, one turn each.

The generator asks one counting question per scene, usually about one colour or one kind of shape, so the answer
"1" is right for most of them and vlmkit-smol says "1" to two thirds of the counting test questions
(EXPERIMENTS.md, session 9). Here each training scene asks how many shapes there are in all, and how many of each
kind and of each colour it holds, in random order, so that more of the answers depend on the image. The counting twin of
scripts/make_binding_data.py; written next to the scenes (same images, training split only):

    .venv/bin/python scripts/make_counting_data.py data/shapes/train   # -> data/shapes/train/counting.jsonl
"""
import random
import sys
from collections import Counter
from pathlib import Path

from vlmkit.data.shapes import PLURALS, TOTAL_COUNT_QUESTIONS as TOTAL

sys.path.insert(0, str(Path(__file__).parent))  # the shared writer in make_binding_data.py
from make_binding_data import conversation_of, make  # noqa: E402


def conversation(row: dict, rng: random.Random) -> dict:
    objs = row["truth"]["objects"]
    qa = [(rng.choice(TOTAL), len(objs))]
    qa += [(f"How many {PLURALS[s]} are there?", n) for s, n in sorted(Counter(o["shape"] for o in objs).items())]
    qa += [(f"How many {c} shapes are there?", n) for c, n in sorted(Counter(o["colour"] for o in objs).items())]
    rng.shuffle(qa)
    return conversation_of(row, "counting", [(q, str(n)) for q, n in qa])


def main(folder: Path) -> None:
    make(folder, "counting.jsonl", conversation, 11, "counting questions")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
