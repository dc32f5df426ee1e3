"""Figures and tables for MODEL_CARD.md: failure galleries from an eval run, and answers on photos.

  .venv/bin/python scripts/model_card_figures.py failures RUN_DIR --task visual-world --slices counting,grounding \
      --out docs/images/vlmkit-smol-failures.png
  .venv/bin/python scripts/model_card_figures.py photos --model weights/vlmkit-smol \
      --out docs/images/vlmkit-smol-photos.png            (prints a markdown table too)
  .venv/bin/python scripts/model_card_figures.py answers runs/eval/A runs/eval/B --task worlds-test \
      --slices counting,colour,spatial        (a markdown table: which answers each run gives, and how often)
  .venv/bin/python scripts/model_card_figures.py ablation "trainable connector=docs/a-metrics.jsonl" \
      "frozen connector=docs/b-metrics.jsonl" "continued=docs/c-metrics.jsonl@600" --out docs/images/vlmkit-smol-image-gain.png
  .venv/bin/python scripts/model_card_figures.py curves "stage 3=docs/vlmkit-smol-e2e-metrics.jsonl" \
      "stage 3b=docs/vlmkit-smol-e2e-more-metrics.jsonl@1930" --smooth 30 --out docs/images/vlmkit-smol-e2e-curves.png
  .venv/bin/python scripts/model_card_figures.py boxes "shipped=runs/eval/A" "more boxes=runs/eval/B" \
      --task worlds-test --out docs/images/vlmkit-smol-boxes.png    (a markdown table too)
  .venv/bin/python scripts/model_card_figures.py relations runs/eval/A runs/eval/B --task shapes-val \
      --worlds data/shapes/val     (a markdown table: relations by where the two shapes fall in the token raster)

Failures are the first N wrong answers of each slice in sample order (not hand-picked).
Photos come from scikit-image (public domain / CC0), never seen in training.
The ablation figure reads the training evals' `eval/*` rows (vlmkit.train.evaluate.image_ablation): whether the
answer loss depends on the image at all, step by step, next to the scale of the visual tokens.
"""
from __future__ import annotations

import argparse
import re
import textwrap
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

PHOTOS = ("astronaut", "chelsea", "coffee", "camera", "rocket", "horse", "text", "coins")
PHOTO_QUESTIONS = ("What is in this picture?", "How many shapes are in the image?", "What is written in the image?")


def _run_task(run: str, task_dir: str) -> tuple[list[dict], dict[str, float]]:
    """An eval run's predictions for one task (file order) and each sample's score."""
    from vlmkit.eval.harness import PREDICTIONS_FILE, SCORES_FILE, read_predictions, read_scores

    d = Path(run) / task_dir
    if not (d / PREDICTIONS_FILE).is_file():
        raise SystemExit(f"{d}: no {PREDICTIONS_FILE} (is this a `vlmkit eval --out` folder?)")
    return list(read_predictions(d / PREDICTIONS_FILE).values()), {s["id"]: s["score"] for s in read_scores(d / SCORES_FILE)}


def failures(args) -> None:
    from vlmkit.eval.tasks import load_samples, resolve

    task = resolve(args.task)
    by_id = {s.id: s for s in load_samples(task)}
    preds, scores = _run_task(args.run, task.name)
    rows = []
    for sl in args.slices.split(","):
        wrong = [p for p in preds if p["slice"] == sl and scores.get(p["id"], 1.0) < 1.0][:args.n]
        rows += [(sl, p) for p in wrong]
    cols = args.n
    fig, axes = plt.subplots(len(rows) // cols + bool(len(rows) % cols), cols, figsize=(3.2 * cols, 3.9 * (len(rows) // cols + 1)))
    for ax in axes.flat:
        ax.axis("off")
    for ax, (sl, p) in zip(axes.flat, rows):
        ax.imshow(Image.open(by_id[p["id"]].images[0]).convert("RGB"))
        text = f"[{sl}] {p['question']}\ntruth: {p['answers'][0]}\nmodel: {p['prediction']}"
        ax.set_title("\n".join(textwrap.fill(t, 38) for t in text.split("\n")), fontsize=7.5, loc="left")
    fig.tight_layout()
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out} ({len(rows)} failures)")


