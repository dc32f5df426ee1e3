"""Explicit key maps from upstream checkpoints to vlmkit module names.

A key map is an ordered list of (regex, replacement); the first rule that
matches renames a key. A key no rule matches is an error, and
`load_strict` then rejects anything missing, unexpected or misshapen.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ..errors import ModelLoadError
from ..models.weights import read_safetensors

KeyMap = list[tuple[str, str]]


def read_hf_config(path: Path) -> dict:
    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{path}: cannot read config.json ({e})") from e


def read_hf_weights(path: Path) -> dict[str, torch.Tensor]:
    """model.safetensors, or every shard named by model.safetensors.index.json. Pickled .bin is refused."""
    single, index = path / "model.safetensors", path / "model.safetensors.index.json"
    if single.is_file():
        return read_safetensors(single)
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        out: dict[str, torch.Tensor] = {}
        for s in shards:
            out.update(read_safetensors(path / s))
        return out
    if list(path.glob("*.bin")):
        raise ModelLoadError(f"{path}: only pickled .bin weights found; vlmkit loads safetensors only (convert with save_pretrained)")
    raise ModelLoadError(f"{path}: no model.safetensors found")


def rename(tensors: dict[str, torch.Tensor], key_map: KeyMap, source: str) -> dict[str, torch.Tensor]:
    out, unmapped = {}, []
    compiled = [(re.compile(p), r) for p, r in key_map]
    for k, v in tensors.items():
        for pat, rep in compiled:
            if pat.match(k):
                new = pat.sub(rep, k, count=1)
                if new in out:
                    raise ModelLoadError(f"{source}: two checkpoint keys map to {new}")
                out[new] = v
                break
        else:
            unmapped.append(k)
    if unmapped:
        raise ModelLoadError(f"{source}: {len(unmapped)} checkpoint key(s) match no rule: {unmapped[:8]}")
    return out


def drop_tied_lm_head(tensors: dict[str, torch.Tensor], lm_model) -> dict[str, torch.Tensor]:
    """A tied LM stores lm_head once (as the embedding); accept a saved copy only if it is identical."""
    key, emb = "lm.model.lm_head.weight", "lm.model.model.embed_tokens.weight"
    tied = getattr(lm_model.config, "tie_word_embeddings", False)
    if tied and key in tensors:
        if emb in tensors and not torch.equal(tensors[key], tensors[emb]):
            raise ModelLoadError("config ties lm_head to the embeddings, but the checkpoint's lm_head differs")
        tensors = {k: v for k, v in tensors.items() if k != key}
    return tensors


def read_image_stats(path: Path, default_mean, default_std) -> tuple[tuple, tuple]:
    pp = path / "preprocessor_config.json"
    if pp.is_file():
        raw = json.loads(pp.read_text())
        return tuple(raw.get("image_mean", default_mean)), tuple(raw.get("image_std", default_std))
    return tuple(default_mean), tuple(default_std)


def load_tokenizer_if_any(path: Path):
    from transformers import AutoTokenizer

    if any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        return AutoTokenizer.from_pretrained(path)
    return None


def full_config(config_cls, d: dict) -> dict:
    """Fill the defaults transformers omitted when it saved the config."""
    from ..models.lm import hf_config_dict

    return hf_config_dict(config_cls(**d))


def full_text_config(d: dict) -> dict:
    from transformers import AutoConfig

    from ..models.lm import hf_config_dict

    d = dict(d)
    return hf_config_dict(AutoConfig.for_model(d.pop("model_type", "llama"), **d))
