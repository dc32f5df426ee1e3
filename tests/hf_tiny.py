"""Tiny random transformers models, built and saved by transformers itself, for parity tests."""
from __future__ import annotations

from pathlib import Path

import torch


def tiny_llama_config(vocab_size: int = 320, **kw):
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=vocab_size, max_position_embeddings=512,
                       pad_token_id=0, eos_token_id=1, bos_token_id=2, **kw)


def save_tiny_llava(path: Path, seed: int = 0) -> Path:
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(seed)
    vc = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                          image_size=56, patch_size=14, projection_dim=32)
    cfg = LlavaConfig(vision_config=vc, text_config=tiny_llama_config(), image_token_index=319, image_seq_length=16)
    model = LlavaForConditionalGeneration(cfg).eval()
    model.save_pretrained(path)
    return path


def save_tiny_idefics3(path: Path, seed: int = 0) -> Path:
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration

    torch.manual_seed(seed)
    cfg = Idefics3Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=4),
        text_config=tiny_llama_config().to_dict(), scale_factor=2, image_token_id=318,
    )
    model = Idefics3ForConditionalGeneration(cfg).eval()
    model.save_pretrained(path)
    return path
