"""CLIP and SigLIP towers load from transformers-saved directories and match transformers' features."""
import pytest
import torch

from vlmkit.convert.vision import load_hf_vision_tower
from vlmkit.errors import ModelLoadError

SMALL = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2, image_size=32, patch_size=8)
TEXT = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=99, bos_token_id=0, eos_token_id=1, pad_token_id=1)


def _models():
    from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModel, SiglipConfig, SiglipModel, SiglipVisionConfig, SiglipVisionModel

    return {
        "clip": (lambda: CLIPModel(CLIPConfig(vision_config=SMALL, text_config=TEXT, projection_dim=8)), 1),
        "clip_vision": (lambda: CLIPVisionModel(CLIPVisionConfig(**SMALL)), 1),
        "siglip": (lambda: SiglipModel(SiglipConfig(vision_config=SMALL, text_config=TEXT)), 0),
        "siglip_vision": (lambda: SiglipVisionModel(SiglipVisionConfig(**SMALL)), 0),
    }


@pytest.mark.parametrize("name", ["clip", "clip_vision", "siglip", "siglip_vision"])
def test_tower_matches_transformers(tmp_path, name):
    make, n_prefix = _models()[name]
    ref = make().eval()
    ref.save_pretrained(tmp_path)
    tower = load_hf_vision_tower(tmp_path)
    x = torch.randn(2, 3, 32, 32)
    vision = ref.vision_model if hasattr(ref, "vision_model") and not name.endswith("_vision") else ref
    with torch.no_grad():
        hs = vision(pixel_values=x, output_hidden_states=True).hidden_states
        assert torch.equal(tower.forward_features(x), hs[-2][:, n_prefix:])
    assert tower.cfg.num_tokens == 16


def test_unknown_key_is_an_error(tmp_path):
    from safetensors.torch import load_file, save_file

    make, _ = _models()["clip_vision"]
    make().save_pretrained(tmp_path)
    w = load_file(tmp_path / "model.safetensors")
    w["surprise.weight"] = torch.zeros(1)
    save_file(w, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="surprise.weight"):
        load_hf_vision_tower(tmp_path)


def test_not_a_clip_dir(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ModelLoadError, match="not a CLIP or SigLIP"):
        load_hf_vision_tower(tmp_path)
