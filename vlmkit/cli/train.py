"""vlmkit train CONFIG.toml [--set train.lr=1e-4 ...] [--resume]

Under torchrun every process runs this same command:
    torchrun --nproc_per_node 2 -m vlmkit.train CONFIG.toml
"""
from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("train", help="train a dual encoder (contrastive) or a VLM (align, instruct) from a TOML/YAML config")
    p.add_argument("config", help="training config (.toml, .yaml or .json); see recipes/")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.lr=1e-4 --set lora.enabled=true (repeatable)")
    p.add_argument("--out", default=None, help="run directory (overrides out_dir)")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's latest checkpoint")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="show a progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..train.config import load_config
    from ..train.loop import train

    overrides = list(args.overrides) + ([f"out_dir={_toml_str(args.out)}"] if args.out else [])
    cfg = load_config(args.config, overrides)
    result = train(cfg, resume=args.resume, progress=args.progress)
    s = result.summary
    if s.get("final"):
        skipped = ", ".join(f"{k} {v}" for k, v in sorted(s["skipped"].items())) or "none"
        loss = f"{s['last_loss']:.4f}" if s["last_loss"] is not None else "n/a"
        print(f"trained {s['steps']} steps on {s['samples']} samples (final loss {loss}); "
              f"skipped samples: {skipped}; empty steps: {s['empty_steps']}")
        print(f"model: {s['final']}    curves: vlmkit plot {result.run_dir}")
    return 0


def _toml_str(s: str) -> str:
    import json

    return json.dumps(s)  # a JSON string is a valid TOML basic string