def photos(args) -> None:
    import numpy as np
    import skimage.data

    from vlmkit.api import load

    model = load(args.model)
    fig, axes = plt.subplots(2, len(PHOTOS) // 2, figsize=(4 * len(PHOTOS) // 2, 10.5))
    print("| photo | question | answer | s |\n|---|---|---|---:|")
    for ax, name in zip(axes.flat, PHOTOS):
        arr = getattr(skimage.data, name)()
        arr = (arr * 255).astype("uint8") if arr.dtype == bool else arr  # horse is a binary silhouette
        img = Image.fromarray(arr if arr.ndim == 3 else np.stack([arr] * 3, -1)).convert("RGB")
        lines = []
        for q in PHOTO_QUESTIONS:
            t = time.perf_counter()
            a = model.ask(img, q, max_new_tokens=32).strip()
            print(f"| {name} | {q} | {a} | {time.perf_counter() - t:.2f} |")
            shown = a if len(a) <= 90 else a[:87] + "..."  # a degenerate repetition would push the title over the photo
            lines.append(textwrap.fill(f"Q: {q} A: {shown}", 46))
        ax.imshow(img)
        ax.axis("off")
        ax.set_title(f"{name}\n" + "\n".join(lines), fontsize=7, loc="left")
    fig.tight_layout()
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")


def answers(args) -> None:
    """Is a slice's score reading the image or an answer prior? Per run and slice: the accuracy, how many distinct
    answers it gives, and its most frequent answers (count, and how many of those were right)."""
    from collections import Counter

    print("| slice | run | n | accuracy | distinct answers | most frequent answers (given / right) |")
    print("|---|---|---:|---:|---:|---|")
    for sl in args.slices.split(","):
        for run in args.runs:
            preds, scores = _run_task(run, args.task)
            preds = [p for p in preds if p["slice"] == sl]
            if not preds:
                raise SystemExit(f"{Path(run) / args.task}: no predictions in slice {sl!r}")
            norm = lambda a: a.strip().lower().rstrip(".")
            given = Counter(norm(p["prediction"]) for p in preds)
            right = Counter(norm(p["prediction"]) for p in preds if scores[p["id"]] >= 1.0)
            top = ", ".join(f"{a or '(empty)'} {c} / {right[a]}" for a, c in given.most_common(args.top))
            acc = sum(scores[p["id"]] for p in preds) / len(preds)
            print(f"| {sl} | {Path(run).name} | {len(preds)} | {acc:.2f} | {len(given)} | {top} |")


def boxes(args) -> None:
    """Do the predicted boxes follow the true ones? The harness's iou metric reports it (vlmkit.eval.metrics.boxes
    .placement: r of the centres and sizes, one axis at a time); this puts several runs side by side and plots it."""
    import numpy as np

    from vlmkit.eval.metrics import evaluate
    from vlmkit.eval.metrics.boxes import parse_box

    runs = [spec.split("=", 1) for spec in args.runs]
    fig, axes = plt.subplots(len(runs), 2, figsize=(7, 3.4 * len(runs)), squeeze=False)
    print("| run | questions | boxes | IoU ≥ 0.5 | mean IoU | r, centre x | r, centre y | r, width | r, height |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (label, run), row in zip(runs, axes):
        preds = [p for p in _run_task(run, args.task)[0] if p["slice"] == args.slice]
        res = evaluate("iou", [p["prediction"] or "" for p in preds], [p["answers"] for p in preds])
        ex = res.extras
        r = lambda k: f"{ex[k]:.2f}" if k in ex else "-"
        print(f"| {label} | {len(preds)} | {round(ex['boxed'] * len(preds))} | {res.score:.2f} | {ex['mean_iou']:.3f} "
              f"| {r('centre_r_x')} | {r('centre_r_y')} | {r('width_r')} | {r('height_r')} |")
        pairs = [(parse_box(p["answers"][0]), parse_box(p["prediction"] or "")) for p in preds]
        got = np.array([t + b for t, b in pairs if t and b], dtype=float).reshape(-1, 8)  # truth x1..y2, predicted x1..y2
        for ax, axis, name in zip(row, (0, 1), ("x", "y")):
            ax.scatter((got[:, axis] + got[:, axis + 2]) / 2, (got[:, 4 + axis] + got[:, 6 + axis]) / 2, s=10, alpha=0.6)
            ax.plot([0, 1000], [0, 1000], color="grey", lw=0.8, ls="--")
            ax.set(xlim=(0, 1000), ylim=(0, 1000), xlabel=f"true centre {name}", ylabel=f"predicted centre {name}")
            ax.set_title(f"{label}: centre {name}", fontsize=9)
            ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out}")


RELATION_CASES = ("above / below", "left / right, the earlier token row holds the left one",
                  "left / right, the earlier token row holds the right one", "left / right, one token row")
RELATION = re.compile(r"Is the (.+) (left of|right of|above|below) the (.+)\?")  # ShapesGenerator._spatial's form


def relation_case(question: str, objects: list[dict], image_size: int, grid: int) -> str | None:
    """Which RELATION_CASES a shapes relation question ("Is the red star left of the square?") falls in, from where
    its two shapes' centres lie in the model's grid x grid raster of visual tokens; None for other questions.
    A model that orders things by their place in the token sequence gets the second case right and the third wrong."""
    from vlmkit.data.shapes import _describe

    m = RELATION.fullmatch(question.strip())
    if not m:
        return None
    named = {_describe(o, objects): o for o in objects}
    a, rel, b = named[m.group(1)], m.group(2), named[m.group(3)]
    if rel in ("above", "below"):
        return RELATION_CASES[0]
    row = lambda o: int(o["center"][1] * grid // image_size)
    if row(a) == row(b):
        return RELATION_CASES[3]
    left, right = (a, b) if a["center"][0] < b["center"][0] else (b, a)
    return RELATION_CASES[1] if row(left) < row(right) else RELATION_CASES[2]


def relations(args) -> None:
    """Spatial relations split by where the two shapes fall in the token raster, per run: does the model answer
    "left of" from the shapes' columns or from their order in the sequence of visual tokens?"""
    import json

    scenes = {}
    for line in open(Path(args.worlds) / "truth.jsonl"):
        row = json.loads(line)
        if "objects" in row["truth"]:  # shape scenes (a visual-world task mixes in words and charts)
            scenes[row["id"]] = row["truth"]
    print("| run | " + " | ".join(RELATION_CASES) + " |")
    print("|---|" + "---:|" * len(RELATION_CASES))
    for run in args.runs:
        preds, scores = _run_task(run, args.task)
        got = {c: [0, 0] for c in RELATION_CASES}
        for p in preds:
            scene = scenes.get(p["id"].rsplit("-q", 1)[0])
            case = scene and relation_case(p["question"], scene["objects"], scene["size"][0], args.grid)
            if case:
                got[case][0] += scores[p["id"]] >= 1.0
                got[case][1] += 1
        print(f"| {Path(run).name} | " + " | ".join(f"{r} / {n}" for r, n in got.values()) + " |")


def _eval_rows(path: Path) -> list[dict]:
    from vlmkit.train.plot import read_metrics

    rows = [r for r in read_metrics(path)[1] if "eval/image_gain" in r]
    if not rows:
        raise SystemExit(f"{path}: no eval/image_gain rows (was eval.ablation_data set?)")
    return rows


def _chained(specs: list[str], read) -> list[tuple[str, list[dict]]]:
    """LABEL=METRICS.jsonl[@FIRST_STEP] specs: each run's rows (from `read`), steps shifted onto one axis."""
    runs = []
    for spec in specs:
        label, sep, path = spec.partition("=")
        path, at, step0 = path.partition("@")  # @N: the run continued another one from its step N
        if not sep or (at and not step0.isdigit()):
            raise SystemExit(f"{spec!r}: expected LABEL=METRICS.jsonl or LABEL=METRICS.jsonl@FIRST_STEP")
        runs.append((label, [dict(r, step=r["step"] + int(step0 or 0)) for r in read(Path(path))]))
    return runs


def curves(args) -> None:
    """Training loss (a moving mean over `--smooth` logged points) and the in-training shapes evaluation by slice."""
    from vlmkit.train.plot import moving_mean, read_metrics

    runs = _chained(args.runs, lambda p: sum(read_metrics(p), []))
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 3.8))
    for label, rows in runs:
        train = [r for r in rows if "loss" in r]
        loss_ax.plot([r["step"] for r in train], moving_mean([r["loss"] for r in train], args.smooth), label=label)
        evals = list({r["step"]: r for r in rows if "eval/accuracy" in r}.values())  # the last step may log twice
        for key in sorted({k for r in evals for k in r if k.startswith("eval/") and k not in ("eval/n", "eval/accuracy")}):
            acc_ax.plot([r["step"] for r in evals], [r[key] for r in evals], marker="o", label=f"{label}: {key[5:]}")
    loss_ax.set(title=f"training loss (mean of {args.smooth} logged steps)", xlabel="step", ylabel="nats / answer token")
    acc_ax.set(title="shapes val during training (24 questions a slice)", xlabel="step", ylim=(0, 1))
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out}")


