"""Core invariants on tiny models: cache, batching, save/load, strict loading, towers, prompts."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from tiny import tiny_vlm, tiny_vlm_config
from vlmkit.config import VisionConfig, VLMConfig
from vlmkit.errors import ModelLoadError, VlmkitError
from vlmkit.generation import GenerationConfig
from vlmkit.models.lm import LanguageModel
from vlmkit.models.vision import VisionTower
from vlmkit.models.vlm import VisionLanguageModel
from vlmkit.models.weights import save_safetensors


def _img(seed, size=(40, 30)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def _conv(text, n_images=1, seed=0):
    parts = [{"type": "image", "image": _img(seed + i)} for i in range(n_images)]
    return [{"role": "user", "content": parts + [{"type": "text", "text": text}]}]


@pytest.fixture(scope="module")
def vlm():
    return tiny_vlm()


def test_kv_cache_matches_no_cache(vlm):
    conv = _conv("Describe the picture in detail.", n_images=2)
    with_cache = vlm.generate([conv], max_new_tokens=12)[0]
    without = vlm.generate([conv], max_new_tokens=12, use_cache=False)[0]
    assert len(with_cache.token_ids) == 12
    assert with_cache.token_ids == without.token_ids


@pytest.mark.parametrize("lora", [False, True])
def test_cached_decoding_uses_the_installed_transformers_cache_argument(lora):
    """transformers 5.24 renamed the models' `past_key_values` argument to `cache`: the old name warns on every
    decode step and goes in 5.40, and the decoder layers pass only the new one on (the Flamingo hooks read it).
    peft's LoRA wrapper takes any keyword, so the name must come from the model inside it."""
    import warnings

    from vlmkit.config import LoRAConfig

    model = tiny_vlm()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        if lora:  # peft reads transformers' deprecated `is_gradient_checkpointing` when it wraps the LM
            model.model.add_lora(LoRAConfig(r=2, alpha=4))
        out = model.generate([_conv("Describe it.")], max_new_tokens=4)[0]
    assert len(out.token_ids) == 4


def test_batched_equals_one_at_a_time(vlm):
    convs = [_conv("Hi", 1, 0), _conv("What colour is the largest object in the scene?", 2, 5), _conv("Count.", 1, 9)]
    batched = vlm.generate(convs, max_new_tokens=10)
    single = [vlm.generate([c], max_new_tokens=10)[0] for c in convs]
    assert [b.token_ids for b in batched] == [s.token_ids for s in single]


def test_images_anywhere_in_conversation(vlm):
    conv = [
        {"role": "user", "content": [{"type": "text", "text": "First:"}, {"type": "image", "image": _img(1)}]},
        {"role": "assistant", "content": "A picture."},
        {"role": "user", "content": "And this one? <image> Compare them."},
    ]
    p = vlm.prompt(conv, images=[_img(2)])
    n = vlm.cfg.image_seq_len
    assert p.input_ids.count(vlm.cfg.image_token_id) == 2 * n
    assert len(p.images) == 2
    # the first image's run sits before the assistant turn, the second after it
    ids = p.input_ids
    first = ids.index(vlm.cfg.image_token_id)
    assert all(t == vlm.cfg.image_token_id for t in ids[first:first + n])
    text = vlm.tokenizer.decode([t for t in ids if t >= 0])
    assert text.index("A picture.") < text.index("And this one?")


def test_placeholder_count_mismatch_is_an_error(vlm):
    with pytest.raises(VlmkitError, match="placeholder"):
        vlm.prompt([{"role": "user", "content": "<image> <image> two?"}], images=[_img(0)])
    with pytest.raises(VlmkitError, match="no <image> placeholder"):
        vlm.prompt([{"role": "user", "content": "none here"}], images=[_img(0)])


def test_stop_strings_and_streaming(vlm):
    conv = _conv("Say something long.")
    full = vlm.generate([conv], max_new_tokens=16)[0].text
    assert len(full) > 4
    stop = full[3:5]
    pieces = []
    res = vlm.generate([conv], max_new_tokens=16, stop=(stop,), on_text=lambda row, s: pieces.append(s))[0]
    assert res.text == full[: full.index(stop)]
    assert res.finish_reason == "stop"
    assert "".join(pieces) == res.text  # the stream never shows the stop string or anything after it


def test_sampling_is_seeded_and_top_p_tiny_is_greedy(vlm):
    conv = _conv("Tell me.")
    a = vlm.generate([conv], max_new_tokens=8, temperature=1.5, seed=3)[0].token_ids
    b = vlm.generate([conv], max_new_tokens=8, temperature=1.5, seed=3)[0].token_ids
    assert a == b
    greedy = vlm.generate([conv], max_new_tokens=8)[0].token_ids
    assert vlm.generate([conv], max_new_tokens=8, temperature=1.0, top_p=1e-6, seed=1)[0].token_ids == greedy


