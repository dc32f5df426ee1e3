"""2-D rotary image positions (models/rope2d.py): ids and cos/sin against transformers' Qwen3-VL, text-only prompts
unchanged, the KV cache and batching invariant, configs that cannot have a grid refused."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from tiny import tiny_vlm, tiny_vlm_config
from vlmkit.config import VLMConfig
from vlmkit.errors import VlmkitError
from vlmkit.models.rope2d import frequency_axes, grid_position_ids, rotary_cos_sin
from vlmkit.models.vlm import VisionLanguageModel

IMG = -200


def _img(seed):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8))


def _conv(text, n_images=1):
    return [{"role": "user", "content": [{"type": "image", "image": _img(i)} for i in range(n_images)]
             + [{"type": "text", "text": text}]}]


def _qwen3_vl_positions(input_ids, mask, grid, n_images):
    """transformers' own Qwen3-VL get_rope_index on the same layout (image tokens typed 1, one grid per image)."""
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLModel

    ref = SimpleNamespace(config=SimpleNamespace(vision_config=SimpleNamespace(spatial_merge_size=1)))
    ref.get_vision_position_ids = lambda *a, **k: Qwen3VLModel.get_vision_position_ids(ref, *a, **k)
    thw = torch.tensor([[1, *grid]] * n_images)
    ids, _ = Qwen3VLModel.get_rope_index(ref, input_ids, mm_token_type_ids=(input_ids == IMG).int(),
                                         image_grid_thw=thw, attention_mask=mask)
    return ids


def test_grid_ids_match_qwen3_vl_get_rope_index():
    grid = (3, 4)
    img = [IMG] * 12
    rows = [[5, 6, *img, 7, 8, 9], [5, *img, 7, *img, 8]]  # one image; two, text between them (as our prompts have)
    T = max(map(len, rows))
    input_ids = torch.tensor([[0] * (T - len(r)) + r for r in rows])  # left-padded
    mask = torch.tensor([[0] * (T - len(r)) + [1] * len(r) for r in rows])
    ours = grid_position_ids(input_ids, mask, IMG, grid)
    assert ours.shape == (3, 2, T)
    ref = _qwen3_vl_positions(input_ids, mask, grid, n_images=3)
    assert torch.equal(ours[:, mask.bool()], ref[:, mask.bool()])
    # by hand for the first row: text 0, 1; the image at 2 (rows 2..4, cols 2..5); text again from 2 + max(3, 4)
    first = ours[:, 0, mask[0].bool()]
    assert first[:, :2].tolist() == [[0, 1]] * 3
    assert first[0, 2:14].tolist() == [2] * 12
    assert first[1, 2:14].tolist() == [2 + r for r in range(3) for _ in range(4)]
    assert first[2, 2:14].tolist() == [2 + c for _ in range(3) for c in range(4)]
    assert first[:, 14:].tolist() == [[6, 7, 8]] * 3
    with pytest.raises(ValueError, match="whole number of 3 x 4 grids"):
        grid_position_ids(torch.tensor([[5, *img[:7], 6]]), None, IMG, grid)


def test_frequencies_and_cos_sin_match_qwen3_vl_interleaved_mrope():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
    from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLTextConfig
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextRotaryEmbedding

    # SmolLM2-135M's attention: head_dim 64 (32 frequencies), base 1e5
    axes = frequency_axes(32)
    assert axes.bincount().tolist() == [12, 10, 10] and axes[:6].tolist() == [0, 1, 2, 0, 1, 2]
    rope = {"rope_type": "default", "rope_theta": 100000.0}
    ours = LlamaRotaryEmbedding(LlamaConfig(hidden_size=576, num_attention_heads=9, rope_parameters=rope))
    ref = Qwen3VLTextRotaryEmbedding(Qwen3VLTextConfig(hidden_size=576, num_attention_heads=9, head_dim=64,
                                                       rope_parameters={**rope, "mrope_section": [12, 10, 10]}))
    g = torch.Generator().manual_seed(0)
    pos = torch.randint(0, 500, (3, 2, 7), generator=g)
    x = torch.zeros(1, dtype=torch.float32)
    for a, b in zip(rotary_cos_sin(ours, x, pos), ref(x, pos)):
        assert torch.allclose(a, b, atol=1e-6)
    # equal ids on all three axes (text) give the LM's own rotary exactly
    same = pos[:1].expand(3, -1, -1)
    for a, b in zip(rotary_cos_sin(ours, x, same), ours(x, pos[0])):
        assert torch.equal(a, b)


