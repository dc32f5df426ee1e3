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


def test_text_baseline_scores_the_first_colour_word_by_kind_of_question(tmp_path):
    """`oracle_stage.py text`: the LM gets the scene written out; its first colour word is the answer, and questions
    whose shape is not unique in the scene (they need the size) are counted apart."""
    from tiny import smollm2_tokenizer

    oracle = _load("oracle_stage")
    tok = smollm2_tokenizer()
    objs = lambda *kinds: [{"size": z, "colour": c, "shape": s} for z, c, s in kinds]
    scenes = {"a.png": objs(("large", "red", "circle"), ("small", "blue", "star")),
              "b.png": objs(("large", "green", "square"), ("small", "yellow", "square"))}
    (tmp_path / "truth.jsonl").write_text("".join(json.dumps({"image": k, "truth": {"objects": v}}) + "\n"
                                                  for k, v in scenes.items()))
    rows = [("a.png", "What colour is the circle?", "red"), ("a.png", "What colour is the star?", "blue"),
            ("b.png", "What colour is the small square?", "yellow"), ("b.png", "How many squares?", "2")]
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps({"image": i, "question": q, "answers": [a],
                                                             "slice": "colour" if a != "2" else "counting"}) + "\n"
                                                 for i, q, a in rows))
    replies = iter(["It is red, not blue.", "Green.", "The small square is yellow"])
    prompts = []

    class ScriptedLM:  # answers from a script, and keeps what it was asked
        def generate(self, ids, max_new_tokens, do_sample):
            prompts.append(tok.decode(ids[0]))
            reply = tok(next(replies), add_special_tokens=False, return_tensors="pt")["input_ids"]
            return torch.cat([ids, reply], dim=1)

    got = oracle.text_baseline(tmp_path, n=10, lm=ScriptedLM(), tok=tok)
    assert "The image shows: a large red circle, a small blue star.\nWhat colour is the circle?" in prompts[0]
    assert len(prompts) == 3  # colour questions only
    assert got["n/shape_unique"] == 2 and got["n/needs_size"] == 1
    assert got["colour_text_only/shape_unique"] == 0.5  # "red" right, "green" wrong
    assert got["colour_text_only/needs_size"] == 1.0
    assert abs(got["colour_text_only"] - 2 / 3) < 1e-9
