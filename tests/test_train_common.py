"""Shared fixtures for the training tests: a tiny VLM directory and tiny image datasets on disk."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 220), "yellow": (230, 220, 40)}


def save_tiny_vlm(path: Path, seed: int = 0, connector: str = "mlp2x_gelu") -> Path:
    """A 2-layer random llama + tiny ViT, with SmolLM2's tokenizer saved beside it."""
    from tiny import smollm2_tokenizer, tiny_vlm_config

    from vlmkit.models.lm import LanguageModel
    from vlmkit.models.vlm import VisionLanguageModel

    torch.manual_seed(seed)
    cfg = tiny_vlm_config(connector=connector)
    model = VisionLanguageModel(cfg, lm=LanguageModel(cfg.lm))
    model.save_pretrained(path, tokenizer=smollm2_tokenizer())
    return path


def make_images(folder: Path, size: int = 32) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, rgb in COLOURS.items():
        Image.new("RGB", (size, size), rgb).save(folder / f"{name}.png")
        out[name] = f"images/{name}.png"
    return out


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_conversations(root: Path, n: int = 16) -> Path:
    imgs = make_images(root / "images")
    names = list(COLOURS)
    rows = [{"id": f"c{i}", "image": imgs[names[i % 4]],
             "conversations": [{"from": "human", "value": "<image>\nWhat colour is this?"},
                               {"from": "gpt", "value": names[i % 4]}]} for i in range(n)]
    return write_jsonl(root / "conversations.jsonl", rows)


def make_captions(root: Path, n: int = 16) -> Path:
    imgs = make_images(root / "images")
    names = list(COLOURS)
    rows = [{"id": f"p{i}", "image": imgs[names[i % 4]], "text": f"a {names[i % 4]} square"} for i in range(n)]
    return write_jsonl(root / "captions.jsonl", rows)


def vlm_config(tmp: Path, stage: str = "instruct", **sections):
    """A TrainConfig for the tiny VLM on the colour conversations."""
    from vlmkit.train.config import from_dict

    model_dir = tmp / "tiny-vlm"
    if not model_dir.exists():
        save_tiny_vlm(model_dir)
    data = tmp / "data" / "conversations.jsonl"
    if not data.exists():
        make_conversations(tmp / "data")
    raw = {"stage": stage, "out_dir": str(tmp / "run"), "model": {"init": str(model_dir)},
           "data": {"train": [str(data)]}, "train": {"batch_size": 4, "lr": 1e-3, "max_steps": 4}}
    for k, v in sections.items():
        raw.setdefault(k, {}).update(v) if isinstance(v, dict) else raw.__setitem__(k, v)
    return from_dict(raw)
