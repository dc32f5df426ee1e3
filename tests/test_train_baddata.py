"""Bad samples are skipped and counted; empty steps are never taken; NaN stops the run, the last checkpoint intact."""
import json

import pytest
import torch
from test_train_common import make_images, vlm_config, write_jsonl

from vlmkit.errors import VlmkitError
from vlmkit.models.weights import read_safetensors
from vlmkit.train import checkpoint as ckpt
from vlmkit.train import stages
from vlmkit.train.loop import TrainingDiverged, train


def _good(i, img="images/red.png"):
    return {"id": f"g{i}", "image": img, "conversations": [{"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "red"}]}


def test_bad_samples_are_skipped_and_counted(tmp_path):
    data = tmp_path / "bad"
    make_images(data / "images")
    (data / "images" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    rows = [_good(0), _good(1),
            _good(2, img="images/missing.png"),
            _good(3, img="images/corrupt.png"),
            {"id": "noanswer", "image": "images/red.png", "conversations": [{"from": "human", "value": "<image>\nHi?"}]},
            {"id": "long", "image": "images/red.png",
             "conversations": [{"from": "human", "value": "<image>\n" + "word " * 400}, {"from": "gpt", "value": "ok"}]},
            _good(4), _good(5)]
    path = write_jsonl(data / "conversations.jsonl", rows)
    with open(path, "a") as f:
        f.write("{this is not json\n")
    cfg = vlm_config(tmp_path, data={"train": [str(path)], "max_length": 128, "shuffle": False},
                     train={"batch_size": 4, "max_steps": 0, "epochs": 1})
    res = train(cfg, progress=False)
    s = res.summary
    assert s["finished"] and s["steps"] == 2
    assert s["skipped"] == {"bad_record": 1, "missing_image": 1, "corrupt_image": 1, "no_assistant_turn": 1, "too_long": 1}
    assert s["samples"] == 4  # only the good ones were trained on
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["skipped_total"] == 5


def test_step_with_no_supervised_tokens_is_never_taken(tmp_path):
    data = tmp_path / "d"
    make_images(data / "images")
    bad = [_good(i, img="images/missing.png") for i in range(4)]
    path = write_jsonl(data / "conversations.jsonl", bad + [_good(i) for i in range(4)])
    cfg = vlm_config(tmp_path, data={"train": [str(path)], "shuffle": False}, train={"batch_size": 4, "max_steps": 1})
    before = read_safetensors(tmp_path / "tiny-vlm" / "model.safetensors")
    res = train(cfg, progress=False)
    assert res.summary["empty_steps"] == 1 and res.summary["steps"] == 1 and res.summary["samples"] == 4
    assert res.summary["skipped"] == {"missing_image": 4}
    # exactly one update happened (on the good batch): Adam's first step moves every trained weight by ~lr
    after = read_safetensors(res.final_dir / "model.safetensors")
    k = "connector.linear_1.weight"
    assert (after[k] - before[k]).abs().max().item() == pytest.approx(1e-3, rel=1e-3)


def test_all_bad_data_is_a_clear_error(tmp_path):
    data = tmp_path / "d"
    path = write_jsonl(data / "conversations.jsonl", [_good(i, img="images/missing.png") for i in range(4)])
    cfg = vlm_config(tmp_path, data={"train": [str(path)]}, train={"batch_size": 2, "max_steps": 3})
    with pytest.raises(VlmkitError, match="no usable training samples"):
        train(cfg, progress=False)


def test_nan_loss_stops_with_last_good_checkpoint_intact(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = stages._vlm_loss

    def poisoned(module, batch, info):
        calls["n"] += 1
        num, scale = real(module, batch, info)
        return (num * float("nan"), scale) if calls["n"] == 3 else (num, scale)

    monkeypatch.setattr(stages, "_vlm_loss", poisoned)
    cfg = vlm_config(tmp_path, train={"batch_size": 4, "max_steps": 4}, checkpoint={"every": 2, "keep_last": 3})
    with pytest.raises(TrainingDiverged, match="step 3.*step-00000002"):
        train(cfg, progress=False)
    root = tmp_path / "run" / "checkpoints"
    assert [p.name for p in ckpt.list_checkpoints(root)] == ["step-00000002"]
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp")]
    w = read_safetensors(root / "step-00000002" / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in w.values())
    # and the run resumes from it
    monkeypatch.setattr(stages, "_vlm_loss", real)
    res = train(cfg, resume=True, progress=False)
    assert res.summary["finished"] and res.summary["steps"] == 4


@pytest.mark.parametrize("key", ["data", "ablation_data"])
def test_a_missing_eval_file_is_refused_before_any_step(tmp_path, key):
    data = tmp_path / "d"
    make_images(data / "images")
    path = write_jsonl(data / "conversations.jsonl", [_good(i) for i in range(2)])
    cfg = vlm_config(tmp_path, data={"train": [str(path)]}, train={"batch_size": 2, "max_steps": 1},
                     eval={key: str(tmp_path / "nowhere" / "eval.jsonl"), "every": 1})
    with pytest.raises(VlmkitError, match=f"eval.{key} not found"):
        train(cfg, progress=False)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
