"""Stage building: vision_init across resolutions, and the chat template a model carries."""
from __future__ import annotations

import pytest
import torch
from test_train_common import save_tiny_vlm, vlm_config

from vlmkit.errors import ModelLoadError


def _tiny_model(**vision_kw):
    from tiny import tiny_vlm_config

    from vlmkit.models.lm import LanguageModel
    from vlmkit.models.vlm import VisionLanguageModel

    cfg = tiny_vlm_config(**vision_kw)
    return VisionLanguageModel(cfg, lm=LanguageModel(cfg.lm))


def test_vision_init_resamples_position_embeddings(tmp_path):
    """A tower trained at 32 px initialises one at 64 px: same weights, position grid resampled."""
    from vlmkit.models.vlm import VisionLanguageModel
    from vlmkit.models.vision import resize_grid_embed
    from vlmkit.train.stages import copy_vision

    src = save_tiny_vlm(tmp_path / "src", seed=3)  # 32 px, patch 8 -> a 4x4 grid
    ref = VisionLanguageModel.from_pretrained(src).vision.model
    model = _tiny_model(image_size=64)
    copy_vision(model, src)
    ours = model.vision.model
    assert ours.pos_embed.shape == (1, 64, 24)
    assert torch.equal(ours.blocks[0].attn.qkv.weight, ref.blocks[0].attn.qkv.weight)
    assert torch.allclose(ours.pos_embed, resize_grid_embed(ref.pos_embed.detach(), 4, 8, 8))
    assert not torch.allclose(ours.pos_embed[:, :16], ref.pos_embed)  # it really was resampled
    # bicubic 4x4 -> 8x8 -> 4x4 is close to the identity on a smooth grid
    smooth = torch.linspace(0, 1, 16).reshape(1, 16, 1).expand(1, 16, 3).contiguous()
    assert torch.allclose(resize_grid_embed(resize_grid_embed(smooth, 4, 8, 8), 8, 4, 4), smooth, atol=0.05)


def test_vision_init_refuses_other_architectures(tmp_path):
    from vlmkit.train.stages import copy_vision

    src = save_tiny_vlm(tmp_path / "src")
    with pytest.raises(ModelLoadError, match="only image_size may differ"):
        copy_vision(_tiny_model(mlp_ratio=2.0), src)


def test_chatml_template_is_saved_with_the_model(tmp_path):
    """model.chat_template="chatml" drops SmolLM2's injected system prompt, in training and after loading."""
    from vlmkit.api import VLM
    from vlmkit.processing.chat import render
    from vlmkit.train.loop import train

    msgs = [{"role": "user", "content": "hi"}]
    cfg = vlm_config(tmp_path, **{"model": {"chat_template": "chatml"}, "train": {"max_steps": 1}})
    train(cfg)
    vlm = VLM.load(tmp_path / "run" / "final")
    assert render(vlm.tokenizer, msgs) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    base = VLM.load(tmp_path / "tiny-vlm")
    assert "You are a helpful AI assistant" in render(base.tokenizer, msgs)  # SmolLM2's own template


def test_unknown_chat_template_is_refused(tmp_path):
    from vlmkit.train.config import ConfigError
    from vlmkit.train.stages import build_vlm

    with pytest.raises(ConfigError, match="chat_template"):
        build_vlm(vlm_config(tmp_path, **{"model": {"chat_template": "llama3"}}))
