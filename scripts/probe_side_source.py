"""Where does a grounded relation's side come from: the boxes written before it, or the image?

Session 20's chain answers "Is the A left of the B?" as `the A <box>..</box> and the B <box>..</box> so the A is
right of the B: no`. In experiment I2 the side agreed with the model's own boxes at chance on the x axis and 0.78 on
y, which is what reading the visual tokens' raster order gives (MODEL_CARD.md, session 17): rows order top to bottom,
and nothing orders columns. This probe teacher-forces the chain on a shapes split's relation questions, up to
"so the A is", and reads which of the two side words (left / right, above / below) the model prefers, under three
conditions:

  true boxes             the scene's boxes, the scene's image: the side the boxes show is the right one
  swapped boxes          the two boxes exchanged in the text, the same image: a model that reads the boxes flips its
                         side, one that reads the image keeps it
  blank image            the true boxes with a blank image (zeros after normalising: mean grey): only the boxes are left

Each is the rate at which the preferred side is the one the written boxes show, per axis:

    .venv/bin/python scripts/probe_side_source.py runs/.../checkpoints/step-00000100 data/shapes/val
    .venv/bin/python scripts/probe_side_source.py ... --points    # places as <point>x,y</point> (session 22)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))  # fit_box_head's strict reader, make_grounded_relations' swap

SIDE_WORDS = {"x": ("left", "right"), "y": ("above", "below")}
CONDITIONS = ("true boxes", "swapped boxes", "blank image")


def prefix_cases(question: str, answer: str, objects: list[dict],
                 places: str = "box") -> list[tuple[str, str, str]] | None:
    """[(condition, reply prefix ending at "so the A is", side the prefix's boxes show)] for one relation question,
    or None when it is not one. The blank-image case has the true prefix; the caller blanks its image."""
    from make_grounded_relations import split_at_side, swapped_boxes

    from vlmkit.data.boxes import parse_places
    from vlmkit.data.shapes import RELATION_QUESTION, box_side, grounded_relation

    m = RELATION_QUESTION.match(question)
    if m is None:
        return None
    asked = m.group(2)
    chain = grounded_relation(question, answer, objects, say_side=True, places=places)
    if chain is None:
        return None
    given, _ = split_at_side(chain)  # the prefix I2 to I4 were trained to go on from
    swapped, _ = swapped_boxes(given, question)  # the same exchange as I4's training turns
    a, b = parse_places(given)[:2]
    shown, shown_swapped = box_side(a, b, asked), box_side(b, a, asked)
    return [("true boxes", given, shown), ("swapped boxes", swapped, shown_swapped), ("blank image", given, shown)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("split", type=Path, help="a shapes split with eval.jsonl and truth.jsonl")
    ap.add_argument("--limit", type=int, default=0, help="relation questions read (0: all)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--points", action="store_true",
                    help="write the places as <point>x,y</point> (make_grounded_relations.py --points), not boxes")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()

    from fit_box_head import read_rows

    import vlmkit
    from vlmkit.data.shapes import relation_axis
    from vlmkit.processing.images import ImageProcessor
    from vlmkit.train.collate import IGNORE, ConversationEncoder, LMCollator

    truth = {r["image"]: r["truth"]["objects"] for r in read_rows(args.split / "truth.jsonl", 0)}
    vlm = vlmkit.load(args.model)
    model, tok = vlm.model.float().eval(), vlm.tokenizer
    enc = ConversationEncoder(tok, ImageProcessor.from_vision_config(model.cfg.vision), model.cfg.image_token,
                              model.cfg.image_token_id, model.cfg.image_layout, 0)
    collate = LMCollator(tok.pad_token_id if tok.pad_token_id is not None else 0)
    word = {w: tok(" " + w, add_special_tokens=False).input_ids for ws in SIDE_WORDS.values() for w in ws}
    if any(len(ids) != 1 for ids in word.values()):
        raise SystemExit(f"the side words are not one token each: {word}")

    places = "point" if args.points else "box"
    cases = []  # (condition, axis, encoded sample, index of the side word in the shown pair)
    for line in (args.split / "eval.jsonl").read_text().splitlines():
        rec = json.loads(line)
        objects = truth.get(rec["image"])
        made = prefix_cases(rec["question"], rec["answers"][0], objects, places) if objects else None
        if made is None:
            continue
        for condition, given, shown in made:
            axis = "xy"[relation_axis(shown)]
            side = shown.split()[0]
            row = {"image": rec["image"], "conversations": [
                {"from": "human", "value": "<image>\n" + rec["question"]},
                {"from": "gpt", "value": f" {side}", "given": given}]}  # the one trained token marks where to read
            sample = enc(row, args.split)
            if condition == "blank image":
                sample["pixel_values"] = torch.zeros_like(sample["pixel_values"])
            cases.append((condition, axis, sample, SIDE_WORDS[axis].index(side)))
        if args.limit and len(cases) >= 3 * args.limit:
            break
    if not cases:
        raise SystemExit(f"{args.split}: no relation questions with truth")

    hits: dict[tuple[str, str], list[int]] = {}
    with torch.no_grad():
        for s in range(0, len(cases), args.batch_size):
            chunk = cases[s:s + args.batch_size]
            batch = collate([c[2] for c in chunk])
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           pixel_values=batch["pixel_values"]).logits  # [B, T, V]
            for i, (condition, axis, _, shown) in enumerate(chunk):
                at = int((batch["labels"][i] != IGNORE).nonzero()[0]) - 1  # the position that predicts the side
                pair = logits[i, at, [word[w][0] for w in SIDE_WORDS[axis]]]
                hits.setdefault((condition, axis), []).append(int(int(pair.argmax()) == shown))
    out = {f"{c} on {a}": {"n": len(v), "follows boxes": round(sum(v) / len(v), 3)}
           for (c, a), v in sorted(hits.items(), key=lambda kv: (CONDITIONS.index(kv[0][0]), kv[0][1]))}
    if args.json:
        print(json.dumps(out))
        return
    for k, v in out.items():
        print(f"{k:22s} {v['follows boxes']}  (of {v['n']})")


if __name__ == "__main__":
    main()
