"""Tiling, token merging and image labels through vlmkit's Python API, on a tiny random model."""
import numpy as np
import pytest
import torch
from PIL import Image

from tiny import tiny_vlm
from vlmkit.errors import BudgetError, VlmkitError
from vlmkit.processing.budget import plan_request
from vlmkit.processing.compress import merge_spatial
from vlmkit.processing.tiling import TilingConfig


def _img(seed, size=(90, 40)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def _conv(text="Compare them.", sizes=((90, 40), (40, 40))):
    parts = [{"type": "image", "image": _img(i, s)} for i, s in enumerate(sizes)]
    return [{"role": "user", "content": parts + [{"type": "text", "text": text}]}]


@pytest.fixture(scope="module")
def vlm():
    return tiny_vlm()  # ViT 32 px, patch 8 -> 16 visual tokens per tile


def _n_visual(vlm, prompt):
    return prompt.input_ids.count(vlm.cfg.image_token_id)


def _text(vlm, prompt):
    return vlm.tokenizer.decode([i for i in prompt.input_ids if i >= 0])


def test_default_prompt_unchanged(vlm):
    p = vlm.prompt(_conv())
    assert _n_visual(vlm, p) == 2 * 16 and not p.visuals
    # the resize policy through the tiling path gives the same ids and the same first tokens
    t = TilingConfig.for_tower(vlm.cfg.vision)
    assert vlm.prompt(_conv(), tiling=t).input_ids == p.input_ids
    a = vlm.generate([_conv()], max_new_tokens=6)[0].token_ids
    b = vlm.generate([_conv()], max_new_tokens=6, tiling=t)[0].token_ids
    assert a == b


@pytest.mark.parametrize("policy", ["anyres", "split", "native"])
def test_prompt_tokens_equal_the_planner(vlm, policy):
    t = TilingConfig.for_tower(vlm.cfg.vision, policy=policy)
    p = vlm.prompt(_conv(), tiling=t)
    plan = plan_request([(90, 40), (40, 40)], t, vlm.cfg.vision, vlm.cfg.connector, vlm.cfg.lm)
    assert _n_visual(vlm, p) == plan.visual_tokens > 2 * 16
    out = vlm.generate([_conv()], max_new_tokens=3, tiling=t)[0]
    assert len(out.token_ids) == 3


def test_split_prompt_carries_position_tags(vlm):
    p = vlm.prompt(_conv(sizes=((90, 40),)), tiling=TilingConfig.for_tower(vlm.cfg.vision, policy="split"))
    text = _text(vlm, p)
    assert "<row_1_col_1>" in text and "<row_2_col_4>" in text and "<global-img>" in text
    assert text.index("<row_1_col_4>") < text.index("<row_2_col_1>") < text.index("<global-img>")


def test_batched_tiled_equals_one_at_a_time(vlm):
    t = TilingConfig.for_tower(vlm.cfg.vision, policy="anyres")
    convs = [_conv("Hi", sizes=((90, 40),)), _conv("Which is larger?", sizes=((40, 90), (64, 64))), _conv("Count.", sizes=((33, 33),))]
    batched = vlm.generate(convs, max_new_tokens=6, tiling=t)
    single = [vlm.generate([c], max_new_tokens=6, tiling=t)[0] for c in convs]
    assert [b.token_ids for b in batched] == [s.token_ids for s in single]


def test_merging_saves_tokens_and_is_exact_when_nothing_merges(vlm):
    t = TilingConfig.for_tower(vlm.cfg.vision, policy="anyres")
    flat = [{"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (90, 40), "white")},
                                         {"type": "text", "text": "What is it?"}]}]
    full = vlm.prompt(flat, tiling=t)
    merged = vlm.prompt(flat, tiling=t, merge_threshold=0.9)
    saved = sum(v.saved for v in merged.visuals)
    assert saved > 0 and _n_visual(vlm, merged) == _n_visual(vlm, full) - saved
    # the merged tokens are each tile's unmerged features merged along its 4x4 token grid
    feats = vlm._encode(full.visuals)[0].reshape(-1, 16, vlm.cfg.lm.hidden_size)  # [tiles, 16, D]
    expected = torch.cat([merge_spatial(f, 0.9, (4, 4)).tokens for f in feats])
    assert torch.allclose(merged.visuals[0].features, expected, atol=1e-6)
    # cosine similarity is never > 1: nothing merges, and the answer is the unmerged one
    assert vlm.generate([flat], max_new_tokens=5, tiling=t, merge_threshold=1.0)[0].token_ids == \
        vlm.generate([flat], max_new_tokens=5, tiling=t)[0].token_ids
    assert len(vlm.generate([flat], max_new_tokens=3, tiling=t, merge_threshold=0.9)[0].token_ids) == 3
    report = vlm.last_compression
    assert (report.before, report.after, report.saved) == (_n_visual(vlm, full), _n_visual(vlm, merged), saved)


def test_image_labels(vlm):
    p = vlm.prompt(_conv(), label_images=True)
    text = _text(vlm, p)
    assert "Image 1:" in text and "Image 2:" in text and text.index("Image 1:") < text.index("Image 2:")
    assert "Image 1:" not in _text(vlm, vlm.prompt(_conv()))
    # placeholders in string content are numbered too, and the visual runs follow their labels
    conv = [{"role": "user", "content": "<image> and <image>: which is brighter?"}]
    p = vlm.prompt(conv, images=[_img(0), _img(1)], label_images=True)
    assert _text(vlm, p).count("Image ") == 2 and _n_visual(vlm, p) == 32
    ids = p.input_ids
    first_visual = ids.index(vlm.cfg.image_token_id)
    assert vlm.tokenizer.decode(ids[first_visual - 6:first_visual]).strip().endswith("Image 1:")


def test_over_context_is_a_budget_error(vlm):
    t = TilingConfig.for_tower(vlm.cfg.vision, policy="split")  # 9 tiles x 16 = 144 tokens per 90x40 image
    with pytest.raises(BudgetError, match="over the LM context of 1,024"):
        vlm.generate([_conv(sizes=((90, 40),) * 8)], max_new_tokens=4, tiling=t)


def test_over_context_degrades_when_asked(vlm):
    t = TilingConfig.for_tower(vlm.cfg.vision, policy="split")
    conv = _conv(sizes=((90, 40),) * 8)
    p = vlm.fitted_prompt(conv, max_new_tokens=4, on_over="degrade", tiling=t)
    assert len(p.input_ids) + 4 <= 1024
    # the first step that fits: at most 2 tiles + global per image (8 x 3 x 16 = 384 visual tokens)
    assert _n_visual(vlm, p) == 8 * 3 * 16
    assert len(vlm.generate([conv], max_new_tokens=4, tiling=t, on_over="degrade")[0].token_ids) == 4


def test_native_needs_a_grid_keeping_connector():
    vlm = tiny_vlm(connector="pixel_shuffle")
    with pytest.raises(VlmkitError, match="native-resolution"):
        vlm.prompt(_conv(), tiling=TilingConfig.for_tower(vlm.cfg.vision, policy="native"))
