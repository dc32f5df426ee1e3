"""Relation turns rewritten as grounded reasoning: both objects' boxes first, then yes / no (session 19).

vlmkit-smol's box head places boxes on both axes (r = 0.96 across the image), while the LM answers "is A left of B" at
chance where the two shapes' order in its token raster disagrees with their columns (MODEL_CARD.md, known failures).
Here every "Is the A <relation> the B?" turn of a conversation file gets the answer
`the A <box>..</box> and the B <box>..</box>: yes`, from the scene's ground truth (`vlmkit.data.shapes.grounded_relation`);
at inference the box head writes the coordinates and the LM compares them. Other turns are kept as they are.

    .venv/bin/python scripts/make_grounded_relations.py data/shapes/train conversations.jsonl spatial.jsonl
    # -> data/shapes/train/conversations-grounded.jsonl, spatial-grounded.jsonl
    .venv/bin/python scripts/make_grounded_relations.py data/shapes/train conversations.jsonl spatial.jsonl --say-side
    # -> ...-reasoned.jsonl: "the A <box>..</box> and the B <box>..</box> so the A is left of the B: no" (session 20)
    .venv/bin/python scripts/make_grounded_relations.py data/shapes/train spatial.jsonl --say-side --train-side-only \
        --swap-boxes    # -> spatial-side-swapped.jsonl: half the boxes exchanged, the side follows them (session 21)
    .venv/bin/python scripts/make_grounded_relations.py data/shapes/train spatial.jsonl --say-side --train-side-only \
        --swap-boxes --points   # -> spatial-side-swapped-points.jsonl: one digit an axis for each place (session 22)
    .venv/bin/python scripts/make_grounded_relations.py data/shapes/train spatial.jsonl --say-side --train-side-only \
        --swap-boxes --points --keep y   # -> spatial-side-swapped-points-y.jsonl: above / below alone (session 23)
    .venv/bin/python scripts/make_grounded_relations.py data/shapes/train spatial.jsonl --say-side --train-side-only \
        --swap-boxes --points --max-gap 3   # -> spatial-side-swapped-points-gap3.jsonl: the close comparisons alone
    .venv/bin/python scripts/make_grounded_relations.py data/shapes/train spatial.jsonl --keep other
    # -> spatial-other.jsonl: the turns that are not relations ("Which shape is at the top?"), alone
"""
import argparse
import json
import random
import re
import sys
from pathlib import Path

from vlmkit.data.boxes import parse_boxes, parse_places, parse_points
from vlmkit.data.shapes import RELATION_QUESTION, box_side, grounded_relation, relation_axis
from vlmkit.files import write_text_atomic

sys.path.insert(0, str(Path(__file__).parent))  # the strict reader of scripts/fit_box_head.py
from fit_box_head import read_rows  # noqa: E402


def rewrite(conv: dict, objects: list[dict], say_side: bool = False, train_side_only: bool = False,
            swap: random.Random | None = None, places: str = "box") -> tuple[dict, int]:
    """(conv with its relation answers grounded, how many were). A relation turn that names no object of the scene
    is an error: it would stay a bare yes / no and teach the LM both formats. train_side_only gives each relation
    answer up to "so the A is" as the turn's untrained "given" prefix (vlmkit.train.collate.to_messages), so that
    the loss falls on the side and the yes / no alone.

    swap (session 21, with train_side_only): for half of the relation turns, drawn from it, the two boxes of the
    given prefix trade places and the side and the yes / no follow the swapped boxes. scripts/probe_side_source.py
    found session 20's I2 reading the side from the image's token raster, not from the boxes (it kept its side when
    the boxes were swapped); against the image half the time, the boxes are the only thing the side can follow."""
    turns, done = [dict(t) for t in conv["conversations"]], 0
    for q, a in zip(turns[::2], turns[1::2]):
        question = q["value"].removeprefix("<image>\n").strip()
        if RELATION_QUESTION.match(question) is None:
            continue
        grounded = grounded_relation(question, a["value"], objects, say_side, places)
        if grounded is None:
            raise ValueError(f"{conv['id']}: relation turn {question!r} -> {a['value']!r} names no object of the scene")
        if places == "point" and not train_side_only:  # the box head's targets where its points are trained
            a["places"] = parse_boxes(grounded_relation(question, a["value"], objects))
        if train_side_only:
            a["given"], grounded = split_at_side(grounded)
            if swap is not None and swap.random() < 0.5:
                a["given"], grounded = swapped_boxes(a["given"], question)
        a["value"], done = grounded, done + 1
    return {**conv, "conversations": turns}, done


def kept_turns(conv: dict, keep: str | None, max_gap: int | None = None) -> dict | None:
    """conv with only the question / answer pairs that keep names: relations on one axis ("x", "y") or the turns
    that are not relations ("other"); None when nothing is left. A mixture can then weight one kind of turn without
    repeating the rest of its conversation. The first question that is left carries the image.

    max_gap (session 23) keeps only the relation turns whose two written points are at most that many tenths apart
    on the question's axis: L's side followed points 4 or more apart about 0.95 of the time and closer ones near
    chance."""
    turns = conv["conversations"]
    pairs = []
    for q, a in zip(turns[::2], turns[1::2]):
        m = RELATION_QUESTION.match(q["value"].removeprefix("<image>\n").strip())
        if keep is not None and ("xy"[relation_axis(m.group(2))] if m else "other") != keep:
            continue
        if max_gap is not None:
            points = parse_points(a.get("given", "") + a["value"])
            if m is None or len(points) < 2:
                continue
            axis = relation_axis(m.group(2))
            if abs(points[0][axis] - points[1][axis]) > max_gap:
                continue
        pairs.append(({**q, "value": q["value"].removeprefix("<image>\n")}, a))
    if not pairs:
        return None
    pairs[0][0]["value"] = "<image>\n" + pairs[0][0]["value"]
    return {**conv, "conversations": [t for pair in pairs for t in pair]}


