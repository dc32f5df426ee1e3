"""Stage building: vision_init across resolutions, and the chat template a model carries."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from test_train_common import make_conversations, save_tiny_vlm, vlm_config

from vlmkit.errors import ModelLoadError


def _tiny_model(**vision_kw):
    from tiny import tiny_vlm_config

    from vlmkit.models.lm import LanguageModel
    from vlmkit.models.vlm import VisionLanguageModel

    cfg = tiny_vlm_config(**vision_kw)
    return VisionLanguageModel(cfg, lm=LanguageModel(cfg.lm))


def test_vision_init_resamples_position_embeddings(tmp_path):
    """A tower trained at 32 px initialises one at 64 px: same weights, position grid resampled."""
    from vlmkit.models.vlm import VisionLanguageModel
    from vlmkit.models.vision import resize_grid_embed
    from vlmkit.train.stages import copy_vision

    src = save_tiny_vlm(tmp_path / "src", seed=3)  # 32 px, patch 8 -> a 4x4 grid
    ref = VisionLanguageModel.from_pretrained(src).vision.model
    model = _tiny_model(image_size=64)
    copy_vision(model, src)
    ours = model.vision.model
    assert ours.pos_embed.shape == (1, 64, 24)
    assert torch.equal(ours.blocks[0].attn.qkv.weight, ref.blocks[0].attn.qkv.weight)
    assert torch.allclose(ours.pos_embed, resize_grid_embed(ref.pos_embed.detach(), 4, 8, 8))
    assert not torch.allclose(ours.pos_embed[:, :16], ref.pos_embed)  # it really was resampled
    # bicubic 4x4 -> 8x8 -> 4x4 is close to the identity on a smooth grid
    smooth = torch.linspace(0, 1, 16).reshape(1, 16, 1).expand(1, 16, 3).contiguous()
    assert torch.allclose(resize_grid_embed(resize_grid_embed(smooth, 4, 8, 8), 8, 4, 4), smooth, atol=0.05)


def test_vision_init_refuses_other_architectures(tmp_path):
    from vlmkit.train.stages import copy_vision

    src = save_tiny_vlm(tmp_path / "src")
    with pytest.raises(ModelLoadError, match="only image_size may differ"):
        copy_vision(_tiny_model(mlp_ratio=2.0), src)


def test_chatml_template_is_saved_with_the_model(tmp_path):
    """model.chat_template="chatml" drops SmolLM2's injected system prompt, in training and after loading."""
    from vlmkit.api import VLM
    from vlmkit.processing.chat import render
    from vlmkit.train.loop import train

    msgs = [{"role": "user", "content": "hi"}]
    cfg = vlm_config(tmp_path, **{"model": {"chat_template": "chatml"}, "train": {"max_steps": 1}})
    train(cfg)
    vlm = VLM.load(tmp_path / "run" / "final")
    assert render(vlm.tokenizer, msgs) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    base = VLM.load(tmp_path / "tiny-vlm")
    assert "You are a helpful AI assistant" in render(base.tokenizer, msgs)  # SmolLM2's own template


def test_unknown_chat_template_is_refused(tmp_path):
    from vlmkit.train.config import ConfigError
    from vlmkit.train.stages import build_vlm

    with pytest.raises(ConfigError, match="chat_template"):
        build_vlm(vlm_config(tmp_path, **{"model": {"chat_template": "llama3"}}))


