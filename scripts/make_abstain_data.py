"""Abstention conversations for worlds the model was not trained to read: the scenes' own questions, every answer
UNSURE. vlmkit-smol learnt to abstain on textures (`vlmkit data make unsure`), but after end-to-end training on
shapes it answered chart questions with shape words ("star" to 45 of 100; EXPERIMENTS.md, session 12): a chart or a
page of text looks like a scene to a tower that now finds shapes everywhere. Until charts and text are trained
for real, the right answer there is "I can't tell". Written next to the scenes (training split only; take these
files out of the mixture once the worlds themselves are trained):

    vlmkit data make charts --split train --n 400 --out data/charts/train
    .venv/bin/python scripts/make_abstain_data.py data/charts/train data/text/train   # -> DIR/abstain.jsonl
"""
import json
import sys
from pathlib import Path

from vlmkit.data.unsure import UNSURE

sys.path.insert(0, str(Path(__file__).parent))  # the shared atomic writer in make_binding_data.py
from make_binding_data import write  # noqa: E402


def abstain(record: dict) -> dict:
    turns = [dict(t, value=UNSURE) if t["from"] == "gpt" else t for t in record["conversations"]]
    return dict(record, id=f"{record['id']}-abstain", conversations=turns)


def main(dirs: list[str]) -> None:
    if not dirs:
        raise SystemExit(__doc__)
    for d in map(Path, dirs):
        src = d / "conversations.jsonl"
        if not src.is_file():
            raise SystemExit(f"{src}: not found (make the world first with `vlmkit data make`)")
        rows = [abstain(json.loads(line)) for line in src.read_text().splitlines() if line.strip()]
        write(d, "abstain.jsonl", rows, "questions")


if __name__ == "__main__":
    main(sys.argv[1:])
