"""Spatial conversations for stage 2: the relations a training scene answers clearly, several turns each.

The generator asks one spatial question per scene, and vlmkit-smol answers them at chance: it says "yes" to 34 of 38
yes-questions and to 36 of 38 no-questions (EXPERIMENTS.md, session 10). Here each training scene asks, in random
order, which shape is furthest in each direction (where the lead is clear), up to four "is A left of / above B"
questions with as many "no" as "yes" answers, and for a lone shape which side of the image it is on. Every relation is asked only where
the generator would ask it: centres apart by at least ShapesConfig.clear of the side (half that for extremes and
sides). The spatial twin of scripts/make_binding_data.py; 100 steps with it as a third of the turns left spatial at
chance, on these training questions too (EXPERIMENTS.md, session 10). Written next to the scenes (training split only):

    .venv/bin/python scripts/make_spatial_data.py data/shapes/train   # -> data/shapes/train/spatial.jsonl
"""
import random
import sys
from pathlib import Path

from vlmkit.data.shapes import ShapesConfig, _describe

sys.path.insert(0, str(Path(__file__).parent))  # the shared writer in make_binding_data.py
from make_binding_data import conversation_of, make  # noqa: E402

EXTREMES = ((0, "furthest to the left", False), (0, "furthest to the right", True),
            (1, "at the top", False), (1, "at the bottom", True))
MAX_RELATIONS = 4


def clear_relations(objects: list[dict], clear: float) -> list[tuple[dict, str, dict]]:
    """(a, relation, b) for every pair where a is `relation` b with centres at least `clear` pixels apart."""
    true = []
    for a in objects:
        for b in objects:
            if a is not b:
                if b["center"][0] - a["center"][0] >= clear:
                    true += [(a, "left of", b), (b, "right of", a)]
                if b["center"][1] - a["center"][1] >= clear:
                    true += [(a, "above", b), (b, "below", a)]
    return true


def questions(objects: list[dict], side: float, rng: random.Random) -> list[tuple[str, str]]:
    clear = ShapesConfig.clear * side
    if len(objects) == 1:
        o, qa = objects[0], []
        dx, dy = o["center"][0] - side / 2, o["center"][1] - side / 2
        if abs(dx) >= clear / 2:
            qa.append((f"Is the {o['shape']} on the left or the right side of the image?", "left" if dx < 0 else "right"))
        if abs(dy) >= clear / 2:
            qa.append((f"Is the {o['shape']} in the top or the bottom half of the image?", "top" if dy < 0 else "bottom"))
        return qa
    qa = []
    for axis, words, far in EXTREMES:
        order = sorted(objects, key=lambda o: o["center"][axis], reverse=far)
        if abs(order[1]["center"][axis] - order[0]["center"][axis]) >= clear / 2:
            qa.append((f"Which shape is {words}?", order[0]["shape"]))
    true = clear_relations(objects, clear)
    rng.shuffle(true)
    for k, (a, rel, b) in enumerate(true[:MAX_RELATIONS]):
        yes = k % 2 == 0  # as many "no" as "yes": swapping the two makes the relation clearly false
        x, y = (a, b) if yes else (b, a)
        qa.append((f"Is the {_describe(x, objects)} {rel} the {_describe(y, objects)}?", "yes" if yes else "no"))
    return qa


def conversation(row: dict, rng: random.Random) -> dict | None:
    qa = questions(row["truth"]["objects"], row["truth"]["size"][0], rng)
    if not qa:
        return None
    rng.shuffle(qa)
    return conversation_of(row, "spatial", qa)


def main(folder: Path) -> None:
    make(folder, "spatial.jsonl", conversation, 13, "spatial questions")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
