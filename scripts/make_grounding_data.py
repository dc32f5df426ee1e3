"""Grounding conversations: every object's box, one turn each, on the training scenes.

The generator asks for one box per scene, always as its last turn. vlmkit-smol, trained on 40k such turns, puts a box
in the right row but a random column: its box centres follow the true ones down the image (r = 0.80 on the test
slice) and not across it (r = -0.07; EXPERIMENTS.md, session 13). Here each training scene asks for the box of every
object, named by its shortest unique description as the generator names it, in random order: 4.5 box answers per
scene instead of one. (On CPU, 160 steps with it as 40% of the samples tightened the rows and left the columns at
chance: recipes/experiments/vlmkit-smol-grounding.toml.) The grounding twin of scripts/make_counting_data.py; written next to the scenes
(same images, training split only):

    .venv/bin/python scripts/make_grounding_data.py data/shapes/train   # -> data/shapes/train/grounding.jsonl

With --eval it writes the same questions as an evaluation task instead, for a validation folder: one sample per
object, so that a box's place can be checked against the truth across many boxes (`scripts/model_card_figures.py
boxes` on the eval run):

    .venv/bin/python scripts/make_grounding_data.py data/shapes/val --eval --scenes 30
    vlmkit eval --model weights/vlmkit-smol --tasks data/shapes/val/boxes-task.json --out runs/eval/boxes
"""
import argparse
import json
import random
import sys
from pathlib import Path

from vlmkit.data.boxes import format_box
from vlmkit.data.shapes import GROUNDING_QUESTIONS, _describe
from vlmkit.files import write_text_atomic

sys.path.insert(0, str(Path(__file__).parent))  # the shared conversation writer in make_binding_data.py
from make_binding_data import conversation_of, make  # noqa: E402


def questions(row: dict, rng: random.Random) -> list[tuple[str, str]]:
    """(question, box answer) for every object of the scene, in random order."""
    objs = list(row["truth"]["objects"])
    rng.shuffle(objs)
    return [(rng.choice(GROUNDING_QUESTIONS).format(_describe(o, objs)), format_box(o["box"])) for o in objs]


def conversation(row: dict, rng: random.Random) -> dict:
    return conversation_of(row, "grounding", questions(row, rng))


def eval_samples(row: dict, rng: random.Random) -> list[dict]:
    """One evaluation sample per object of the scene, scored by IoU like the generator's grounding slice."""
    return [{"id": f"{row['id']}-box{k}", "image": row["image"], "slice": "grounding", "metric": "iou",
             "question": q, "answers": [a]} for k, (q, a) in enumerate(questions(row, rng))]


def write_eval_task(folder: Path, scenes: int | None) -> None:
    """folder/boxes.jsonl and folder/boxes-task.json (task `<folder>-boxes`, the grounding bar)."""
    if "train" in folder.parts:
        raise SystemExit(f"{folder}: --eval is for a validation or test folder, not training scenes")
    rng = random.Random(17)
    rows = [json.loads(line) for line in (folder / "truth.jsonl").read_text().splitlines() if line.strip()][:scenes]
    samples = [s for r in rows for s in eval_samples(r, rng)]
    write_text_atomic(folder / "boxes.jsonl", "".join(json.dumps(s) + "\n" for s in samples))
    spec = {"name": f"{folder.parent.name}-{folder.name}-boxes", "samples": "boxes.jsonl",
            "pass_bars": {"grounding": 0.8}, "max_new_tokens": 34}
    write_text_atomic(folder / "boxes-task.json", json.dumps(spec, indent=2) + "\n")
    print(f"wrote {folder / 'boxes-task.json'}: {len(samples)} boxes of {len(rows)} scenes")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path, help="a `vlmkit data make shapes` folder (with truth.jsonl)")
    ap.add_argument("--eval", action="store_true", help="write an evaluation task instead of training conversations")
    ap.add_argument("--scenes", type=int, default=None, help="with --eval: the first N scenes only")
    a = ap.parse_args()
    if a.eval:
        write_eval_task(a.folder, a.scenes)
    else:
        make(a.folder, "grounding.jsonl", conversation, 17, "box questions")


if __name__ == "__main__":
    main()
