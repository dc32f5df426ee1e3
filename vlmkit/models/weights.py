"""Loud weight I/O: atomic safetensors writes and strict, shape-checked loads."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import ModelLoadError
from ..files import atomic_path


def expected_state(module: nn.Module, skip_prefixes: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """The module's state dict with tied duplicates removed (a tied lm_head is stored once)."""
    out, seen = {}, set()
    for k, v in module.state_dict().items():
        if k.startswith(skip_prefixes):
            continue
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape))
        if v.numel() and key in seen:
            continue
        seen.add(key)
        out[k] = v
    return out


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict | None = None) -> None:
    """Write to a temporary file in the same folder, then rename: a crash never leaves half a file."""
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)


def load_strict(module: nn.Module, tensors: dict[str, torch.Tensor], skip_prefixes: tuple[str, ...] = (), source: str = "") -> None:
    """Copy `tensors` into `module`; any missing, unexpected or misshapen tensor is an error naming it."""
    expected = expected_state(module, skip_prefixes)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    bad_shape = [
        f"{k}: checkpoint {tuple(tensors[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in tensors and tuple(tensors[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensor(s): {_head(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} tensor(s): {_head(unexpected)}")
    if bad_shape:
        problems.append(f"wrong shape: {_head(bad_shape)}")
    if problems:
        raise ModelLoadError(f"weights in {source or 'checkpoint'} do not match the model: " + "; ".join(problems))
    with torch.no_grad():
        params = dict(module.named_parameters())
        params.update(dict(module.named_buffers()))
        for k, v in tensors.items():
            params[k].copy_(v.to(params[k].dtype))


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises several types for truncated/corrupt files
        raise ModelLoadError(f"cannot read weights {path}: {e}") from e


def read_model_dir_config(path: Path, config_name: str = "config.json", weights_name: str = "model.safetensors") -> tuple[Path, object]:
    """Check that `path` is a model directory and parse its config JSON -> (config file, parsed JSON)."""
    import json

    if not path.is_dir():
        raise ModelLoadError(f"model directory not found: {path}")
    cfg_file, weights = path / config_name, path / weights_name
    if not cfg_file.is_file() or not weights.is_file():
        raise ModelLoadError(f"not a vlmkit model directory (needs {config_name} and {weights_name}): {path}")
    try:
        return cfg_file, json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{cfg_file} is not valid JSON: {e}") from e


def _head(items: list[str], n: int = 8) -> str:
    return ", ".join(items[:n]) + (f", ... (+{len(items) - n} more)" if len(items) > n else "")
