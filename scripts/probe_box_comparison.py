"""Can vlmkit-smol's LM learn to compare two written boxes? Text only, loss on the yes / no token alone.

Session 19's grounded relations (EXPERIMENTS.md) have the LM write both objects' boxes and then answer "is A left of
B"; after 100 LoRA steps its answers agreed with its own boxes only at chance. This probe removes everything else:
no image, the prompt ends just before the answer word, and only that word's two logits ("yes", "no") are trained,
on the shape scenes' true boxes. Accuracy on held-out pairs is printed every --every steps, apart for the x axis
(left of / right of) and the y axis (above / below):

    .venv/bin/python scripts/probe_box_comparison.py weights/vlmkit-smol data/shapes/train/truth.jsonl --lr 2e-4

Session 20 found why it stays at chance: the yes / no is an XOR (see relation_step()). --target relation trains
the step before it instead, which side of B A is on, and --target match the yes / no once that side is written;
--form writes the places as boxes, centres or one digit an axis:

    .venv/bin/python scripts/probe_box_comparison.py weights/vlmkit-smol data/shapes/train/truth.jsonl \
        --form digit --target relation --lr 1e-3
"""
from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))  # make_spatial_data's relations, fit_box_head's reader


FORMS = ("box", "centre", "digit")


def where(obj: dict, side: float, form: str) -> str:
    """How the reasoning writes one object's place: its box (as the box head writes it), its centre on the same
    0-1000 scale, or its centre's tenth of the image on each axis as one digit. Relations are asked only where centres
    differ by a tenth of the side (ShapesConfig.clear), so two digits never tie where the answer depends on them."""
    from vlmkit.data.boxes import format_box

    if form == "box":
        return format_box(obj["box"])
    x, y = (min(999, int(1000 * c / side)) for c in obj["center"])
    return f"at {x},{y}" if form == "centre" else f"at {x // 100},{y // 100}"


def example(row: dict, rng: random.Random, form: str = "box") -> tuple[str, bool, str] | None:
    """(ChatML prompt ending at ": ", whether the answer is yes, the relation) for one clear relation, or None."""
    from make_spatial_data import clear_relations

    from vlmkit.data.shapes import RELATION_QUESTION, ShapesConfig, _describe, grounded_relation

    objs = row["truth"]["objects"]
    pairs = clear_relations(objs, ShapesConfig.clear * row["truth"]["size"][0])
    if not pairs:
        return None
    a, rel, b = rng.choice(pairs)
    yes = rng.random() < 0.5
    if not yes:  # swapped, the relation is clearly false
        a, b = b, a
    q = f"Is the {_describe(a, objs)} {rel} the {_describe(b, objs)}?"
    if form == "box":
        reasoning = grounded_relation(q, "yes" if yes else "no", objs).rsplit(" ", 1)[0]  # up to ":", no label
    else:
        m, side = RELATION_QUESTION.match(q), row["truth"]["size"][0]
        reasoning = f"the {m.group(1)} {where(a, side, form)} and the {m.group(3)} {where(b, side, form)}:"
    return f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n{reasoning}", yes, rel


AXIS_WORDS = {"left of": ("left", "right"), "right of": ("left", "right"), "above": ("above", "below"),
              "below": ("above", "below")}


def relation_step(prompt: str, yes: bool, rel: str) -> tuple[str, bool, str]:
    """The same example asked one step earlier: after the two places, "so the A is" and then which side of B it is.

    The yes / no answer is an XOR: whether A's number is the smaller, flipped by the question's relation word. Each
    alone says nothing about the label (both are balanced), so the gradient has no single feature to start from.
    Which side A is on depends on the comparison alone. Returns (prompt, whether A is left of / above B, rel)."""
    # ", so" as in session 20's probe runs; the training answers (grounded_relation(say_side=True)) write " so",
    # since "</box>," tokenizes unlike the box head's own tokens, which a text-only probe never meets
    head, tail = prompt.rsplit("\n", 1)
    subject = tail.removeprefix("the ").split(" at ")[0].split(" <box>")[0]
    return f"{head}\n{tail.removesuffix(':')}, so the {subject} is", yes == (rel in ("left of", "above")), rel


