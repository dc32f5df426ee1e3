"""vlmkit loads transformers-saved LLaVA and Idefics3 checkpoints and matches transformers exactly."""
import pytest
import torch

from hf_tiny import save_tiny_idefics3, save_tiny_llava
from vlmkit.convert import load_hf_vlm
from vlmkit.errors import ModelLoadError
from vlmkit.generation import GenerationConfig, generate_from_embeds


class _Tok:  # generation needs only decode / pad / eos
    pad_token_id = 0
    eos_token_id = 1

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


def _prompt(image_token_id, n_img_tokens, n_images=1):
    g = torch.Generator().manual_seed(1)
    text = lambda n: torch.randint(3, 300, (n,), generator=g).tolist()
    ids = text(5)
    for _ in range(n_images):
        ids += [image_token_id] * n_img_tokens + text(4)
    return torch.tensor([ids])


def _greedy_hf(hf, **inputs):
    out = hf.generate(**inputs, max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0, min_new_tokens=8)
    return out[0, inputs["input_ids"].shape[1]:].tolist()


def _greedy_ours(model, input_ids, pixel_values):
    embeds = model.embed_inputs(input_ids, model.encode_images(pixel_values))
    cfg = GenerationConfig(max_new_tokens=8)
    return generate_from_embeds(model.lm, embeds, torch.ones_like(input_ids), _Tok(), cfg, eos_token_ids=set())[0].token_ids


def test_llava_parity(tmp_path):
    from transformers import LlavaForConditionalGeneration

    path = save_tiny_llava(tmp_path / "llava")
    hf = LlavaForConditionalGeneration.from_pretrained(path).eval()
    ours, _ = load_hf_vlm(path, "llava")
    assert ours.cfg.image_seq_len == 16  # (56/14)^2, CLS dropped
    input_ids = _prompt(319, 16, n_images=2)
    pixel_values = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        ref = hf(input_ids=input_ids, pixel_values=pixel_values).logits
        got = ours(input_ids=input_ids, pixel_values=pixel_values).logits
    assert (ref - got).abs().max().item() <= 1e-4
    assert _greedy_ours(ours, input_ids, pixel_values) == _greedy_hf(hf, input_ids=input_ids, pixel_values=pixel_values)


def test_idefics3_parity(tmp_path):
    from transformers import Idefics3ForConditionalGeneration

    path = save_tiny_idefics3(tmp_path / "idefics3")
    hf = Idefics3ForConditionalGeneration.from_pretrained(path).eval()
    ours, _ = load_hf_vlm(path, "idefics3")
    assert ours.cfg.image_seq_len == 16  # (32/4)^2 / 2^2
    input_ids = _prompt(318, 16, n_images=2)
    pixel_values = torch.randn(1, 2, 3, 32, 32)  # transformers: [B, N_images, 3, H, W]
    with torch.no_grad():
        ref = hf(input_ids=input_ids, pixel_values=pixel_values).logits
        got = ours(input_ids=input_ids, pixel_values=pixel_values[0]).logits
    assert (ref - got).abs().max().item() <= 1e-4
    assert _greedy_ours(ours, input_ids, pixel_values[0]) == _greedy_hf(hf, input_ids=input_ids, pixel_values=pixel_values)


def test_converter_rejects_renamed_key(tmp_path):
    from safetensors.torch import load_file, save_file

    path = save_tiny_llava(tmp_path / "llava")
    w = load_file(path / "model.safetensors")
    k = next(k for k in w if "linear_1.weight" in k)
    w[k.replace("linear_1", "linear_one")] = w.pop(k)
    save_file(w, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="linear_one"):
        load_hf_vlm(path, "llava")


def test_converter_rejects_pickles(tmp_path):
    path = save_tiny_llava(tmp_path / "llava")
    (path / "model.safetensors").rename(path / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="safetensors only"):
        load_hf_vlm(path, "llava")