def test_image_ablation_tells_a_blind_model_from_a_seeing_one(tmp_path):
    """A connector with constant output (the failure vlmkit-smol's first runs had) scores own, shuffled
    and blank images exactly alike; a random connector does not."""
    from tiny import tiny_vlm

    from vlmkit.train.evaluate import image_ablation

    vlm = tiny_vlm(seed=1)
    data = make_conversations(tmp_path / "data", n=8)
    seeing = image_ablation(vlm.model, vlm.tokenizer, data, n=8, batch_size=3)
    assert seeing["eval/loss_own"] != pytest.approx(seeing["eval/loss_shuffled"], abs=1e-4)
    assert seeing["eval/image_gain"] == pytest.approx(seeing["eval/loss_shuffled"] - seeing["eval/loss_own"])
    last = vlm.model.connector.linear_2  # the tiny model's mlp2x_gelu
    with torch.no_grad():  # the soft-prompt failure: the output no longer depends on the image
        last.weight.zero_()
        last.bias.normal_()
    blind = image_ablation(vlm.model, vlm.tokenizer, data, n=8, batch_size=3)
    assert blind["eval/loss_own"] == pytest.approx(blind["eval/loss_shuffled"], abs=1e-6)
    assert blind["eval/loss_own"] == pytest.approx(blind["eval/loss_blank"], abs=1e-6)
    assert blind["eval/visual_norm"] == pytest.approx(last.bias.norm().item(), rel=1e-5)


def test_training_eval_logs_the_image_ablation(tmp_path):
    import json

    from vlmkit.train.loop import train

    data = tmp_path / "data" / "conversations.jsonl"
    cfg = vlm_config(tmp_path, **{"train": {"max_steps": 2},
                                  "eval": {"data": str(make_eval(tmp_path)), "every": 2, "max_samples": 2,
                                           "ablation_data": str(data), "ablation_samples": 4}})
    train(cfg)
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "eval/image_gain" in r]
    assert len(logged) == 1 and logged[0]["eval/loss_own"] > 0


def make_eval(tmp_path):
    from test_train_common import write_jsonl

    return write_jsonl(tmp_path / "data" / "eval.jsonl",
                       [{"image": "images/red.png", "question": "What colour is this?", "answers": ["red"]}])


def test_lm_config_builds_a_small_decoder_of_the_source_family(tmp_path):
    """model.lm_config: a fresh small LM (SmolLM2's architecture and tokenizer) for captioning pretraining;
    its weights live in our checkpoint and reload exactly."""
    from vlmkit.models.vlm import VisionLanguageModel
    from vlmkit.train.config import ConfigError, from_dict
    from vlmkit.train.stages import build_vlm

    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
             "num_key_value_heads": 2, "head_dim": 16}
    model_spec = {"vision": {"image_size": 32, "patch_size": 8, "hidden_size": 24, "num_layers": 1, "num_heads": 2},
                  "connector": {"kind": "linear"}, "lm": "smollm2", "lm_config": small}
    cfg = from_dict({"stage": "instruct", "out_dir": str(tmp_path / "run"), "model": model_spec, "lm": {"freeze": False}})
    stage = build_vlm(cfg)
    lm_cfg = stage.model.cfg.lm
    assert (lm_cfg.hidden_size, lm_cfg.num_layers, lm_cfg.vocab_size) == (32, 1, 49152)
    assert lm_cfg.weights == "checkpoint" and lm_cfg.hf_config["model_type"] == "llama"
    assert stage.tokenizer.convert_tokens_to_ids("<|im_end|>") == 2
    stage.model.save_pretrained(tmp_path / "m", tokenizer=stage.tokenizer)
    back = VisionLanguageModel.from_pretrained(tmp_path / "m")
    for (k, a), b in zip(stage.model.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), k
    bad = from_dict({"stage": "instruct", "model": {**model_spec, "lm_config": {"hiden_size": 8}}})
    with pytest.raises(ConfigError, match="hiden_size"):
        build_vlm(bad)


def test_row_separator_is_trained_with_and_saved(tmp_path):
    """model.image_row_separator puts the separator between the rows of training prompts (unsupervised) and
    travels with the checkpoint, so inference lays images out as training did."""
    from vlmkit.api import VLM
    from vlmkit.train.loop import train
    from vlmkit.train.stages import build_vlm

    cfg = vlm_config(tmp_path, **{"model": {"image_row_separator": "\n"}, "train": {"max_steps": 1}})
    stage = build_vlm(cfg)
    row = {"image": "images/red.png", "conversations": [{"from": "human", "value": "<image>\nWhat colour is this?"},
                                                         {"from": "gpt", "value": "red"}]}
    sample = stage.encoder(row, tmp_path / "data")
    img = stage.model.cfg.image_token_id
    ids, labels = sample["input_ids"], sample["labels"]
    runs = [i for i in range(len(ids)) if ids[i] == img and (i == 0 or ids[i - 1] != img)]
    assert len(runs) == 4 and ids.count(img) == 16  # four rows of four
    nl = stage.tokenizer("\n", add_special_tokens=False)["input_ids"]
    for start in runs[1:]:
        assert ids[start - len(nl):start] == nl and labels[start - len(nl):start] == [-100] * len(nl)
    assert stage.tokenizer.decode([t for t, l in zip(ids, labels) if l != -100]).startswith("red")
    train(cfg)
    assert VLM.load(tmp_path / "run" / "final").cfg.image_layout == [4, "\n"] * 4
    assert VLM.load(tmp_path / "tiny-vlm").cfg.image_layout == 16  # the starting model is untouched


