"""HF Idefics3 / SmolVLM (`Idefics3ForConditionalGeneration`) -> VisionLanguageModel.

Follows transformers' modeling_idefics3: the SigLIP-style tower's final (post-LN)
output, pixel shuffle by `scale_factor`, then a bias-free linear projection.
Processor parity (image splitting, <row_i_col_j> tokens) lives in processing/.
"""
from __future__ import annotations

from pathlib import Path

from ..config import ConnectorConfig, LMConfig, VisionConfig, VLMConfig
from ..models.lm import LanguageModel
from ..models.vlm import VisionLanguageModel
from ..models.weights import load_strict
from .common import drop_tied_lm_head, full_config, full_text_config, load_tokenizer_if_any, read_hf_config, read_hf_weights, read_image_stats, rename

KEY_MAP = [
    (r"^model\.text_model\.", "lm.model.model."),
    (r"^lm_head\.", "lm.model.lm_head."),
    (r"^model\.vision_model\.", "vision.model."),
    (r"^model\.connector\.modality_projection\.proj\.", "connector.proj."),
]


def config_from_hf(path: Path, raw: dict) -> VLMConfig:
    from transformers.models.idefics3.configuration_idefics3 import Idefics3VisionConfig

    vc = full_config(Idefics3VisionConfig, raw["vision_config"])
    mean, std = read_image_stats(path, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    return VLMConfig(
        vision=VisionConfig(kind="hf_idefics3", hf_config=vc, feature_layer=None, image_mean=mean, image_std=std),
        connector=ConnectorConfig(kind="pixel_shuffle", scale_factor=raw.get("scale_factor", 2), bias=False),
        lm=LMConfig(source=str(path), weights="checkpoint", hf_config=full_text_config(raw["text_config"])),
        image_token_id=raw.get("image_token_id", 128257),
        name=path.name,
    )


def load_idefics3(path: Path):
    raw = read_hf_config(path)
    cfg = config_from_hf(path, raw)
    model = VisionLanguageModel(cfg, lm=LanguageModel(cfg.lm))
    tensors = rename(read_hf_weights(path), KEY_MAP, str(path))
    load_strict(model, drop_tied_lm_head(tensors, model.lm.model), source=str(path))
    return model.eval(), load_tokenizer_if_any(path)
