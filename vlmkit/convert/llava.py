"""HF LLaVA (`LlavaForConditionalGeneration`) -> VisionLanguageModel.

Follows transformers' modeling_llava: CLIP tower, hidden_states[vision_feature_layer],
CLS dropped for the "default" strategy, projector linear_1 -> act -> linear_2.
Both the hub layout (language_model.model.*, vision_tower.vision_model.*) and
transformers 5's (model.language_model.*, model.vision_tower.*) are mapped.
"""
from __future__ import annotations

from pathlib import Path

from ..config import ConnectorConfig, LMConfig, VisionConfig, VLMConfig
from ..errors import ModelLoadError
from ..models.lm import LanguageModel
from ..models.vlm import VisionLanguageModel
from ..models.weights import load_strict
from .common import drop_tied_lm_head, full_config, full_text_config, load_tokenizer_if_any, read_hf_config, read_hf_weights, read_image_stats, rename

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

KEY_MAP = [
    (r"^(model\.)?language_model\.model\.", "lm.model.model."),
    (r"^(model\.)?language_model\.lm_head\.", "lm.model.lm_head."),
    (r"^model\.language_model\.", "lm.model.model."),
    (r"^lm_head\.", "lm.model.lm_head."),
    (r"^(model\.)?vision_tower\.(vision_model\.)?", "vision.model."),
    (r"^(model\.)?multi_modal_projector\.", "connector."),
]


def config_from_hf(path: Path, raw: dict) -> VLMConfig:
    layer = raw.get("vision_feature_layer", -2)
    if not isinstance(layer, int):
        raise ModelLoadError(f"{path}: multi-layer vision_feature_layer {layer} is not supported")
    strategy = raw.get("vision_feature_select_strategy", "default")
    from transformers import CLIPVisionConfig

    vc = raw["vision_config"]
    if vc.get("model_type", "clip_vision_model") not in ("clip_vision_model",):
        raise ModelLoadError(f"{path}: LLaVA with a {vc.get('model_type')} tower is not supported yet")
    vc = full_config(CLIPVisionConfig, vc)
    mean, std = read_image_stats(path, CLIP_MEAN, CLIP_STD)
    tc = full_text_config(raw["text_config"])
    return VLMConfig(
        vision=VisionConfig(kind="hf_clip", hf_config=vc, feature_layer=layer, keep_cls=strategy == "full", image_mean=mean, image_std=std),
        connector=ConnectorConfig(kind="mlp2x_gelu", bias=raw.get("multimodal_projector_bias", True),
                                  act=raw.get("projector_hidden_act", "gelu"), hidden_dim=tc["hidden_size"]),
        lm=LMConfig(source=str(path), weights="checkpoint", hf_config=tc),
        image_token_id=raw.get("image_token_index", raw.get("image_token_id", 32000)),
        name=path.name,
    )


def load_llava(path: Path):
    raw = read_hf_config(path)
    cfg = config_from_hf(path, raw)
    model = VisionLanguageModel(cfg, lm=LanguageModel(cfg.lm))
    tensors = rename(read_hf_weights(path), KEY_MAP, str(path))
    load_strict(model, drop_tied_lm_head(tensors, model.lm.model), source=str(path))
    return model.eval(), load_tokenizer_if_any(path)
