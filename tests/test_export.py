"""vlmkit export: a half-precision copy of a model folder loads strictly and answers like the original."""
from __future__ import annotations

import torch
from safetensors import safe_open
from test_train_common import save_tiny_vlm

from vlmkit.cli import main
from vlmkit.models.vlm import VisionLanguageModel


def test_fp16_export_loads_and_matches(tmp_path):
    src = save_tiny_vlm(tmp_path / "src", seed=2)
    assert main(["export", str(src), "--out", str(tmp_path / "half")]) == 0
    with safe_open(tmp_path / "half" / "model.safetensors", "pt") as f:
        assert f.metadata()["stored_dtype"] == "float16"
        assert all(f.get_tensor(k).dtype == torch.float16 for k in f.keys())
    assert (tmp_path / "half" / "tokenizer.json").is_file()  # the tokenizer travels with the weights
    a, b = VisionLanguageModel.from_pretrained(src).eval(), VisionLanguageModel.from_pretrained(tmp_path / "half").eval()
    assert next(b.parameters()).dtype == torch.float32  # loads into the usual fp32 model
    ids = torch.randint(3, 1000, (1, a.cfg.image_seq_len + 8))
    pix = torch.rand(1, 3, 32, 32)
    ids[0, 1:1 + a.cfg.image_seq_len] = a.cfg.image_token_id
    with torch.no_grad():
        la, lb = a(ids, pixel_values=pix).logits, b(ids, pixel_values=pix).logits
    assert not torch.equal(la, lb)  # it really was rounded
    assert torch.allclose(la, lb, atol=0.05 * la.abs().max().item())


def test_export_refuses_a_non_model_folder_and_a_full_destination(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["export", str(tmp_path / "empty"), "--out", str(tmp_path / "x")]) == 2
    assert "not a model folder" in capsys.readouterr().err
    src = save_tiny_vlm(tmp_path / "src")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    assert main(["export", str(src), "--out", str(tmp_path / "full")]) == 2
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


def test_notice_travels_with_the_weights_and_the_demo_prints_it(tmp_path, capsys):
    """A model's caveat (undertrained, placeholder) lives in its config.json, not in a name check."""
    from vlmkit.api import load

    src = save_tiny_vlm(tmp_path / "src")
    assert load(src).cfg.notice == ""
    out = tmp_path / "warned"
    assert main(["export", str(src), "--out", str(out), "--notice", "misses every bar; see MODEL_CARD.md"]) == 0
    assert load(out).cfg.notice == "misses every bar; see MODEL_CARD.md"
    capsys.readouterr()
    assert main(["demo", "--model", str(out), "--max-tokens", "1"]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[1] == "NOTE: misses every bar; see MODEL_CARD.md"
    assert main(["demo", "--model", str(src), "--max-tokens", "1"]) == 0
    assert "NOTE" not in capsys.readouterr().out


def test_an_interrupted_export_leaves_no_folder_and_an_empty_target_is_filled(tmp_path, monkeypatch, capsys):
    """The export is built beside the target and renamed in: a failure half-way leaves nothing that looks like a
    model folder, and no hidden partial folder either."""
    import shutil

    src = save_tiny_vlm(tmp_path / "src")
    real_copy = shutil.copyfile

    def failing_copy(a, b, *args, **kw):
        if str(a).endswith("config.json"):
            raise OSError(28, "No space left on device")
        return real_copy(a, b, *args, **kw)

    monkeypatch.setattr(shutil, "copyfile", failing_copy)
    assert main(["export", str(src), "--out", str(tmp_path / "half")]) == 1
    assert capsys.readouterr().err.strip() == "vlmkit: error: [Errno 28] No space left on device"
    assert not (tmp_path / "half").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    monkeypatch.setattr(shutil, "copyfile", real_copy)
    (tmp_path / "empty").mkdir()
    assert main(["export", str(src), "--out", str(tmp_path / "empty")]) == 0
    assert {"config.json", "model.safetensors"} <= {p.name for p in (tmp_path / "empty").iterdir()}
    assert VisionLanguageModel.from_pretrained(tmp_path / "empty").cfg == VisionLanguageModel.from_pretrained(src).cfg
