"""NaViT packing for our ViT: packed sequences give exactly what encoding each image alone gives."""
import pytest
import torch

from vlmkit.config import VisionConfig
from vlmkit.models.vision import VisionTower, pack_sequences


def _tower(**kw):
    torch.manual_seed(0)
    cfg = dict(image_size=32, patch_size=8, hidden_size=32, num_layers=3, num_heads=4)
    return VisionTower(VisionConfig(**{**cfg, **kw})).eval()


IMAGES = [(32, 48), (16, 16), (40, 24), (8, 64), (32, 32)]  # (H, W): wide, small, tall, a strip, the native square


@pytest.mark.parametrize("kw", [{}, {"use_cls": False}, {"keep_cls": True, "feature_layer": None}])
@pytest.mark.parametrize("max_len", [None, 40])
def test_packed_equals_alone(kw, max_len):
    tower = _tower(**kw)
    g = torch.Generator().manual_seed(1)
    images = [torch.randn(3, h, w, generator=g) for h, w in IMAGES]
    with torch.no_grad():
        packed = tower.forward_features_packed(images, max_len=max_len)
        alone = [tower.forward_features(im.unsqueeze(0))[0] for im in images]
    for (h, w), p, a in zip(IMAGES, packed, alone):
        n = (h // 8) * (w // 8) + int(tower.cfg.use_cls and tower.cfg.keep_cls)
        assert p.shape == a.shape == (n, 32)
        assert (p - a).abs().max().item() <= 1e-5


def test_images_do_not_see_each_other():
    tower = _tower()
    a, b = torch.randn(3, 16, 32), torch.randn(3, 24, 16)
    with torch.no_grad():
        first = tower.forward_features_packed([a, b])[0]
        again = tower.forward_features_packed([a, torch.randn(3, 24, 16) * 5])[0]
    assert torch.equal(first, again)


def test_position_embeddings_are_2d():
    # the same pixels as a 16x32 and as its 32x16 transpose get different codes: the grid shape matters
    tower = _tower()
    x = torch.randn(3, 16, 32)
    with torch.no_grad():
        wide, tall = tower.forward_features_packed([x, x.transpose(1, 2).contiguous()])
    assert wide.shape == tall.shape and (wide - tall).abs().max() > 1e-3


def test_pack_sequences_first_fit():
    rows, spans = pack_sequences([5, 3, 4, 2], max_len=8)
    assert rows == [[0, 1], [2, 3]]
    assert spans == [(0, 0, 5), (0, 5, 8), (1, 0, 4), (1, 4, 6)]
    with pytest.raises(ValueError, match="more than the pack length"):
        pack_sequences([9], max_len=8)


def test_packed_needs_our_vit():
    from transformers import SiglipVisionConfig

    hf = SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=8)
    tower = VisionTower(VisionConfig(kind="hf_siglip", hf_config=hf.to_dict()))
    with pytest.raises(ValueError, match="our ViT"):
        tower.forward_features_packed([torch.randn(3, 16, 16)])
