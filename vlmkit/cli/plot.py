"""vlmkit plot RUN_DIR: loss and learning-rate curves (and eval metrics) from metrics.jsonl, as PNG."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("plot", help="plot a training run's loss, learning rate and eval curves as PNG")
    p.add_argument("run_dir", help="a run directory holding metrics.jsonl")
    p.add_argument("--out", default=None, help="folder for the PNGs (default: the run directory)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..train.plot import plot_run

    for path in plot_run(args.run_dir, args.out):
        print(path)
    return 0
