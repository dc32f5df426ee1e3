"""scripts/oracle_stage.py: world images get their ground-truth word tokens, every other image keeps its own."""
import json
import types

import repo_file
import torch
from PIL import Image

from vlmkit.processing.images import ImageProcessor


def _load(name):
    return repo_file.load(f"scripts/{name}.py")


def test_world_images_get_oracle_tokens_and_others_their_own(tmp_path):
    from tiny import tiny_vlm

    oracle, fit = _load("oracle_stage"), _load("fit_connector")
    vlm = tiny_vlm(connector="pixel_shuffle")  # 32 px, 4x4 patches of 8 px, 2x2 shuffle: 4 visual tokens
    model, tok = vlm.model, vlm.tokenizer
    (tmp_path / "images").mkdir()
    Image.new("RGB", (32, 32), (255, 0, 0)).save(tmp_path / "images" / "a.png")
    Image.new("RGB", (32, 32), (0, 0, 255)).save(tmp_path / "other.png")  # not in the world folder
    # spans the two top cells (16 px each); its centre is in the right one
    truth = {"generator": "shapes", "objects": [{"colour": "red", "shape": "circle", "box_px": [0, 0, 32, 16],
                                                 "center": [16.0, 8.0]}]}
    (tmp_path / "truth.jsonl").write_text(json.dumps({"image": "images/a.png", "truth": truth}) + "\n")

    encode = oracle.oracle_encoder([tmp_path], model.cfg.vision, tok)
    pixels = ImageProcessor.from_vision_config(model.cfg.vision)([tmp_path / "images" / "a.png", tmp_path / "other.png"])
    own = model.encode_images(pixels)  # [2, 4, D_lm]
    model.encode_images = types.MethodType(encode, model)
    with torch.no_grad():
        out = model.encode_images(pixels)

    regions = fit.token_regions(model.cfg.vision, model.connector)
    want = fit.region_targets(truth, regions, fit.phrase_embedder(model, tok))  # [4, D_lm]
    assert out.shape == own.shape
    assert torch.equal(out[0], want)
    corner = {min((q[0], q[1]) for q in cell): i for i, cell in enumerate(regions)}  # top-left px -> token index
    left, right, below = corner[(0, 0)], corner[(16, 0)], corner[(0, 16)]
    assert torch.equal(want[left], want[right]) and not torch.allclose(want[left], want[below])  # circle, blank
    assert torch.allclose(out[1], own[1])
    assert dict(encode.counts) == {"oracle": 1, "own": 1}

    # targets="instance" gives the fit's instance targets: "red" in the left cell, "red circle" in the right
    model.encode_images = types.MethodType(oracle.oracle_encoder([tmp_path], model.cfg.vision, tok, "instance"), model)
    with torch.no_grad():
        inst = model.encode_images(pixels)
    want_inst = fit.region_targets(truth, regions, fit.phrase_embedder(model, tok), targets="instance")
    assert torch.equal(inst[0], want_inst)
    assert torch.equal(inst[0, right], want[right]) and not torch.allclose(inst[0, left], want[left])
    assert torch.allclose(inst[1], own[1])