def test_generation_config_validates():
    with pytest.raises(ValueError):
        GenerationConfig(top_p=0)
    with pytest.raises(ValueError):
        GenerationConfig(max_new_tokens=0)


def test_save_load_roundtrip_bit_exact(tmp_path, vlm):
    vlm.model.save_pretrained(tmp_path / "m")
    loaded = VisionLanguageModel.from_pretrained(tmp_path / "m")
    a, b = vlm.model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "m" / "config.json").read_text()) == vlm.model.cfg.to_dict()
    ids = torch.tensor([[5, 6, vlm.cfg.image_token_id] + [vlm.cfg.image_token_id] * (vlm.cfg.image_seq_len - 1) + [7]])
    px = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(vlm.model(ids, px).logits, loaded(ids, px).logits)


def _saved(tmp_path, vlm):
    vlm.model.save_pretrained(tmp_path / "m")
    from safetensors.torch import load_file

    return tmp_path / "m", load_file(tmp_path / "m" / "model.safetensors")


def test_strict_load_rejects_renamed_key(tmp_path, vlm):
    path, w = _saved(tmp_path, vlm)
    w["connector.linear_one.weight"] = w.pop("connector.linear_1.weight")
    save_safetensors(w, path / "model.safetensors")
    with pytest.raises(ModelLoadError, match=r"missing 1 tensor\(s\): connector.linear_1.weight.*unexpected 1 tensor\(s\): connector.linear_one.weight"):
        VisionLanguageModel.from_pretrained(path)


def test_strict_load_rejects_wrong_shape_and_extra_key(tmp_path, vlm):
    path, w = _saved(tmp_path, vlm)
    w["connector.linear_2.bias"] = torch.zeros(3)
    w["vision.model.extra"] = torch.zeros(1)
    save_safetensors(w, path / "model.safetensors")
    with pytest.raises(ModelLoadError) as e:
        VisionLanguageModel.from_pretrained(path)
    assert "connector.linear_2.bias: checkpoint (3,)" in str(e.value) and "vision.model.extra" in str(e.value)


def test_not_a_model_dir(tmp_path):
    with pytest.raises(ModelLoadError, match="model directory not found"):
        VisionLanguageModel.from_pretrained(tmp_path / "nope")
    (tmp_path / "d").mkdir()
    with pytest.raises(ModelLoadError, match="not a vlmkit model directory"):
        VisionLanguageModel.from_pretrained(tmp_path / "d")
    (tmp_path / "d" / "config.json").write_text("{not json")
    (tmp_path / "d" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        VisionLanguageModel.from_pretrained(tmp_path / "d")
    (tmp_path / "d" / "config.json").write_text(json.dumps(tiny_vlm_config().to_dict()))
    with pytest.raises(ModelLoadError, match="cannot read weights"):
        VisionLanguageModel.from_pretrained(tmp_path / "d")


def test_vit_position_embeddings_interpolate():
    tower = VisionTower(VisionConfig(image_size=32, patch_size=8, hidden_size=16, num_layers=1, num_heads=2)).eval()
    assert tower.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, 16, 16)  # CLS dropped
    assert tower.forward_features(torch.randn(2, 3, 48, 64)).shape == (2, 48, 16)  # 6x8 grid
    # at the training grid, interpolation is the identity
    pe = tower.model.grid_pos_embed(4, 4)
    assert pe is tower.model.pos_embed
    assert torch.allclose(torch.nn.functional.interpolate(
        pe.reshape(1, 4, 4, -1).permute(0, 3, 1, 2), size=(4, 4), mode="bicubic", align_corners=False
    ).permute(0, 2, 3, 1).reshape(1, 16, -1), pe, atol=1e-6)


def test_feature_layer_and_cls_selection():
    cfg = VisionConfig(image_size=16, patch_size=8, hidden_size=8, num_layers=3, num_heads=2)
    tower = VisionTower(cfg).eval()
    x = torch.randn(1, 3, 16, 16)
    _, hs = tower.model(x)
    assert len(hs) == 4  # embeddings + 3 blocks
    assert torch.equal(tower.forward_features(x), hs[-2][:, 1:])  # penultimate, CLS dropped
    keep = VisionTower(VisionConfig(image_size=16, patch_size=8, hidden_size=8, num_layers=3, num_heads=2, keep_cls=True, feature_layer=-1))
    keep.load_state_dict(tower.state_dict())
    assert torch.equal(keep.forward_features(x), hs[-1])
    assert keep.cfg.num_tokens == 5


