"""Training scenes where one kind of shape, or one colour, appears three or four times, with their counting turns.

vlmkit-smol counts whole scenes up to 8 well but answers "2" to "How many squares are there?" when there are three
(EXPERIMENTS.md, session 16): in scenes drawn from all 80 kinds such counts are rare (4% of the per-kind counting
turns are 3 or more). These scenes draw their 3 to 8 shapes from two shapes in two colours (ShapesConfig.few_kinds),
so most per-kind counts are 2 to 4. The scenes keep the training split (the same split keys as every shapes scene,
so no test layout can appear), and their conversations are scripts/make_counting_data.py's. Session 16's 100 LoRA
steps on them (recipes/experiments/vlmkit-smol-crowded-counting.toml) moved the answers' prior up, not the counts;
they are for a run in which the tower learns too (recipes/experiments/vlmkit-smol-e2e-grid.toml).

    .venv/bin/python scripts/make_crowded_counting_data.py data/shapes-crowded/train --n 2000
    # -> the scenes (images/, truth.jsonl, ...) and counting.jsonl in that folder
"""
import argparse
import sys
from pathlib import Path

from vlmkit.data.shapes import ShapesConfig, ShapesGenerator
from vlmkit.data.source import SyntheticSource
from vlmkit.data.writer import export

sys.path.insert(0, str(Path(__file__).parent))
import make_counting_data  # noqa: E402


def source(n: int, seed: int, size: int = 224) -> SyntheticSource:
    gen = ShapesGenerator(ShapesConfig(size=size, min_objects=3, few_kinds=2))
    return SyntheticSource("shapes-crowded", {gen.name: (gen, 1.0)}, split="train", seed=seed, n=n)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--seed", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    export(source(args.n, args.seed, args.size), args.out, progress=args.progress)
    make_counting_data.main(args.out)


if __name__ == "__main__":
    main()
