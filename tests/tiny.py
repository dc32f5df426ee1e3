"""Tiny random vlmkit models for fast CPU tests (SmolLM2's tokenizer, a 2-layer random llama)."""
from __future__ import annotations

import functools

import torch

from vlmkit.api import VLM
from vlmkit.config import ConnectorConfig, LMConfig, VisionConfig, VLMConfig
from vlmkit.models.lm import LanguageModel, load_tokenizer
from vlmkit.models.vlm import VisionLanguageModel


def tiny_lm_config(vocab_size: int = 49152) -> dict:
    return dict(model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=vocab_size, max_position_embeddings=1024, tie_word_embeddings=True,
                bos_token_id=1, eos_token_id=2, pad_token_id=2,
                # a wide init makes attention mix context strongly, so a wrong mask or cache changes the output
                initializer_range=0.5)


def tiny_vlm_config(connector: str = "mlp2x_gelu", image_size: int = 32, **vision_kw) -> VLMConfig:
    return VLMConfig(
        vision=VisionConfig(image_size=image_size, patch_size=8, hidden_size=24, num_layers=2, num_heads=2, **vision_kw),
        connector=ConnectorConfig(kind=connector),
        lm=LMConfig(source="tiny", weights="checkpoint", hf_config=tiny_lm_config()),
        name="tiny",
    )


@functools.lru_cache(maxsize=1)
def smollm2_tokenizer():
    return load_tokenizer(None, LMConfig(source="smollm2"))


def tiny_vlm(seed: int = 0, **kw) -> VLM:
    torch.manual_seed(seed)
    cfg = tiny_vlm_config(**kw)
    model = VisionLanguageModel(cfg, lm=LanguageModel(cfg.lm))
    return VLM(model.eval(), smollm2_tokenizer())
