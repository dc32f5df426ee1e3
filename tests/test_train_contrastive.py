"""Contrastive (LiT) training: our ViT learns against the locked MiniLM text tower; zero-shot accuracy rises."""
import json

from test_train_common import make_captions

from vlmkit.models.dual_encoder import DualEncoder
from vlmkit.models.weights import read_safetensors
from vlmkit.train.config import from_dict
from vlmkit.train.loop import train


def test_lit_learns_colours_and_saves_without_the_text_tower(tmp_path):
    caps = make_captions(tmp_path / "caps", n=16)
    cfg = from_dict({
        "stage": "contrastive", "out_dir": str(tmp_path / "run"),
        "model": {"vision": {"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_layers": 2, "num_heads": 2}, "loss": "siglip"},
        "data": {"train": [str(caps)]},
        "train": {"batch_size": 8, "lr": 3e-3, "max_steps": 30, "warmup_steps": 3},
        "eval": {"data": str(caps), "every": 30},
    })
    assert cfg.vision.freeze is False and cfg.lm.freeze is True  # LiT: the image tower trains, the text tower is locked
    res = train(cfg, progress=False)
    recs = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in recs if "loss" in r]
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    ev = [r for r in recs if "eval/accuracy" in r][-1]
    assert ev["eval/classes"] == 4 and ev["eval/accuracy"] == 1.0  # 4 colours, told apart zero-shot by caption
    keys = read_safetensors(res.final_dir / "model.safetensors").keys()
    assert not [k for k in keys if k.startswith("text.")] and "logit_bias" in keys
    model = DualEncoder.from_pretrained(res.final_dir)
    assert model.cfg.loss == "siglip" and model.logit_bias.item() != -10.0  # t and b were learned
