"""vlmkit export RUN/final --out weights/NAME [--dtype float16]: a trained model folder, ready to ship.

Copies config.json (and any tokenizer files) and rewrites model.safetensors in a smaller dtype.
Loading is dtype-agnostic (each tensor is cast to its parameter's dtype), so an fp16 export loads
into the usual fp32 model; fp16 halves the bytes committed with the repo at no measurable cost
in accuracy for these small towers (recorded in the file's metadata as stored_dtype).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
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
    from ..models.weights import read_safetensors, save_safetensors

    if not (src / "config.json").is_file() or not (src / "model.safetensors").is_file():
        raise ModelLoadError(f"{src} is not a model folder: it needs config.json and model.safetensors")
    if out.exists() and any(out.iterdir()):
        raise ModelLoadError(f"{out} exists and is not empty")
    out.parent.mkdir(parents=True, exist_ok=True)
    # Built in a hidden sibling and renamed into place, so that an interrupted export never leaves weights without
    # their config (or a config without its notice) where a model folder is expected.
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial"))
    try:
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
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        os.replace(tmp, out)  # an empty `out` is replaced too (rename(2) allows an empty target folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def run(args) -> int:
    out = export(Path(args.src), Path(args.out), args.dtype, args.notice)
    size = (out / "model.safetensors").stat().st_size
    print(f"wrote {out} ({size / 1e6:.1f} MB of {args.dtype} weights)")
    return 0
