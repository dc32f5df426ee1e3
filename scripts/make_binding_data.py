"""Colour-binding conversations for stage 2: every nameable object's colour, one turn each, on the training scenes.

The shipped model's wrong colours are mostly another object's colour in the same scene (MODEL_CARD.md, failure
gallery): it sees colours but does not bind them to the shape asked about. The generator asks one colour question
per scene, so a prior ("brown") answers much of the colour loss. Here each training scene asks for the colour of
every object that can be named without its colour ("the star", "the small circle"), in random order, so the only
way to answer all of them is to bind. Written next to the scenes (same images, training split only):

    .venv/bin/python scripts/make_binding_data.py data/shapes/train   # -> data/shapes/train/binding.jsonl
"""
import json
import random
import sys
from pathlib import Path

from vlmkit.data.shapes import COLOUR_QUESTIONS, _colour_referents
from vlmkit.files import write_text_atomic


def conversation(row: dict, rng: random.Random) -> dict | None:
    refs = _colour_referents(row["truth"]["objects"])
    if len(refs) < 2:  # one nameable object: the generator's own question already covers it
        return None
    rng.shuffle(refs)
    return conversation_of(row, "binding", [(rng.choice(COLOUR_QUESTIONS).format(name), obj["colour"]) for obj, name in refs])


def conversation_of(row: dict, suffix: str, qa: list[tuple[str, str]]) -> dict:
    """One conversation about a scene's image: the question/answer pairs in order, the image placeholder on the first."""
    turns = []
    for i, (q, a) in enumerate(qa):
        turns += [{"from": "human", "value": ("<image>\n" if i == 0 else "") + q}, {"from": "gpt", "value": a}]
    return {"id": f"{row['id']}-{suffix}", "image": row["image"], "conversations": turns}


def write(folder: Path, name: str, convs: list[dict], what: str) -> None:
    """Write `convs` to folder/name atomically: a half-written data file would train on part of the data."""
    write_text_atomic(folder / name, "".join(json.dumps(c) + "\n" for c in convs))
    turns = sum(len(c["conversations"]) // 2 for c in convs)
    print(f"wrote {folder / name}: {len(convs)} conversations, {turns} {what}")


def make(folder: Path, name: str, conversation, seed: int, what: str) -> None:
    """folder/name: conversation(row, rng) for each scene of folder/truth.jsonl, in order (None skips a scene)."""
    rng = random.Random(seed)
    rows = [json.loads(l) for l in (folder / "truth.jsonl").read_text().splitlines() if l.strip()]
    out = [c for c in (conversation(r, rng) for r in rows) if c is not None]
    write(folder, name, out, f"{what} (of {len(rows)} scenes)")


def main(folder: Path) -> None:
    make(folder, "binding.jsonl", conversation, 7, "colour questions")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