def test_grid_positions_train_and_are_saved(tmp_path):
    """model.image_positions="grid" reaches the training forward (the loss differs from sequence positions on the
    same batch) and travels with the checkpoint; a recipe that asks for it with row separators is refused."""
    from vlmkit.api import VLM
    from vlmkit.train.config import ConfigError
    from vlmkit.train.loop import train
    from vlmkit.train.stages import build_vlm

    cfg = vlm_config(tmp_path, **{"model": {"image_positions": "grid"}, "train": {"max_steps": 1}})
    grid, plain = build_vlm(cfg), build_vlm(vlm_config(tmp_path, train={"max_steps": 1}))
    row = {"image": "images/red.png", "conversations": [{"from": "human", "value": "<image>\nWhat colour is this?"},
                                                         {"from": "gpt", "value": "red"}]}
    batch = grid.collate([grid.encoder(row, tmp_path / "data")])
    info = SimpleNamespace(device=torch.device("cpu"), world_size=1)
    with torch.no_grad():
        loss_grid, loss_plain = (s.loss(s.train_module, batch, info)[0] for s in (grid, plain))
    assert abs(loss_grid.item() - loss_plain.item()) > 1e-4
    train(cfg)
    assert VLM.load(tmp_path / "run" / "final").cfg.image_positions == "grid"
    assert VLM.load(tmp_path / "tiny-vlm").cfg.image_positions == "sequence"  # the starting model is untouched
    bad = vlm_config(tmp_path, model={"image_positions": "grid", "image_row_separator": "\n"})
    with pytest.raises(ConfigError, match="model.image_row_separator and model.image_positions: .*leave image_row_separator empty"):
        build_vlm(bad)



def test_rows_and_columns_order_is_trained_with_and_saved(tmp_path):
    """model.image_token_order="rows+columns" doubles the visual positions of training prompts and travels with
    the checkpoint; with row separators it is refused."""
    from vlmkit.api import VLM
    from vlmkit.train.config import ConfigError
    from vlmkit.train.loop import train
    from vlmkit.train.stages import build_vlm

    cfg = vlm_config(tmp_path, **{"model": {"image_token_order": "rows+columns"}, "train": {"max_steps": 1}})
    stage = build_vlm(cfg)
    row = {"image": "images/red.png", "conversations": [{"from": "human", "value": "<image>\nWhat colour is this?"},
                                                         {"from": "gpt", "value": "red"}]}
    assert stage.encoder(row, tmp_path / "data")["input_ids"].count(stage.model.cfg.image_token_id) == 32
    train(cfg)
    assert VLM.load(tmp_path / "run" / "final").cfg.image_layout == 32
    assert VLM.load(tmp_path / "tiny-vlm").cfg.image_layout == 16  # the starting model is untouched
    bad = vlm_config(tmp_path, model={"image_token_order": "rows+columns", "image_row_separator": "\n"})
    with pytest.raises(ConfigError, match="image_token_order"):
        build_vlm(bad)