def _modules(names: list[str]) -> set[str]:
    """parameter names -> the modules holding them, cut to three dotted levels ("model.blocks.2")"""
    return {".".join(n.split(".")[:-1][:3]) for n in names}


def test_unused_by_features_names_what_the_connector_never_reads():
    from transformers import CLIPVisionConfig, SiglipVisionConfig

    vit = dict(image_size=16, patch_size=8, hidden_size=8, num_layers=3, num_heads=2)
    tower = VisionTower(VisionConfig(**vit))
    assert _modules(tower.unused_by_features()) == {"model.blocks.2", "model.norm"}
    assert all(p.requires_grad for p in tower.parameters())  # the probe leaves the flags as it found them
    tower.requires_grad_(False)
    assert len(tower.unused_by_features()) == 14 and not any(p.requires_grad for p in tower.parameters())
    assert _modules(VisionTower(VisionConfig(**vit, feature_layer=-1)).unused_by_features()) == {"model.norm"}
    assert VisionTower(VisionConfig(**vit, feature_layer=None)).unused_by_features() == []
    small = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2, image_size=32, patch_size=8)
    clip = VisionTower(VisionConfig(kind="hf_clip", hf_config=CLIPVisionConfig(**small).to_dict()))
    unused = clip.unused_by_features()
    # the last layer (past the penultimate) and CLIP's post-norm, which transformers applies to the pooled CLS only
    assert {n for n in unused if not n.startswith(("model.encoder.layers.2.", "model.post_layernorm."))} == set()
    assert len(unused) == 18 and "model.post_layernorm.weight" in unused
    siglip = VisionTower(VisionConfig(kind="hf_siglip", hf_config=SiglipVisionConfig(**small).to_dict(), feature_layer=None))
    unused = siglip.unused_by_features()
    assert len(unused) == 11 and all(n.startswith("model.head.") for n in unused)  # the attention-pooling head


def test_hf_clip_and_siglip_towers_select_layers():
    from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel

    small = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2, image_size=32, patch_size=8)
    for kind, cfg_cls, model_cls, n_prefix in (("hf_clip", CLIPVisionConfig, CLIPVisionModel, 1), ("hf_siglip", SiglipVisionConfig, SiglipVisionModel, 0)):
        ref = model_cls(cfg_cls(**small)).eval()
        tower = VisionTower(VisionConfig(kind=kind, hf_config=ref.config.to_dict())).eval()
        tower.model.load_state_dict(ref.state_dict())
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            want = ref(pixel_values=x, output_hidden_states=True).hidden_states[-2][:, n_prefix:]
            assert torch.equal(tower.forward_features(x), want)
        assert tower.cfg.num_tokens == 16


def test_lm_weights_from_source_are_not_saved(tmp_path):
    cfg = tiny_vlm_config()
    model = VisionLanguageModel(cfg, lm=LanguageModel(cfg.lm))
    model.cfg.lm.weights = "source"
    assert not any(k.startswith("lm.") for k in model.state_to_save())
    assert {k.split(".")[0] for k in model.state_to_save()} == {"vision", "connector"}


def test_config_json_roundtrip_recomputes_derived():
    cfg = tiny_vlm_config(connector="pixel_shuffle")
    d = cfg.to_dict()
    assert "grid_size" not in d["vision"] and "hidden_size" not in d["lm"]
    again = VLMConfig.from_dict(json.loads(json.dumps(d)))
    assert again.vision.grid_size == 4 and again.connector.in_dim == 24 and again.connector.out_dim == 32
    assert again.image_seq_len == 4  # 16 patches / 2^2
    with pytest.raises(ValueError, match="unknown config keys"):
        VLMConfig.from_dict({**d, "bogus": 1})


def test_the_saved_chat_template_survives_loading(tmp_path):
    """Training renders prompts with the model's own template (plain ChatML for vlmkit-smol); loading must
    hand the same template to the tokenizer, or inference prompts carry SmolLM2's default system prompt,
    which the model never saw (this dropped every vlmkit-smol harness score before it was fixed)."""
    import dataclasses

    import vlmkit
    from tiny import smollm2_tokenizer, tiny_vlm_config

    from vlmkit.models.lm import LanguageModel
    from vlmkit.models.vlm import VisionLanguageModel
    from vlmkit.processing.chat import CHATML_TEMPLATE

    cfg = tiny_vlm_config()
    cfg = dataclasses.replace(cfg, lm=dataclasses.replace(cfg.lm, chat_template=CHATML_TEMPLATE))
    model = VisionLanguageModel(cfg, lm=LanguageModel(cfg.lm))
    assert model.cfg.lm.chat_template == CHATML_TEMPLATE
    model.save_pretrained(tmp_path, tokenizer=smollm2_tokenizer())
    assert VisionLanguageModel.from_pretrained(tmp_path).cfg.lm.chat_template == CHATML_TEMPLATE
    tok = vlmkit.load(tmp_path).tokenizer
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"  # no system prompt


