"""Fit a box head (vlmkit/models/box_head.py) onto a trained VLM, leaving its other weights as they are.

vlmkit-smol writes boxes in the right row and a random column: its LM reads the visual tokens in raster order and
never learned the column (EXPERIMENTS.md, sessions 13 to 17). The head takes over the coordinates: when the LM writes
`<box>`, the head reads the LM's state there, the question's words, the tower's 16 x 16 patches and the LM's states
at the visual tokens, and writes "x1,y1,x2,y2</box>". The VLM runs once over the grounding conversations to collect what the head reads (cached in
--cache as safetensors, so a second fit skips it); the head then trains on that alone.

    .venv/bin/python scripts/fit_box_head.py runs/vlmkit-smol-abstain-keep/final --train data/shapes/train/grounding.jsonl \
        --images 3000 --val data/shapes/val/boxes.jsonl --cache runs/box-head-cache --out runs/vlmkit-smol-boxes

After the LM or the tower changes (a LoRA stage), --refit trains the model's own head further on features collected
anew (the cache is keyed by the model's weights):

    .venv/bin/python scripts/fit_box_head.py runs/NEW/final --refit --train data/shapes/train/grounding.jsonl \
        data/shapes/train/spatial-grounded.jsonl --images 1000 --steps 2000 --val data/shapes/val/boxes.jsonl ...

--train takes LLaVA conversations whose replies are `<box>x1,y1,x2,y2</box>` (scripts/make_grounding_data.py);
--val takes those or an evaluation task's rows ({question, answers}). Never pass a test split.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def read_rows(path: Path, limit: int) -> list[dict]:
    """The first `limit` records (0: all) of a JSONL or JSON list; any unreadable record stops the script (a dropped row would go unnoticed)."""
    from vlmkit.train.data import read_json_records

    records = read_json_records(path)
    if records.bad_lines:
        raise SystemExit(f"{path}: {sum(records.bad_lines.values())} records are not JSON objects")
    return records.rows[:limit] if limit else records.rows


def model_key(folder: str) -> str:
    """Which weights the features came from: they are the LM's states, so a changed LM must not reuse them."""
    import hashlib

    st = (Path(folder) / "model.safetensors").stat()
    return hashlib.sha256(f"{Path(folder).resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:10]


def features(vlm, path: Path, limit: int, cache: Path | None, name: str, progress: bool, model: str) -> dict:
    from vlmkit.models.weights import read_safetensors, save_safetensors
    from vlmkit.train.box_head import collect

    key = cache / f"{name}-{path.parent.name}-{path.stem}-{limit}-{model_key(model)}.safetensors" if cache else None
    if key is not None and key.is_file():
        print(f"{name}: features from {key}")
        return read_safetensors(key)
    data = collect(vlm.model, vlm.tokenizer, vlm.image_processor, read_rows(path, limit), path.parent, progress=progress)
    print(f"{name}: {len(data['box'])} boxes over {len(data['patches'])} images ({int(data['skipped'])} rows skipped)")
    if key is not None:
        key.parent.mkdir(parents=True, exist_ok=True)
        save_safetensors({k: v.contiguous() for k, v in data.items()}, key)
    return data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a vlmkit model folder (weights/vlmkit-smol)")
    ap.add_argument("--train", type=Path, nargs="+", required=True, help="conversations with box answers (JSONL)")
    ap.add_argument("--images", type=int, default=3000, help="rows of each --train file to read (0: all)")
    ap.add_argument("--val", type=Path, nargs="+", help="held-out rows with box answers, reported every --every steps")
    ap.add_argument("--refit", action="store_true",
                    help="start from the model's own head (after the LM or the tower changed) instead of a new one")
    ap.add_argument("--out", type=Path, required=True, help="model folder to write: the VLM with its box head")
    ap.add_argument("--cache", type=Path, help="folder for the collected features")
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--width", type=int, default=128, help="the head's width (BoxHeadConfig.width)")
    ap.add_argument("--patch-layers", type=int, default=0, help="self-attention layers over the patches (BoxHeadConfig)")
    ap.add_argument("--every", type=int, default=500, help="steps between reports")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    args = ap.parse_args()

    import vlmkit
    from vlmkit.config import BoxHeadConfig
    from vlmkit.models.box_head import BoxHead
    from vlmkit.train.box_head import fit, merge

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    vlm = vlmkit.load(args.model)
    model = vlm.model
    if args.refit != (model.box_head is not None):
        raise SystemExit(f"{args.model} already has a box head: pass --refit to train it further" if model.box_head
                         else f"{args.model} has no box head to --refit")
    if not args.refit:
        model.cfg.box_head = BoxHeadConfig(width=args.width, patch_layers=args.patch_layers)
        model.cfg.__post_init__()  # derives the head's sizes from the LM and the tower
        model.box_head = BoxHead(model.cfg.box_head)
    model.box_head.float()  # an fp16 export's head trains in fp32
    train = merge([features(vlm, p, args.images, args.cache, "train", args.progress, args.model) for p in args.train])
    val = merge([features(vlm, p, 0, args.cache, "val", args.progress, args.model) for p in args.val]) if args.val else None

    args.out.mkdir(parents=True, exist_ok=True)
    metrics = args.out / "box_head_metrics.jsonl"
    metrics.write_text("")

    def log(record: dict) -> None:
        with open(metrics, "a") as f:
            f.write(json.dumps(record) + "\n")

    # the question's words through the LM's own embedding table, read and never trained
    fit(model.box_head, train, lambda ids: model.lm.embed_tokens(ids).detach(), args.steps, args.batch_size, args.lr,
        val=val, every=args.every, seed=args.seed, log=log, progress=args.progress)
    model.save_pretrained(args.out, tokenizer=vlm.tokenizer)
    print(f"wrote {args.out} (metrics: {metrics})")


if __name__ == "__main__":
    main()