def match_step(prompt: str, yes: bool, rel: str) -> tuple[str, bool, str]:
    """The answer's last step: the reasoning already says which side of B A is on (truly), and the yes / no says
    whether that is the relation asked. The label is then whether two phrases are the same, which a pretrained LM's
    copying heads see, rather than whether one number is below another."""
    step, first, _ = relation_step(prompt, yes, rel)
    side = AXIS_WORDS[rel][0 if first else 1]
    other = re.search(rf"Is the .+ {rel} the (.+)\?", prompt).group(1)
    return f"{step} {side}{' of' if side in ('left', 'right') else ''} the {other}:", yes, rel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("truth", type=Path, help="a shapes split's truth.jsonl (the last --test rows are held out)")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--test", type=int, default=400, help="scenes held out")
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--form", choices=FORMS, default="box",
                    help="how each object's place is written before the answer (see where())")
    ap.add_argument("--target", choices=("answer", "relation", "match"), default="answer",
                    help="train the yes / no answer, which side of B A is on (see relation_step()), or the yes / no "
                         "after the side is written (see match_step())")
    args = ap.parse_args()

    from fit_box_head import read_rows

    import vlmkit
    from vlmkit.data.shapes import relation_axis

    torch.manual_seed(args.seed)
    vlm = vlmkit.load(args.model)
    lm, tok = vlm.model.lm.float(), vlm.tokenizer
    params = []
    for name, p in lm.named_parameters():
        p.requires_grad_(".lora_" in name)
        if p.requires_grad:
            params.append(p)
    if not params:
        raise SystemExit(f"{args.model} has no LoRA adapters to train")
    rows = read_rows(args.truth, 0)
    rng = random.Random(args.seed)
    train = [e for e in (example(r, rng, args.form) for r in rows[:-args.test]) if e]
    test = [e for e in (example(r, rng, args.form) for r in rows[-args.test:]) if e]
    if args.target != "answer":
        step = relation_step if args.target == "relation" else match_step
        train, test = [step(*e) for e in train], [step(*e) for e in test]

    def word_id(w: str) -> int:
        return tok(" " + w, add_special_tokens=False).input_ids[-1]

    def candidates(rel: str) -> list[int]:  # the two words the label picks between, the true-if-True one first
        return [word_id(w) for w in (AXIS_WORDS[rel] if args.target == "relation" else ("yes", "no"))]

    def answer_logits(exs) -> torch.Tensor:  # [B, 2]: the two candidates' logits at the last prompt position
        ids = [tok(p, add_special_tokens=False).input_ids for p, _, _ in exs]
        T = max(map(len, ids))
        x = torch.zeros(len(ids), T, dtype=torch.long)
        mask = torch.zeros(len(ids), T, dtype=torch.long)
        for i, s in enumerate(ids):  # left-padded, so every row's answer comes at the last column
            x[i, T - len(s):], mask[i, T - len(s):] = torch.tensor(s), 1
        out = lm(lm.embed_tokens(x), attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0),
                 logits_to_keep=1)
        last = (out.logits if hasattr(out, "logits") else out[0])[:, -1]  # [B, V]
        return last.gather(1, torch.tensor([candidates(rel) for _, _, rel in exs]))

    @torch.no_grad()
    def accuracy() -> dict:
        lm.eval()
        right: dict[str, list[int]] = {"x": [], "y": []}
        for s in range(0, len(test), 50):
            exs = test[s:s + 50]
            for (_, yes, rel), said_yes in zip(exs, (answer_logits(exs).argmax(-1) == 0).tolist()):
                right["xy"[relation_axis(rel)]].append(int(said_yes == yes))
        lm.train()
        return {f"acc_{k}": round(sum(v) / len(v), 3) for k, v in right.items()}

    opt = torch.optim.AdamW(params, lr=args.lr)
    print(json.dumps({"step": 0, **accuracy()}), flush=True)
    t0 = time.time()
    for step in range(1, args.steps + 1):
        exs = rng.sample(train, args.batch_size)
        target = torch.tensor([0 if yes else 1 for _, yes, _ in exs])
        loss = torch.nn.functional.cross_entropy(answer_logits(exs), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % args.every == 0 or step == args.steps:
            print(json.dumps({"step": step, "loss": round(loss.item(), 3), **accuracy(),
                              "seconds": round(time.time() - t0)}), flush=True)


if __name__ == "__main__":
    main()
