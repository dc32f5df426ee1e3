"""Gradient checkpointing on vlmkit-smol's real stage 2: peak memory and time per step, with and without.

    OMP_NUM_THREADS=1 .venv/bin/python bench/train/checkpointing.py    # writes checkpointing.md / checkpointing.json

Both runs are `recipes/vlmkit-smol-64.toml` (batch 16, conversations of up to 512 tokens, LoRA on every linear
layer of SmolLM2-135M, 64 visual tokens) from the shipped weights for a few steps, started at the same moment so
that they share the machine alike; each is its own process, so its peak RSS is its own. Needs the recipe's data
(`bash scripts/train_default_models.sh` makes it).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RECIPE = "recipes/vlmkit-smol-64.toml"


def overrides(out: Path, steps: int, checkpointing: bool) -> list[str]:
    return ["model.init=\"weights/vlmkit-smol\"", f"out_dir=\"{out}\"", f"train.max_steps={steps}", "train.log_every=1",
            "eval.data=\"\"", "eval.ablation_data=\"\"",
            "checkpoint.every=0", "data.num_workers=0", f"train.gradient_checkpointing={str(checkpointing).lower()}"]


def worker(out: Path, steps: int, checkpointing: bool) -> None:
    from vlmkit.train.config import load_config
    from vlmkit.train.loop import train

    cfg = load_config(ROOT / RECIPE, overrides(out, steps, checkpointing))
    train(cfg, progress=False)
    recs = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in l][1:]  # drop warm-up
    print("RESULT " + json.dumps({
        "checkpointing": checkpointing, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "s_per_step": sum(cfg.train.batch_size / r["samples_per_s"] for r in recs) / len(recs),
        "losses": [r["loss"] for r in recs]}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps per run; the first is warm-up")
    ap.add_argument("--worker", choices=("on", "off"), help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.chdir(ROOT)
    if args.worker:
        return worker(args.out, args.steps, args.worker == "on")
    tmp = Path(tempfile.mkdtemp(prefix="vlmkit-bench-ckpt-"))
    procs = {flag: subprocess.Popen([sys.executable, __file__, "--worker", flag, "--out", str(tmp / flag), "--steps",
                                     str(args.steps)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for flag in ("off", "on")}
    rows = []
    for flag, p in procs.items():
        out, err = p.communicate()
        line = next((l for l in out.splitlines() if l.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"run with checkpointing {flag} failed:\n{err[-3000:]}")
        rows.append(json.loads(line[7:]))
    off, on = rows
    cmd = f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '?')} .venv/bin/python bench/train/checkpointing.py --steps {args.steps}"
    lines = ["# Gradient checkpointing on vlmkit-smol's stage 2 (CPU)", "", f"Command: `{cmd}`  ",
             f"`{RECIPE}` from `weights/vlmkit-smol` (batch 16, up to 512 tokens, LoRA r = 16 on every linear layer), "
             f"{args.steps - 1} timed steps after 1 warm-up, both runs at once on {os.cpu_count()} CPU cores, torch "
             f"{__import__('torch').__version__}, {time.strftime('%Y-%m-%d')}.", "",
             "| train.gradient_checkpointing | peak RSS (MB) | s / step | losses of the timed steps |", "|---|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {str(r['checkpointing']).lower()} | {r['peak_rss_mb']:.0f} | {r['s_per_step']:.1f} | "
                     f"{', '.join(f'{x:.4f}' for x in r['losses'])} |")
    lines += ["", f"Checkpointing keeps {on['peak_rss_mb'] / off['peak_rss_mb']:.2f}x the peak memory "
              f"({off['peak_rss_mb'] - on['peak_rss_mb']:.0f} MB less) at {on['s_per_step'] / off['s_per_step']:.2f}x the time per step; "
              "the losses are the same batches' (same seed and data order)."]
    (HERE / "checkpointing.md").write_text("\n".join(lines) + "\n")
    (HERE / "checkpointing.json").write_text(json.dumps({"command": cmd, "rows": rows}, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