def ablation(args) -> None:
    runs = _chained(args.runs, _eval_rows)
    fig, (gain, acc, norm) = plt.subplots(1, 3, figsize=(13, 3.8))
    for label, rows in runs:
        steps = [r["step"] for r in rows]
        gain.plot(steps, [r["eval/image_gain"] for r in rows], marker="o", label=label)
        acc.plot(steps, [r["eval/accuracy"] for r in rows], marker="o", label=label)
        norm.plot(steps, [r["eval/visual_norm"] for r in rows], marker="o", label=label)
    text_norm = runs[0][1][0]["eval/text_norm"]
    norm.axhline(text_norm, color="grey", ls="--", label=f"SmolLM2 text embeddings ({text_norm:.1f})")
    gain.axhline(0, color="grey", lw=0.8)
    gain.set(title="image gain: loss(shuffled images) - loss(own)", xlabel="stage-2 step", ylabel="nats / answer token")
    ns = sorted({r["eval/n"] for _, rows in runs for r in rows})  # runs may score different numbers of questions
    acc.set(title=f"shapes val accuracy ({' or '.join(map(str, ns))} questions)", xlabel="stage-2 step", ylim=(0, 1))
    norm.set(title="visual token norm", xlabel="stage-2 step", yscale="log")
    for ax in (gain, acc, norm):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("failures")
    f.add_argument("run")
    f.add_argument("--task", required=True)
    f.add_argument("--slices", required=True)
    f.add_argument("--n", type=int, default=4)
    f.add_argument("--out", required=True)
    f.set_defaults(func=failures)
    ph = sub.add_parser("photos")
    ph.add_argument("--model", default=None)
    ph.add_argument("--out", required=True)
    ph.set_defaults(func=photos)
    an = sub.add_parser("answers")
    an.add_argument("runs", nargs="+", help="eval run folders (vlmkit eval --out)")
    an.add_argument("--task", required=True, help="the task's folder in each run, e.g. worlds-test")
    an.add_argument("--slices", required=True)
    an.add_argument("--top", type=int, default=4)
    an.set_defaults(func=answers)
    ab = sub.add_parser("ablation")
    ab.add_argument("runs", nargs="+", help="LABEL=METRICS.jsonl[@FIRST_STEP], one per run")
    ab.add_argument("--out", required=True)
    ab.set_defaults(func=ablation)
    bx = sub.add_parser("boxes")
    bx.add_argument("runs", nargs="+", help="LABEL=EVAL_RUN_DIR, one per run (vlmkit eval --out)")
    bx.add_argument("--task", required=True, help="the task's folder in each run, e.g. worlds-test")
    bx.add_argument("--slice", default="grounding")
    bx.add_argument("--out", required=True)
    bx.set_defaults(func=boxes)
    rl = sub.add_parser("relations")
    rl.add_argument("runs", nargs="+", help="eval run folders (vlmkit eval --out) of a shapes task")
    rl.add_argument("--task", required=True, help="the task's folder in each run, e.g. shapes-val")
    rl.add_argument("--worlds", required=True, help="the scenes' folder, with truth.jsonl (data/shapes/val)")
    rl.add_argument("--grid", type=int, default=8, help="visual tokens per side of the model's raster (8 for vlmkit-smol)")
    rl.set_defaults(func=relations)
    cu = sub.add_parser("curves")
    cu.add_argument("runs", nargs="+", help="LABEL=METRICS.jsonl[@FIRST_STEP], one per run")
    cu.add_argument("--smooth", type=int, default=10)
    cu.add_argument("--out", required=True)
    cu.set_defaults(func=curves)
    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
