"""Importers for real checkpoint formats, each with an explicit, strict key map."""
from __future__ import annotations

from pathlib import Path


def load_hf_vlm(path: str | Path, model_type: str):
    """-> (VisionLanguageModel, tokenizer or None) for a transformers VLM directory."""
    path = Path(path)
    if model_type == "llava":
        from .llava import load_llava

        return load_llava(path)
    if model_type in ("idefics3", "smolvlm"):
        from .idefics3 import load_idefics3

        return load_idefics3(path)
    raise ValueError(f"no importer for model_type {model_type!r}")
