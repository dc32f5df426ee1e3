"""HF CLIP / SigLIP vision towers from a local directory -> VisionTower.

Accepts a full dual-encoder checkpoint (CLIPModel, SiglipModel: the text tower's
keys are named and skipped on purpose) or a vision-only one (CLIPVisionModel,
SiglipVisionModel). Any other leftover key is an error.
"""
from __future__ import annotations

import re
from pathlib import Path

from ..config import VisionConfig
from ..errors import ModelLoadError
from ..models.vision import VisionTower
from ..models.weights import load_strict
from .common import full_config, read_hf_config, read_hf_weights, read_image_stats, rename

# model_type -> (our tower kind, whether the config nests a vision_config)
KINDS = {
    "clip": ("hf_clip", True),
    "clip_vision_model": ("hf_clip", False),
    "siglip": ("hf_siglip", True),
    "siglip_vision_model": ("hf_siglip", False),
}
KEY_MAP = [(r"^vision_model\.", "model."), (r"^", "model.")]
OTHER_TOWER = re.compile(r"^(text_model\.|text_projection\.|visual_projection\.|logit_scale$|logit_bias$)")
CLIP_STATS = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


def vision_config_from_hf(path: str | Path, feature_layer: int | None = -2, keep_cls: bool = False) -> VisionConfig:
    path = Path(path)
    raw = read_hf_config(path)
    model_type = raw.get("model_type")
    if model_type not in KINDS:
        raise ModelLoadError(f"{path}: model_type {model_type!r} is not a CLIP or SigLIP checkpoint")
    kind, nested = KINDS[model_type]
    vc = raw.get("vision_config", {}) if nested else raw
    if kind == "hf_clip":
        from transformers import CLIPVisionConfig as cfg_cls

        mean, std = read_image_stats(path, *CLIP_STATS)
    else:
        from transformers import SiglipVisionConfig as cfg_cls

        mean, std = read_image_stats(path, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    vc = {k: v for k, v in vc.items() if k != "model_type"}
    return VisionConfig(kind=kind, hf_config=full_config(cfg_cls, vc), feature_layer=feature_layer, keep_cls=keep_cls,
                        image_mean=mean, image_std=std)


def load_hf_vision_weights(tower: VisionTower, path: str | Path) -> VisionTower:
    path = Path(path)
    tensors = {k: v for k, v in read_hf_weights(path).items() if not OTHER_TOWER.match(k)}
    load_strict(tower, rename(tensors, KEY_MAP, str(path)), source=str(path))
    return tower


def load_hf_vision_tower(path: str | Path, feature_layer: int | None = -2, keep_cls: bool = False) -> VisionTower:
    """A CLIP/SigLIP checkpoint directory -> a VisionTower with its weights, strictly loaded."""
    tower = VisionTower(vision_config_from_hf(path, feature_layer, keep_cls))
    return load_hf_vision_weights(tower, path).eval()
