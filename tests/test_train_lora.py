"""LoRA through peft: the checkpoint holds only the adapters (the LM comes from its source), and merging is exact."""
import torch
from tiny import tiny_lm_config

from vlmkit.config import ConnectorConfig, LMConfig, LoRAConfig, VisionConfig, VLMConfig
from vlmkit.models.lm import LanguageModel
from vlmkit.models.vlm import VisionLanguageModel
from vlmkit.models.weights import read_safetensors


def _source_lm(path):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = dict(tiny_lm_config(vocab_size=300))
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg))
    model.save_pretrained(path)
    return str(path)


def _logits(model, ids, pix):
    with torch.no_grad():
        return model(input_ids=ids, pixel_values=pix, attention_mask=torch.ones_like(ids)).logits


def test_lora_saves_only_adapters_and_reloads(tmp_path):
    src = _source_lm(tmp_path / "lm")
    cfg = VLMConfig(vision=VisionConfig(image_size=32, patch_size=8, hidden_size=24, num_layers=2, num_heads=2),
                    connector=ConnectorConfig(kind="mlp2x_gelu"), lm=LMConfig(source=src))
    model = VisionLanguageModel(cfg, lm=LanguageModel.from_source(src))
    model.add_lora(LoRAConfig())  # r=16, alpha=32, q_proj/v_proj
    trainable = [n for n, p in model.lm.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n and ("q_proj" in n or "v_proj" in n) for n in trainable)
    with torch.no_grad():  # peft starts B at zero; give the adapters a value so they matter
        for n, p in model.named_parameters():
            if ".lora_B" in n:
                p.normal_(0, 0.05)

    model.save_pretrained(tmp_path / "vlm")
    keys = read_safetensors(tmp_path / "vlm" / "model.safetensors").keys()
    lm_keys = [k for k in keys if k.startswith("lm.")]
    assert lm_keys and all(".lora_" in k for k in lm_keys)  # the base LM is not copied
    assert len(lm_keys) == 2 * 2 * 2  # 2 layers x (q, v) x (A, B)

    loaded = VisionLanguageModel.from_pretrained(tmp_path / "vlm")
    assert loaded.cfg.lm.lora == LoRAConfig()
    ids = torch.tensor([[5] + [cfg.image_token_id] * 16 + [7, 9, 11]])
    pix = torch.randn(1, 3, 32, 32)
    model.eval()
    ref = _logits(model, ids, pix)
    assert torch.allclose(_logits(loaded, ids, pix), ref, atol=1e-5)

    # merged for export: same outputs, no adapters left, the LM now stored in our checkpoint
    loaded.merge_lora()
    assert loaded.cfg.lm.lora is None and loaded.cfg.lm.weights == "checkpoint"
    assert torch.allclose(_logits(loaded, ids, pix), ref, atol=1e-4)
    loaded.save_pretrained(tmp_path / "merged")
    merged_keys = read_safetensors(tmp_path / "merged" / "model.safetensors").keys()
    assert not [k for k in merged_keys if ".lora_" in k] and any(k.startswith("lm.model.model.layers.") for k in merged_keys)
    again = VisionLanguageModel.from_pretrained(tmp_path / "merged")
    assert torch.allclose(_logits(again, ids, pix), ref, atol=1e-4)
    # without the adapters the model really differs (the test could fail)
    base = VisionLanguageModel(cfg, lm=LanguageModel.from_source(src))
    base.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("lm.")}, strict=False)
    assert not torch.allclose(_logits(base.eval(), ids, pix), ref, atol=1e-3)