def split_at_side(chain: str) -> tuple[str, str]:
    """A say_side chain cut just before its side: ("the A <box>..</box> and the B <box>..</box> so the A is",
    " right of the B: no")."""
    cut = chain.rindex(" is ") + len(" is")
    return chain[:cut], chain[cut:]


_PLACE = re.compile(r"<(box|point)>.*?</\1>")


def swapped_boxes(given: str, question: str) -> tuple[str, str]:
    """(the prefix with its two places, boxes or points, exchanged; the side and the yes / no that the exchanged
    places show)."""
    m = RELATION_QUESTION.match(question)
    first, second = (p.span() for p in list(_PLACE.finditer(given))[:2])
    given = (given[:first[0]] + given[second[0]:second[1]] + given[first[1]:second[0]]
             + given[first[0]:first[1]] + given[second[1]:])
    a, b = parse_places(given)[:2]
    side = box_side(a, b, m.group(2))
    return given, f" {side} the {m.group(3)}: {'yes' if side == m.group(2) else 'no'}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, help="a shapes split with truth.jsonl")
    ap.add_argument("files", nargs="+", help="conversation files in the folder; each NAME.jsonl -> NAME-grounded.jsonl")
    ap.add_argument("--say-side", action="store_true",
                    help="write which side of B A is on between the boxes and the answer (session 20); "
                         "NAME.jsonl -> NAME-reasoned.jsonl")
    ap.add_argument("--train-side-only", action="store_true",
                    help="with --say-side: the boxes and 'so the A is' are given, only the side and the yes / no are "
                         "trained; NAME.jsonl -> NAME-side.jsonl")
    ap.add_argument("--swap-boxes", action="store_true",
                    help="with --train-side-only: half of the relation turns have their two boxes exchanged, and the "
                         "side and the yes / no follow them (see rewrite()); NAME.jsonl -> NAME-side-swapped.jsonl")
    ap.add_argument("--seed", type=int, default=0, help="which turns --swap-boxes exchanges")
    ap.add_argument("--points", action="store_true",
                    help="write each place as <point>x,y</point>, one digit an axis, not as a box (session 22); "
                         "NAME-...jsonl -> NAME-...-points.jsonl")
    ap.add_argument("--keep", choices=["x", "y", "other"],
                    help="keep only the relation turns on one axis, or only the turns that are not relations, and "
                         "drop conversations left empty; NAME-...jsonl -> NAME-...-x/-y.jsonl, NAME-other.jsonl")
    ap.add_argument("--max-gap", type=int,
                    help="with --points: keep only the relation turns whose two points are at most this many tenths "
                         "apart on the question's axis (see kept_turns()); NAME-...jsonl -> NAME-...-gapN.jsonl")
    args = ap.parse_args()
    if args.train_side_only and not args.say_side:
        ap.error("--train-side-only needs --say-side")
    if args.swap_boxes and not args.train_side_only:
        ap.error("--swap-boxes needs --train-side-only")
    if args.keep == "other" and (args.say_side or args.points):
        ap.error("--keep other drops every relation turn, so there is nothing to --say-side or write as --points")
    if args.max_gap is not None and not args.points:
        ap.error("--max-gap reads the gap between points: it needs --points")
    swap = random.Random(args.seed) if args.swap_boxes else None
    truth = {r["image"]: r["truth"]["objects"] for r in read_rows(args.folder / "truth.jsonl", 0)}
    for name in args.files:
        convs = read_rows(args.folder / name, 0)  # a dropped row would keep its scene out
        out, total = [], 0
        for conv in convs:
            new, n = rewrite(conv, truth[conv["image"]], args.say_side, args.train_side_only, swap,
                             "point" if args.points else "box")
            if args.keep is not None or args.max_gap is not None:
                new = kept_turns(new, args.keep, args.max_gap)
                n = 0 if new is None or args.keep == "other" else len(new["conversations"]) // 2
            if new is not None:
                out.append(new)
                total += n
        suffix = "-side-swapped" if swap else "-side" if args.train_side_only else "-reasoned" if args.say_side else "-grounded"
        suffix += "-points" if args.points else ""
        suffix = "-other" if args.keep == "other" else suffix + (f"-{args.keep}" if args.keep else "")
        suffix += f"-gap{args.max_gap}" if args.max_gap is not None else ""
        dest = args.folder / name.replace(".jsonl", suffix + ".jsonl")
        write_text_atomic(dest, "".join(json.dumps(c) + "\n" for c in out))
        print(f"wrote {dest}: {len(out)} conversations, {total} relation answers grounded")


if __name__ == "__main__":
    main()
