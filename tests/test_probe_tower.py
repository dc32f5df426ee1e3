"""scripts/probe_tower.py: each probe reads the token under the right place, and --connector reads the tokens the LM
receives."""
import numpy as np
import torch
from PIL import Image
from tiny import smollm2_tokenizer, tiny_vlm

import repo_file
from vlmkit.config import VisionConfig


def test_the_token_under_each_object_and_each_token_place(tmp_path):
    mod = repo_file.load("scripts/probe_tower.py")
    vcfg = VisionConfig(image_size=64, patch_size=8, hidden_size=8, num_layers=1, num_heads=2)
    g = 4  # a 4 x 4 token grid over 64 px: 16 px a token
    rows = []
    for i, centre in enumerate([(100, 30), (20, 120)]):  # in 128-px images: tokens (row 0, col 3) and (3, 0)
        Image.new("RGB", (128, 128), "white").save(tmp_path / f"{i}.png")
        x, y = centre
        rows.append({"image": f"{i}.png", "truth": {"size": [128, 128], "objects": [
            {"colour": "red", "box_px": [x - 4, y - 4, x + 4, y + 4]}]}})

    def encode(px):  # each token's feature is its own raster index
        return torch.arange(g * g, dtype=torch.float32).view(1, g * g, 1).expand(len(px), g * g, 2)

    at_patch, pooled, own, place = mod.features(encode, vcfg, g, rows, tmp_path)
    assert at_patch[:, 0].tolist() == [3.0, 12.0]
    assert own.shape == (2 * mod.PLACE_TOKENS, 2)
    assert (own[:, 0] == place[:, 0] * g + place[:, 1]).all()  # (row, column) of the token it came from
    assert np.allclose(pooled[:, 0], 7.5)


def test_connector_probe_reads_the_visual_tokens_of_a_vlm(tmp_path):
    mod = repo_file.load("scripts/probe_tower.py")
    vlm = tiny_vlm(connector="pixel_shuffle", image_size=64)
    vlm.model.save_pretrained(tmp_path / "m", tokenizer=smollm2_tokenizer())
    encode, vcfg, g = mod.visual_tokens(tmp_path / "m")
    assert g * g == vlm.model.cfg.image_seq_len and vcfg.image_size == 64
    px = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(encode(px), vlm.model.encode_images(px))  # what the LM receives
