"""Data generation speed: images per CPU-second for each generator, against decoding the same images as PNG.

The reference is the alternative to generating on the fly: reading a pre-rendered
dataset (PNG decode of the very same images, from memory, so disk speed is out).
Both are timed in CPU seconds of this one process (time.process_time), which
counts one core and stays fair while other jobs share the machine.

    OMP_NUM_THREADS=1 .venv/bin/python bench/data/run.py          # writes bench/data/results.md and results.png
"""
from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CASES = [  # (label, source, split, augment) -- None keeps the generator's default preset
    ("shapes (light aug)", "shapes", "train", None),
    ("shapes (light aug), test split", "shapes", "test", None),
    ("shapes (no aug)", "shapes", "train", "none"),
    ("text (light aug)", "text", "train", None),
    ("charts (light aug)", "charts", "train", None),
    ("receipts 384x640 (photo aug)", "receipts", "train", None),
    ("worlds mixture", "worlds", "train", None),
]


def measure(name: str, split: str, augment, n: int) -> dict:
    from PIL import Image

    from vlmkit.data import make_source

    src = make_source(name, split, seed=0, n=n, augment=augment)
    src[0]  # warm caches (fonts) outside the timing
    t0 = time.process_time()
    images = [src[i].image for i in range(n)]
    gen = time.process_time() - t0
    blobs = []
    t0 = time.process_time()
    for im in images:
        buf = io.BytesIO()
        im.save(buf, format="PNG", compress_level=3)  # what `vlmkit data make` writes
        blobs.append(buf.getvalue())
    enc = time.process_time() - t0
    t0 = time.process_time()
    for b in blobs:
        Image.open(io.BytesIO(b)).convert("RGB").load()
    dec = time.process_time() - t0
    return {"gen": n / gen, "enc": n / enc, "dec": n / dec}


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r[0] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(rows) + 1.2))
    y = range(len(rows))
    ax.barh([i + 0.2 for i in y], [r[1]["gen"] for r in rows], height=0.4, label="generate (vlmkit.data)")
    ax.barh([i - 0.2 for i in y], [r[1]["dec"] for r in rows], height=0.4, label="decode the same PNGs (reference)")
    ax.axvline(200, color="k", ls="--", lw=1, label="target: 200 shapes/s per core")
    ax.set_yticks(list(y), labels)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("images per CPU-second (one core)")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300, help="images per case (receipts use n/3)")
    args = ap.parse_args()
    rows = []
    for label, name, split, augment in CASES:
        n = max(20, args.n // 3) if name == "receipts" else args.n
        r = measure(name, split, augment, n)
        rows.append((label, r, n))
        print(f"{label:<34} generate {r['gen']:7.0f}/s  png encode {r['enc']:7.0f}/s  png decode {r['dec']:7.0f}/s", flush=True)
    cmd = f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} .venv/bin/python bench/data/run.py" + \
          (f" --n {args.n}" if args.n != 300 else "")
    lines = [
        "# Data generation speed: generating on the fly vs decoding the same images as PNG",
        "",
        f"Command: `{cmd}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores (shared), Python {sys.version.split()[0]}. "
        "Rates are images per CPU-second of one process (time.process_time), so they stay fair on a shared machine. "
        "Default image sizes (224 px; receipts 384x640), seed 0. The target is > 200 shape images/s per core.",
        "",
        "| case | n | generate (img/s) | decode same PNGs (img/s, reference) | ratio generate / decode | PNG encode (img/s) |",
        "|---|---|---|---|---|---|",
    ]
    for label, r, n in rows:
        lines.append(f"| {label} | {n} | {r['gen']:.0f} | {r['dec']:.0f} | {r['gen'] / r['dec']:.2f} | {r['enc']:.0f} |")
    lines += ["", "![throughput](results.png)", ""]
    (HERE / "results.md").write_text("\n".join(lines))
    plot([(label, r) for label, r, _ in rows], HERE / "results.png")
    print(f"wrote {HERE / 'results.md'} and results.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
