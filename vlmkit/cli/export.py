"""vlmkit export RUN/final --out weights/NAME [--dtype float16]: a trained model folder, ready to ship.

Copies config.json (and any tokenizer files) and rewrites model.safetensors in a smaller dtype.
Loading is dtype-agnostic (each tensor is cast to its parameter's dtype), so an fp16 export loads
into the usual fp32 model; fp16 halves the bytes committed with the repo at no measurable cost
in accuracy for these small towers (recorded in the file's metadata as stored_dtype).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

DTYPES = ("float16", "bfloat16", "float32")
COPIED = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
          "vocab.json", "merges.txt")


def register(sub) -> None:
    p = sub.add_parser("export", help="copy a trained model folder with its weights cast to a smaller dtype")
    p.add_argument("src", help="model folder (config.json + model.safetensors), e.g. runs/NAME/final")
    p.add_argument("--out", required=True, help="destination folder (must not exist, or be empty)")
    p.add_argument("--dtype", choices=DTYPES, default="float16")
    p.add_argument("--notice", default=None,
                   help="a warning saved in config.json that `vlmkit demo` and `vlmkit ask` print (\"\" clears it)")
    p.set_defaults(func=run)


def export(src: Path, out: Path, dtype: str = "float16", notice: str | None = None) -> Path:
    import torch

    from ..errors import ModelLoadError
    from ..files import atomic_dir
    from ..models.weights import read_safetensors, save_safetensors

    if not (src / "config.json").is_file() or not (src / "model.safetensors").is_file():
        raise ModelLoadError(f"{src} is not a model folder: it needs config.json and model.safetensors")
    if out.exists() and any(out.iterdir()):
        raise ModelLoadError(f"{out} exists and is not empty")
    # built beside `out` and renamed into place: an interrupted export never leaves weights without their config
    # (or a config without its notice) where a model folder is expected
    with atomic_dir(out) as tmp:
        want = getattr(torch, dtype)
        tensors = {k: (v.to(want) if v.is_floating_point() else v)
                   for k, v in read_safetensors(src / "model.safetensors").items()}
        save_safetensors(tensors, tmp / "model.safetensors", metadata={"format": "pt", "vlmkit": "1", "stored_dtype": dtype})
        for name in COPIED:
            if (src / name).is_file():
                shutil.copyfile(src / name, tmp / name)
        if notice is not None:
            cfg = json.loads((tmp / "config.json").read_text())
            cfg["notice"] = notice
            (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return out


def run(args) -> int:
    out = export(Path(args.src), Path(args.out), args.dtype, args.notice)
    size = (out / "model.safetensors").stat().st_size
    print(f"wrote {out} ({size / 1e6:.1f} MB of {args.dtype} weights)")
    return 0