def test_row_separator_lays_out_the_token_grid_by_rows():
    cfg = tiny_vlm_config()  # 32 px, patch 8: a 4 x 4 grid, which the MLP connector keeps
    assert cfg.image_layout == 16
    cfg.image_row_separator = "\n"
    assert cfg.image_grid("image_row_separator") == (4, 4)
    assert cfg.image_layout == [4, "\n"] * 4
    again = VLMConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again.image_layout == [4, "\n"] * 4
    old = {k: v for k, v in cfg.to_dict().items() if k != "image_row_separator"}  # configs saved before the field
    assert VLMConfig.from_dict(old).image_layout == 16
    shuffled = tiny_vlm_config(connector="pixel_shuffle")
    shuffled.image_row_separator = "\n"
    assert shuffled.image_layout == [2, "\n"] * 2
    for kind in ("qformer", "perceiver"):  # learned queries have no rows
        with pytest.raises(ValueError, match="square grid"):
            VLMConfig.from_dict({**tiny_vlm_config(connector=kind).to_dict(), "image_row_separator": "\n"})



def test_rows_and_columns_order_shows_the_grid_twice():
    """image_token_order="rows+columns": the raster, then the same visual tokens column by column, in the prompt,
    in the features and through the KV cache; refused where there is no grid or another layout."""
    cfg = tiny_vlm_config()  # a 4 x 4 grid
    cfg.image_token_order = "rows+columns"
    assert cfg.image_seq_len == cfg.image_layout == 32 and cfg.image_grid("x") == (4, 4)
    assert VLMConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))).image_layout == 32
    for bad in ({"image_token_order": "columns"}, {"image_token_order": "rows+columns", "image_row_separator": "\n"},
                {"image_token_order": "rows+columns", "image_positions": "grid"}):
        with pytest.raises(ValueError, match="image_token_order"):
            VLMConfig.from_dict({**tiny_vlm_config().to_dict(), **bad})
    with pytest.raises(ValueError, match="square grid"):
        VLMConfig.from_dict({**tiny_vlm_config(connector="perceiver").to_dict(), "image_token_order": "rows+columns"})

    plain, twice = tiny_vlm(seed=5), tiny_vlm(seed=5)
    twice.cfg.image_token_order = twice.model.cfg.image_token_order = "rows+columns"
    px = torch.randn(2, 3, 32, 32)
    raster = plain.model.encode_images(px)  # [2, 16, D]
    both = twice.model.encode_images(px)  # [2, 32, D]
    assert torch.equal(both[:, :16], raster)
    grid = raster.view(2, 4, 4, -1)
    assert torch.equal(both[:, 16 + 1], grid[:, 1, 0]) and torch.equal(both[:, 16 + 4], grid[:, 0, 1])  # column-major
    conv = _conv("What is in the image?")
    assert twice.prompt(conv).input_ids.count(twice.cfg.image_token_id) == 32
    cached = twice.generate([conv], max_new_tokens=8)[0]
    assert cached.token_ids == twice.generate([conv], max_new_tokens=8, use_cache=False)[0].token_ids
    assert cached.token_ids != plain.generate([conv], max_new_tokens=8)[0].token_ids
    from vlmkit.processing.tiling import TilingConfig

    with pytest.raises(VlmkitError, match="rows\\+columns"):
        twice.prompt(conv, tiling=TilingConfig.for_tower(twice.cfg.vision))

def test_row_separator_reaches_prompts_and_generation():
    plain, rows = tiny_vlm(seed=4), tiny_vlm(seed=4)
    rows.cfg.image_row_separator = "\n"
    conv = _conv("What is in the image?")
    img = rows.cfg.image_token_id

    def shown(ids):
        return "".join("#" if t == img else rows.tokenizer.decode([t]) for t in ids)

    p = rows.prompt(conv)
    assert p.input_ids.count(img) == 16
    assert "####\n####\n####\n####\n" in shown(p.input_ids)
    assert shown(p.input_ids).replace("####\n", "####", 4) == shown(plain.prompt(conv).input_ids).replace("#" * 16, "####" * 4)
    cached = rows.generate([conv], max_new_tokens=8)[0]
    assert cached.token_ids == rows.generate([conv], max_new_tokens=8, use_cache=False)[0].token_ids
    assert cached.token_ids != plain.generate([conv], max_new_tokens=8)[0].token_ids  # the LM reads the separators
    from vlmkit.processing.tiling import TilingConfig

    with pytest.raises(VlmkitError, match="image_row_separator"):
        rows.prompt(conv, tiling=TilingConfig.for_tower(rows.cfg.vision))
