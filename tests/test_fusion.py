"""Flamingo fusion mode: exact equality with the bare LM at init (with and without the KV cache),
image precedence, cache and batching invariants once the gates are open, save/load, and errors."""
import copy

import pytest
import torch
from transformers import DynamicCache

from tiny import smollm2_tokenizer, tiny_lm_config
from vlmkit.api import VLM
from vlmkit.config import ConnectorConfig, FusionConfig, LMConfig, VisionConfig, VLMConfig
from vlmkit.errors import ModelLoadError
from vlmkit.generation import GenerationConfig, generate_from_embeds
from vlmkit.models.fusion import FlamingoFusion, visible_images
from vlmkit.models.lm import LanguageModel
from vlmkit.models.vlm import VisionLanguageModel
from vlmkit.models.weights import read_safetensors, save_safetensors

IMG = -200


def fused_config(every: int = 1, last_image_only: bool = False, vocab_size: int = 320) -> VLMConfig:
    return VLMConfig(
        vision=VisionConfig(image_size=16, patch_size=4, hidden_size=24, num_layers=1, num_heads=2),
        connector=ConnectorConfig(kind="perceiver", num_queries=4, num_layers=1, num_heads=2),
        # tiny.py's wide init (0.5) makes attention mix strongly, so a wrong mask or cache shows
        lm=LMConfig(source="tiny", weights="checkpoint", hf_config=tiny_lm_config(vocab_size=vocab_size) | {"num_hidden_layers": 3}),
        fusion=FusionConfig(kind="flamingo", every=every, last_image_only=last_image_only),
    )


def fused(seed=0, open_gates=False, **kw) -> tuple[VisionLanguageModel, LanguageModel]:
    """(fused model, an untouched copy of its LM as it was before fusion)."""
    torch.manual_seed(seed)
    cfg = fused_config(**kw)
    lm = LanguageModel(cfg.lm)
    bare = copy.deepcopy(lm).eval()
    model = VisionLanguageModel(cfg, lm=lm).eval()
    if open_gates:
        with torch.no_grad():
            for blk in model.fusion.blocks.values():
                blk.attn_gate.fill_(1.0)
                blk.ff_gate.fill_(0.5)
    return model, bare


def pixels(n, seed=1):
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


IDS = torch.tensor([[5, 6, IMG, 7, 8, 9, IMG, 10, 11, 12]])


def test_at_init_logits_equal_the_bare_lm():
    model, bare = fused()
    with torch.no_grad():
        text = torch.tensor([[5, 6, 7, 8, 9]])
        assert (model(text).logits - bare.model(input_ids=text).logits).abs().max() <= 1e-6
        got = model(IDS, pixel_values=pixels(2)).logits
        # same sequence (the <image> markers included) through the LM alone
        ref = bare(model.embed_inputs(IDS, model.encode_images(pixels(2)))).logits
    assert (got - ref).abs().max() <= 1e-6
    assert got.abs().max() > 1  # a real comparison, not of zeros


def test_at_init_cached_decoding_equals_the_bare_lm():
    model, bare = fused()
    with torch.no_grad():
        embeds = model.embed_inputs(IDS, model.encode_images(pixels(2)))
        caches = DynamicCache(config=model.lm.model.config), DynamicCache(config=bare.model.config)
        outs = [lm(embeds, past_key_values=c, use_cache=True) for lm, c in zip((model.lm, bare), caches)]
        for step in range(5):
            assert (outs[0].logits - outs[1].logits).abs().max() <= 1e-6
            nxt = outs[1].logits[:, -1].argmax(-1, keepdim=True)
            outs = [lm(lm.embed_tokens(nxt), past_key_values=c, use_cache=True) for lm, c in zip((model.lm, bare), caches)]


class _Tok:
    pad_token_id = 0
    eos_token_id = 1

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


def test_open_gates_cache_equals_recompute_and_changes_the_output():
    model, bare = fused(open_gates=True)
    cfg = GenerationConfig(max_new_tokens=8)
    with torch.no_grad():
        embeds = model.embed_inputs(IDS, model.encode_images(pixels(2)))
        mask = torch.ones_like(IDS)
        cached = generate_from_embeds(model.lm, embeds, mask, _Tok(), cfg, set())[0].token_ids
        model.embed_inputs(IDS, model.encode_images(pixels(2)))  # rebind: a fresh context, no memoised K/V
        full = generate_from_embeds(model.lm, embeds, mask, _Tok(), GenerationConfig(max_new_tokens=8, use_cache=False), set())[0].token_ids
        plain = generate_from_embeds(bare, embeds, mask, _Tok(), cfg, set())[0].token_ids
    assert cached == full
    assert cached != plain  # the gates are open: the images now matter


def test_text_sees_only_images_before_it():
    model, _ = fused(open_gates=True)
    second = int((IDS[0] == IMG).nonzero()[1])
    with torch.no_grad():
        a = model(IDS, pixel_values=pixels(2, seed=1)).logits[0]
        changed = torch.cat([pixels(2, seed=1)[:1], pixels(1, seed=7)])  # replace only the second image
        b = model(IDS, pixel_values=changed).logits[0]
    assert (a[:second] - b[:second]).abs().max() <= 1e-6  # before its marker, the second image is invisible
    assert (a[second:] - b[second:]).abs().max() > 1e-3


