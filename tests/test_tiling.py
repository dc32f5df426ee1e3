"""Tiling policies against transformers' own processors: AnyRes (LLaVA-NeXT) and image splitting (Idefics3)."""
import random
import string

import numpy as np
import pytest
from PIL import Image

from vlmkit.processing.budget import preset_configs, tile_tokens
from vlmkit.processing.chat import tokenize_with_images
from vlmkit.processing.images import to_tensor
from vlmkit.processing.tiling import (
    TilingConfig,
    grid_pinpoints,
    layout_text,
    plan_grid,
    prompt_layout,
    select_best_resolution,
    tile_image,
)

HALF = (0.5, 0.5, 0.5)


def _noise(w, h, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


def _pixels(tiles):
    return np.stack([to_tensor(t, HALF, HALF).numpy() for t in tiles])


def test_select_best_resolution_matches_transformers():
    from transformers.image_processing_utils import select_best_resolution as hf_select

    rng = random.Random(0)
    sizes = [(rng.randint(1, 4000), rng.randint(1, 4000)) for _ in range(300)]
    sizes += [(336, 336), (672, 1344), (1344, 672), (1, 5000), (5000, 1), (1008, 336)]  # exact fits, extremes
    llava_next = TilingConfig(policy="anyres").pinpoints
    assert llava_next == [(336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)]
    for pinpoints in (llava_next, grid_pinpoints(336, 9, 6), grid_pinpoints(384, 4)):
        for hw in sizes:
            assert select_best_resolution(hw, pinpoints) == hf_select(hw, pinpoints), (hw, pinpoints)


def test_token_counts_of_the_seed_figures():
    vision, connector, _ = preset_configs("clip-vit-l-14-336", "vicuna-7b")
    per_tile = tile_tokens(TilingConfig(), vision, connector)
    assert per_tile == 576  # (336 / 14)^2
    four = plan_grid(TilingConfig(policy="anyres", thumbnail=False), 672, 672)
    assert (four.rows, four.cols, four.num_tiles) == (2, 2, 4) and four.tokens(per_tile) == 2304
    # 1344 x 672 with grids up to 4x4 (LLaVA's "(1x1),...,(4x4)"): 2 x 4 tiles and the thumbnail
    big = plan_grid(TilingConfig(policy="anyres", pinpoints=grid_pinpoints(336, 16, 4)), 1344, 672)
    assert (big.rows, big.cols, big.num_tiles) == (2, 4, 9) and big.tokens(per_tile) == 5184
    # with llava-v1.6's own five pinpoints the same image fits 336 x 672 exactly: 1 x 2 tiles and the thumbnail
    v16 = plan_grid(TilingConfig(policy="anyres"), 1344, 672)
    assert (v16.rows, v16.cols, v16.tokens(per_tile)) == (1, 2, 1728)


@pytest.mark.parametrize("size", [(100, 50), (37, 90), (60, 60), (200, 30), (9, 9)])
def test_anyres_tiles_equal_llava_next_processor(size):
    from transformers import LlavaNextImageProcessorPil

    t = 28
    pins = [(h // 12, w // 12) for h, w in TilingConfig(policy="anyres").pinpoints]  # llava-next's, at 28 px
    hf = LlavaNextImageProcessorPil(size={"shortest_edge": t}, crop_size={"height": t, "width": t},
                                    image_grid_pinpoints=[list(p) for p in pins], image_mean=list(HALF), image_std=list(HALF))
    img = _noise(*size)
    ref = hf(img, return_tensors="np")["pixel_values"][0]  # [1 + tiles, 3, t, t], thumbnail first
    ours = tile_image(img, TilingConfig(policy="anyres", tile_size=t, pinpoints=pins))
    assert ours.grid.num_tiles == ref.shape[0]
    np.testing.assert_allclose(_pixels(ours.tiles), ref, atol=1e-6)


def _tiny_idefics3_tokenizer(path):
    """A character-level tokenizer with Idefics3's special tokens, built and saved offline."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    specials = ["<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>"]
    specials += [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    vocab = {t: i for i, t in enumerate(["<unk>"] + sorted(set(string.printable)))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", additional_special_tokens=specials).save_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def idefics3(tmp_path_factory):
    from transformers import Idefics3ImageProcessorPil, Idefics3Processor

    tok = _tiny_idefics3_tokenizer(tmp_path_factory.mktemp("tok"))
    ip = Idefics3ImageProcessorPil(size={"longest_edge": 128}, max_image_size={"longest_edge": 32},
                                   image_mean=list(HALF), image_std=list(HALF))
    return Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=4)


@pytest.mark.parametrize("size", [(100, 50), (37, 90), (60, 60), (200, 30), (20, 10), (31, 33), (500, 40)])
def test_split_matches_idefics3_processor(idefics3, size):
    img = _noise(*size, seed=size[0])
    text = "User:<image>What does it say?<end_of_utterance>\nAssistant:"
    ref = idefics3(images=[img], text=text, return_tensors="np")
    cfg = TilingConfig(policy="split", tile_size=32, longest_edge=128)
    ours = tile_image(img, cfg)
    # the same tiles, in the same order, with the same pixels
    assert ref["pixel_values"].shape[1] == ours.grid.num_tiles
    np.testing.assert_allclose(_pixels(ours.tiles), ref["pixel_values"][0], atol=1e-6)
    # the same prompt: expanded string and token ids
    tok = idefics3.tokenizer
    layout = prompt_layout(ours.grid, 4)
    expanded = text.replace("<image>", layout_text(layout, "<image>"))
    assert tok(expanded, add_special_tokens=False)["input_ids"] == ref["input_ids"][0].tolist()
    ids = tokenize_with_images(tok, text, "<image>", tok.convert_tokens_to_ids("<image>"), [layout])
    assert ids == ref["input_ids"][0].tolist()


def test_split_layout_string():
    grid = plan_grid(TilingConfig(policy="split", tile_size=32, longest_edge=64), 64, 32)
    assert (grid.rows, grid.cols, grid.num_tiles) == (1, 2, 3)
    assert layout_text(prompt_layout(grid, 2), "<image>") == (
        "<fake_token_around_image><row_1_col_1><image><image>"
        "<fake_token_around_image><row_1_col_2><image><image>\n"
        "\n<fake_token_around_image><global-img><image><image><fake_token_around_image>"
    )


def test_max_tiles_caps_both_policies():
    split = plan_grid(TilingConfig(policy="split", tile_size=32, longest_edge=128), 128, 128)
    assert split.rows * split.cols == 16
    capped = plan_grid(TilingConfig(policy="split", tile_size=32, longest_edge=128, max_tiles=4), 128, 128)
    assert (capped.rows, capped.cols) == (2, 2)
    anyres = TilingConfig(policy="anyres", pinpoints=grid_pinpoints(336, 16, 4)).with_max_tiles(2)
    assert max(h // 336 * (w // 336) for h, w in anyres.pinpoints) == 2
    assert plan_grid(anyres, 1344, 672).num_tiles == 3  # 1 x 2 and the thumbnail


def test_native_keeps_aspect_and_patch_budget():
    cfg = TilingConfig(policy="native", tile_size=32, patch_size=8, max_patches=64)
    g = plan_grid(cfg, 400, 100)  # 4:1
    assert g.num_tiles == 1 and g.rows * g.cols <= 64 and g.cols == 4 * g.rows
    assert g.resized == (g.rows * 8, g.cols * 8)
    small = plan_grid(cfg, 16, 24)  # small images are not blown up
    assert small.resized == (24, 16)
    out = tile_image(_noise(400, 100), cfg)
    assert out.tiles[0].size == (g.resized[1], g.resized[0])


def test_tiling_config_errors():
    with pytest.raises(ValueError, match="policy"):
        TilingConfig(policy="mosaic")
    with pytest.raises(ValueError, match="multiples of the tile size"):
        TilingConfig(policy="anyres", tile_size=336, pinpoints=[(300, 600)])
    with pytest.raises(ValueError, match="positive"):
        plan_grid(TilingConfig(), 0, 10)