def test_position_words_come_from_the_lms_words_and_are_saved(tmp_path):
    """model.position_words fills each cell's place vector with the LM's embedding of its phrase ("top left"), the
    table travels with the checkpoint (strictly loaded), a frozen connector keeps it fixed, and 0 removes it."""
    from vlmkit.models.connectors import place_phrases
    from vlmkit.models.vlm import VisionLanguageModel
    from vlmkit.train.config import ConfigError
    from vlmkit.train.loop import train
    from vlmkit.train.stages import build_vlm

    save_tiny_vlm(tmp_path / "tiny-vlm", connector="pixel_shuffle")  # 4x4 patches -> 2x2 cells
    cfg = vlm_config(tmp_path, **{"model": {"position_words": 0.5}, "connector": {"freeze": True},
                                  "train": {"max_steps": 1}})
    stage = build_vlm(cfg)
    emb = stage.model.lm.model.get_input_embeddings().weight
    ids = stage.tokenizer(" bottom right", add_special_tokens=False)["input_ids"]
    table = stage.model.connector.pos_embed.detach()[0]  # [4 cells, D_lm]
    assert place_phrases(2)[3] == "bottom right" and len(ids) == 2
    torch.testing.assert_close(table[3], emb[ids].mean(0))
    assert not torch.allclose(table[0], table[3])
    train(cfg)
    back = VisionLanguageModel.from_pretrained(tmp_path / "run" / "final")
    assert back.cfg.connector.position_words == 0.5
    torch.testing.assert_close(back.connector.pos_embed.detach()[0], table)  # frozen with the connector
    off = build_vlm(vlm_config(tmp_path, **{"model": {"init": str(tmp_path / "run" / "final"), "position_words": 0.0}}))
    assert "connector.pos_embed" not in off.model.state_dict() and off.model.cfg.connector.position_words == 0
    with pytest.raises(ConfigError, match=r"position_words.*\[0, 1\)"):
        build_vlm(vlm_config(tmp_path, **{"model": {"init": str(tmp_path / "run" / "final"), "position_words": 1.0}}))
    save_tiny_vlm(tmp_path / "mlp")
    with pytest.raises(ConfigError, match="pixel_shuffle"):
        build_vlm(vlm_config(tmp_path, **{"model": {"init": str(tmp_path / "mlp"), "position_words": 0.5}}))


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tmp_path):
    from vlmkit.train.stages import build_vlm

    def loss_and_grads(checkpointing: bool):
        cfg = vlm_config(tmp_path, **{"train": {"gradient_checkpointing": checkpointing},
                                      "lora": {"enabled": True, "r": 4, "alpha": 8}})
        torch.manual_seed(0)  # the same LoRA init both times (the first vlm_config call draws to build the model)
        stage = build_vlm(cfg)
        assert stage.model.lm.model.is_gradient_checkpointing == checkpointing
        batch = stage.collate([stage.encoder(r, tmp_path / "data") for r in (
            {"image": f"images/{c}.png", "conversations": [{"from": "human", "value": "<image>\nWhat colour is this?"},
                                                           {"from": "gpt", "value": c}]} for c in ("red", "blue"))])
        loss = stage.model(batch["input_ids"], batch["pixel_values"], batch["attention_mask"], batch["labels"]).loss
        loss.backward()
        grads = {n: p.grad.clone() for n, p in stage.model.named_parameters() if p.grad is not None}
        assert any("lora" in n for n in grads)
        return loss.detach(), grads

    plain, ckpt = loss_and_grads(False), loss_and_grads(True)
    assert torch.allclose(plain[0], ckpt[0], atol=1e-6)
    assert plain[1].keys() == ckpt[1].keys()
    for n in plain[1]:
        assert torch.allclose(plain[1][n], ckpt[1][n], atol=1e-5, rtol=1e-4), n


@pytest.mark.parametrize("section, setting", [("train", {"gradient_checkpointing": True}),
                                              ("model", {"position_words": 0.5}),
                                              ("model", {"image_positions": "grid"})])
def test_vlm_only_settings_are_refused_for_the_contrastive_stage(tmp_path, section, setting):
    from vlmkit.train.config import ConfigError, from_dict
    from vlmkit.train.stages import build

    cfg = from_dict({"stage": "contrastive", "out_dir": str(tmp_path), section: setting})
    with pytest.raises(ConfigError, match=f"{next(iter(setting))} is for the VLM stages"):
        build(cfg)
