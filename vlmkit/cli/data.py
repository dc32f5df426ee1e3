"""vlmkit data make NAME --split S --n N --seed K --out DIR | vlmkit data preview | vlmkit data list"""
from __future__ import annotations

import argparse
import shlex
import sys


def register(sub) -> None:
    from ..data import AUGMENT_PRESETS, SOURCES, SPLITS

    p = sub.add_parser("data", help="make training and evaluation data (generated worlds, easy-vqa, Fashion-MNIST, digits)")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    m = dsub.add_parser("make", help="write a split of a source to DIR in the shared JSONL formats, with task.json")
    m.add_argument("name", choices=SOURCES, metavar="NAME", help=" | ".join(SOURCES))
    m.add_argument("--split", choices=SPLITS, default="train")
    m.add_argument("--n", type=int, default=None, help="number of images (default: 1000 generated, or the whole split)")
    m.add_argument("--seed", type=int, default=0, help="chooses the samples; never moves content between splits")
    m.add_argument("--out", required=True, help="output folder (must be empty, or a previous export with --overwrite)")
    m.add_argument("--size", type=int, default=None, help="image side for shapes/text/charts (224), page width for receipts (384)")
    m.add_argument("--augment", choices=list(AUGMENT_PRESETS), default=None,
                   help="augmentation preset (default: light for worlds, photo for receipts)")
    m.add_argument("--wrong-total-rate", type=float, default=0.0,
                   help="receipts: fraction printed with a deliberately wrong total (recorded in truth.jsonl)")
    m.add_argument("--overwrite", action="store_true", help="replace a previous export in --out")
    m.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="show a progress bar")
    m.set_defaults(func=run_make)

    v = dsub.add_parser("preview", help="save a PNG contact sheet with examples of every source")
    v.add_argument("--out", default="docs/images/data_examples.png")
    v.add_argument("--per-row", type=int, default=6)
    v.add_argument("--seed", type=int, default=0)
    v.set_defaults(func=run_preview)

    ls = dsub.add_parser("list", help="list the sources, their slices and split sizes")
    ls.set_defaults(func=run_list)


def run_make(args) -> int:
    from ..data import DataError, export, make_source

    if args.n is not None and args.n < 1:
        raise DataError(f"--n must be at least 1, not {args.n}")
    if args.size is not None and not 16 <= args.size <= 4096:
        raise DataError(f"--size must be within 16..4096, not {args.size}")
    src = make_source(args.name, split=args.split, seed=args.seed, n=args.n, size=args.size, augment=args.augment,
                      wrong_total_rate=args.wrong_total_rate)
    command = "vlmkit " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv and sys.argv[0].endswith("vlmkit") else None
    manifest = export(src, args.out, overwrite=args.overwrite, progress=args.progress,
                      meta={"command": command} if command else None)
    slices = ", ".join(f"{k} {v}" for k, v in manifest["counts"]["slices"].items())
    print(f"wrote {manifest['counts']['images']} images and {manifest['counts']['eval']} eval questions ({slices}) to {args.out}")
    print(f"evaluate with: vlmkit eval --model MODEL --tasks {args.out}/task.json")
    return 0


def run_preview(args) -> int:
    from ..data.preview import save_contact_sheet

    path = save_contact_sheet(args.out, per_row=args.per_row, seed=args.seed)
    print(f"wrote {path}")
    return 0


def run_list(args) -> int:
    from ..data import FIXED, DataError, make_source

    for name in ("shapes", "text", "charts", "receipts", "worlds") + FIXED:
        try:
            sizes = {s: len(make_source(name, split=s)) for s in ("train", "val", "test")} if name in FIXED else None
            src = make_source(name, n=1)
            size_note = ", ".join(f"{k} {v}" for k, v in sizes.items()) if sizes else "generated: any n"
            print(f"{name:<14} slices: {', '.join(src.slices):<44} {size_note}")
        except DataError as e:
            print(f"{name:<14} unavailable: {e}")
    return 0