@pytest.fixture(scope="module")
def pair():
    """The same tiny weights with sequence and with grid positions."""
    plain, grid = tiny_vlm(seed=3), tiny_vlm(seed=3)
    grid.model.cfg.image_positions = "grid"
    return plain, grid


def test_text_only_prompts_are_unchanged_and_images_are_not(pair):
    plain, grid = pair
    text = [{"role": "user", "content": "Say something long about colours."}]
    p = plain.prompt(text)
    ids = torch.tensor([p.input_ids])
    assert torch.equal(grid.model(ids).logits, plain.model(ids).logits)  # bit for bit
    assert grid.generate([text], max_new_tokens=6)[0].token_ids == plain.generate([text], max_new_tokens=6)[0].token_ids
    p = plain.prompt(_conv("What is here?"))
    ids, pixels = torch.tensor([p.input_ids]), plain.image_processor(p.images)
    lp, lg = plain.model(ids, pixel_values=pixels).logits, grid.model(ids, pixel_values=pixels).logits
    assert (lp - lg).abs().max() > 1e-3  # the LM does see the new ids


def test_cache_and_batching_agree_under_grid_positions(pair):
    _, grid = pair
    convs = [_conv("What is here?"), _conv("Compare the two pictures, please, in a few words.", n_images=2)]
    cached = grid.generate(convs, max_new_tokens=8)
    assert [c.token_ids for c in cached] == [r.token_ids for r in grid.generate(convs, max_new_tokens=8, use_cache=False)]
    # left padding in a batch changes nothing: each row alone gives the same tokens
    assert [c.token_ids for c in cached] == [grid.generate([c], max_new_tokens=8)[0].token_ids for c in convs]
    # the prompt's ids are the grid's: 4 x 4 visual tokens span 4 ids
    _, mask, pos = grid._embed_batch([grid.prompt(convs[0])])
    assert pos.shape[0] == 3 and int(pos.max()) == mask.shape[1] - 1 - (16 - 4)


def test_grid_positions_are_saved_checked_and_refused_where_there_is_no_grid(pair, tmp_path):
    _, grid = pair
    grid.model.save_pretrained(tmp_path, tokenizer=grid.tokenizer)
    assert json.loads((tmp_path / "config.json").read_text())["image_positions"] == "grid"
    assert VisionLanguageModel.from_pretrained(tmp_path).cfg.image_positions == "grid"
    for kind in ("qformer", "perceiver"):
        with pytest.raises(ValueError, match="image_positions='grid' needs .* square grid"):
            VLMConfig.from_dict({**tiny_vlm_config(connector=kind).to_dict(), "image_positions": "grid"})
    with pytest.raises(ValueError, match="leave image_row_separator empty"):
        VLMConfig.from_dict({**tiny_vlm_config().to_dict(), "image_positions": "grid", "image_row_separator": "\n"})
    with pytest.raises(ValueError, match="'sequence' or 'grid'"):
        VLMConfig.from_dict({**tiny_vlm_config().to_dict(), "image_positions": "2d"})
    from vlmkit.processing.tiling import TilingConfig

    with pytest.raises(VlmkitError, match="image_positions='grid'"):
        grid.prompt(_conv("hi"), tiling=TilingConfig.for_tower(grid.cfg.vision))


def test_an_lm_without_rotary_embeddings_is_refused():
    from vlmkit.config import LMConfig
    from vlmkit.models.lm import LanguageModel

    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = LanguageModel(LMConfig(source="tiny"), GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64)))
    with pytest.raises(ValueError, match="rotary"):
        gpt2(torch.zeros(1, 3, 32), position_ids=torch.zeros(3, 1, 3, dtype=torch.long))
