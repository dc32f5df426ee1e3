"""Where a grounded relation answer goes wrong: its boxes, the side it says, or the yes / no after.

A model trained on `scripts/make_grounded_relations.py` answers "Is the A left of the B?" in steps:
`the A <box>..</box> and the B <box>..</box> so the A is right of the B: no` (with --say-side; without it, the
boxes and then the answer; with --points, `<point>x,y</point>` in place of each box). This reads an eval run's
predictions.jsonl and, for each relation question, checks each step against the one before it, so a failed run says
which step failed:

    .venv/bin/python scripts/relation_chain_report.py runs/eval/MODEL/shapes-val-spatial/predictions.jsonl

  relations right        the yes / no is the label (the harness's own score for these rows)
  boxes written          the answer holds two boxes
  boxes show the truth   the boxes' centres order as the label says (the question is asked only where the true
                         centres differ by a tenth of the side, so this is what reading the boxes right gives)
  side written           the answer says "so the A is <relation> the B"
  side follows boxes     the side said is the one the written boxes show on the question's axis
  answer follows side    yes exactly when the side said is the relation asked
  side is the asked one  the side said is the relation the question asked: about half the time when the side is
                         read from the boxes, near 1 when the model copies the question instead (session 20's I)
  side follows boxes on x / on y, right on x / on y: the same rates for left / right and for above / below
  side follows points N apart: for point chains, by how many tenths the two points are apart on the asked axis
                         (0 to 3, then 4+); session 23 found the side following points 4+ apart and near chance
                         on closer ones
Each rate is over the rows where the step before it exists. After them, the questions that are not relations
("Which shape is furthest to the right?", "Is the circle on the left or the right side of the image?"), by form:
how many are right (the harness's exact match) and the share of the form's commonest answer, which shows a model
that gives one answer whatever the image (session 23: "right" to all 15 lone left / right questions). --json prints
the same as one JSON object.
"""
from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

from vlmkit.data.boxes import parse_places, parse_points
from vlmkit.data.shapes import RELATION_QUESTION, box_side, relation_axis
from vlmkit.eval.metrics.pope import pope_label, yes_no
from vlmkit.eval.metrics.relaxed import exact_match, normalize_exact

SAID_SIDE = re.compile(r" so the .+ is (left of|right of|above|below) the ")
_NAMED = re.compile(r"^Is the .+? (on the|in the) ")  # "Is the red circle on the left" -> "Is the _ on the left"


def chain(record: dict) -> dict | None:
    """One relation prediction split into its steps, or None for any other question."""
    m = RELATION_QUESTION.match(record["question"].strip())
    if m is None:
        return None
    asked, text = m.group(2), record["prediction"]
    said_yes, true_yes = yes_no(text) == "yes", pope_label(record["answers"][0]) == "yes"
    row = {"right": said_yes == true_yes, "axis": "xy"[relation_axis(asked)], "said_yes": said_yes}
    boxes = parse_places(text)  # boxes, or points (<point>x,y</point>, session 22)
    if len(boxes) >= 2:
        shown = box_side(boxes[0], boxes[1], asked)
        row["boxes_true"] = (shown == asked) == true_yes
        side = SAID_SIDE.search(text)
        points = parse_points(text)
        if len(points) >= 2:
            axis = relation_axis(asked)
            row["gap"] = min(abs(points[0][axis] - points[1][axis]), 4)
        if side:
            row["side_follows_boxes"] = side.group(1) == shown
            row["side_is_asked"] = side.group(1) == asked
            row["answer_follows_side"] = row["side_is_asked"] == said_yes
    return row


def report(rows: list[dict]) -> dict:
    def rate(key: str, among: list[dict]) -> dict:
        hits = [r[key] for r in among if key in r]
        return {"n": len(hits), "rate": round(sum(hits) / len(hits), 3) if hits else None}

    boxed = [r for r in rows if "boxes_true" in r]
    sided = [r for r in rows if "side_follows_boxes" in r]
    out = {"relations": len(rows), "relations right": rate("right", rows),
           "said yes": sum(r["said_yes"] for r in rows),
           "boxes written": {"n": len(boxed), "rate": round(len(boxed) / len(rows), 3) if rows else None},
           "boxes show the truth": rate("boxes_true", boxed),
           "side written": {"n": len(sided), "rate": round(len(sided) / len(boxed), 3) if boxed else None},
           "side follows boxes": rate("side_follows_boxes", sided),
           "answer follows side": rate("answer_follows_side", sided),
           "side is the asked one": rate("side_is_asked", sided)}
    for axis in ("x", "y"):
        out[f"side follows boxes on {axis}"] = rate("side_follows_boxes", [r for r in sided if r["axis"] == axis])
    for axis in ("x", "y"):
        out[f"right on {axis}"] = rate("right", [r for r in rows if r["axis"] == axis])
    if any("gap" in r for r in sided):
        for gap in range(5):
            out[f"side follows points {gap}{'+' if gap == 4 else ''} apart"] = rate(
                "side_follows_boxes", [r for r in sided if r.get("gap") == gap])
    return out


def other_forms(records: list[dict]) -> dict:
    """{question form: {"n", "right", "commonest answer", "its share"}} over the records that are not relations."""
    forms: dict[str, list[dict]] = {}
    for r in records:
        q = r["question"].strip()
        if RELATION_QUESTION.match(q) is None:
            forms.setdefault(_NAMED.sub(r"Is the _ \1 ", q), []).append(r)
    out = {}
    for form, rs in sorted(forms.items()):
        answers = [normalize_exact(r["prediction"]) for r in rs]
        (top, count), = Counter(answers).most_common(1)  # a tie goes to the answer given first
        out[form] = {"n": len(rs), "right": int(sum(exact_match(r["prediction"], r["answers"]) for r in rs)),
                     "commonest answer": top, "its share": round(count / len(rs), 3)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("predictions", type=Path, help="an eval run's predictions.jsonl")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    records = [json.loads(line) for line in args.predictions.read_text().splitlines() if line.strip()]
    rows = [r for r in map(chain, records) if r is not None]
    if not rows:
        raise SystemExit(f"{args.predictions}: no relation questions ('Is the A left of the B?') among "
                         f"{len(records)} predictions")
    out, others = report(rows), other_forms(records)
    if args.json:
        print(json.dumps({**out, "other questions": others}))
        return
    for k, v in out.items():
        print(f"{k:28s} {v['rate'] if isinstance(v, dict) else v}" + (f"  (of {v['n']})" if isinstance(v, dict) else ""))
    if others:
        right, n = (sum(o[k] for o in others.values()) for k in ("right", "n"))
        print(f"\nnot relations: {right} right of {n}")
    for form, o in others.items():
        print(f"  {form:62s} {o['right']:3d} / {o['n']:<3d} commonest answer {o['commonest answer']!r} "
              f"({o['its share']:.0%})")


if __name__ == "__main__":
    main()