def test_visibility_rule():
    marker_cols = torch.tensor([[2, 6], [4, 2**62]])  # row 1 has one image (second slot is padding)
    cols = torch.arange(8)
    vis = visible_images(marker_cols, cols)
    assert vis[0].int().tolist() == [[0, 0]] * 2 + [[1, 0]] * 4 + [[1, 1]] * 2
    assert vis[1].int().tolist() == [[0, 0]] * 4 + [[1, 0]] * 4
    last = visible_images(marker_cols, cols, last_only=True)
    assert last[0].int().tolist() == [[0, 0]] * 2 + [[1, 0]] * 4 + [[0, 1]] * 2
    assert (last[1] == vis[1]).all()


def test_api_generation_with_cache_batching_and_images_anywhere():
    """Through vlmkit.VLM: one marker per image; cached == recomputed; batched == one at a time."""
    model, _ = fused(open_gates=True, vocab_size=49152)  # SmolLM2's tokenizer
    vlm = VLM(model, smollm2_tokenizer())
    assert vlm.tokens_per_image == 1
    img = lambda s: (pixels(1, s)[0].permute(1, 2, 0).clamp(-1, 1).add(1).mul(127).byte().numpy())
    from PIL import Image

    pic = lambda s: Image.fromarray(img(s))
    convs = [
        [{"role": "user", "content": [{"type": "image", "image": pic(1)}, {"type": "text", "text": "What is it?"}]}],
        [{"role": "user", "content": [{"type": "text", "text": "First"}, {"type": "image", "image": pic(2)}]},
         {"role": "assistant", "content": "ok"},
         {"role": "user", "content": [{"type": "text", "text": "then"}, {"type": "image", "image": pic(3)}, {"type": "text", "text": "compare"}]}],
        [{"role": "user", "content": "No image here."}],
    ]
    assert vlm.prompt(convs[1]).input_ids.count(IMG) == 2
    batched = vlm.generate(convs, max_new_tokens=6)
    single = [vlm.generate([c], max_new_tokens=6)[0] for c in convs]
    recomputed = [vlm.generate([c], max_new_tokens=6, use_cache=False)[0] for c in convs]
    assert [r.token_ids for r in batched] == [r.token_ids for r in single] == [r.token_ids for r in recomputed]


def test_save_load_roundtrip_and_strictness(tmp_path):
    model, _ = fused(open_gates=True, every=2, last_image_only=True)
    model.save_pretrained(tmp_path / "m")
    again = VisionLanguageModel.from_pretrained(tmp_path / "m")
    assert again.cfg.fusion == model.cfg.fusion and again.fusion.layer_ids == [1]
    with torch.no_grad():
        a = model(IDS, pixel_values=pixels(2)).logits
        b = again(IDS, pixel_values=pixels(2)).logits
    assert torch.equal(a, b)
    tensors = read_safetensors(tmp_path / "m" / "model.safetensors")
    assert "fusion.blocks.1.attn_gate" in tensors and "fusion.image_marker" in tensors
    assert "lm.model.model.layers.1.self_attn.q_proj.weight" in tensors  # the LM keeps its own names
    del tensors["fusion.blocks.1.ff_gate"]
    save_safetensors(tensors, tmp_path / "m" / "model.safetensors")
    with pytest.raises(ModelLoadError, match="fusion.blocks.1.ff_gate"):
        VisionLanguageModel.from_pretrained(tmp_path / "m")


def test_mistakes_are_clear_errors():
    model, bare = fused()
    with pytest.raises(ValueError, match="2 image markers but 1 image"):
        model.embed_inputs(IDS, model.encode_images(pixels(1)))
    with pytest.raises(ValueError, match="already carries fusion"):
        FlamingoFusion(model.cfg.fusion, 32, 3).attach(model.lm)
    with pytest.raises(ValueError, match="exceeds the LM's 3 decoder layers"):
        FlamingoFusion(FusionConfig(kind="flamingo", every=4), 32, 3)
    assert set(model.lm.state_dict()) == set(bare.state_dict())  # hooks, not renamed layers


def test_api_refuses_tiling_merging_and_video_under_fusion():
    from PIL import Image

    from vlmkit.errors import VlmkitError
    from vlmkit.processing.tiling import TilingConfig

    model, _ = fused(vocab_size=49152)
    vlm = VLM(model, smollm2_tokenizer())
    msg = [{"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (16, 16))}, {"type": "text", "text": "hi"}]}]
    assert vlm.prompt(msg).input_ids.count(IMG) == 1  # a whole image is fine
    for kw in ({"tiling": TilingConfig.for_tower(model.cfg.vision)}, {"merge_threshold": 0.9}):
        with pytest.raises(VlmkitError, match="fusion"):
            vlm.prompt(msg, **kw)
    video = [{"role": "user", "content": [{"type": "video", "video": "clip.mp4"}, {"type": "text", "text": "what?"}]}]
    with pytest.raises(VlmkitError, match="video"):
        vlm.prompt(video)
