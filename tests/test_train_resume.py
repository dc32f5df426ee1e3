"""--resume continues exactly: stopping at step N and resuming gives the uninterrupted run's weights at step M."""
import json

import pytest
import torch
from test_train_common import vlm_config

from vlmkit.models.weights import read_safetensors
from vlmkit.train import checkpoint as ckpt
from vlmkit.train.loop import lr_at, train

STEPS, STOP = 4, 2


def _cfg(tmp_path, run, **extra):
    base = {"train": {"batch_size": 2, "grad_accum": 2, "lr": 3e-3, "max_steps": STEPS, "warmup_steps": 2, "seed": 7},
            "checkpoint": {"every": STOP, "keep_last": 1}}
    for k, v in extra.items():
        base.setdefault(k, {}).update(v)
    cfg = vlm_config(tmp_path, **base)
    cfg.out_dir = str(tmp_path / run)
    return cfg


VARIANTS = {
    "full": {},
    "lora": {"lora": {"enabled": True, "dropout": 0.1}, "data": {"num_workers": 2}},
    # the connector reads the tower's penultimate layer, so its last block can get no gradient: left out of training
    "tower": {"vision": {"freeze": False}},
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_resume_matches_uninterrupted(tmp_path, variant):
    extra = VARIANTS[variant]
    whole = train(_cfg(tmp_path, "whole", **extra), progress=False)

    cut = _cfg(tmp_path, "cut", **extra)
    first = train(cut, progress=False, max_steps_this_run=STOP)
    assert first.state.step == STOP and first.final_dir is None
    saved = ckpt.latest(tmp_path / "cut" / "checkpoints")
    assert saved.name == f"step-{STOP:08d}"
    assert {"config.json", "model.safetensors", "optimizer.safetensors", "state.json"} <= {p.name for p in saved.iterdir()}
    at_stop = read_safetensors(saved / "model.safetensors")
    state = json.loads((saved / "state.json").read_text())
    assert state["step"] == STOP and {"epoch", "batch", "rng"} <= set(state)
    # the interrupted run had logged a step past its checkpoint, and died halfway through the next line
    with open(tmp_path / "cut" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": STOP + 1, "loss": 123.0}) + '\n{"step": ')
    torch.manual_seed(12345)  # the resumed run must restore the RNG itself
    second = train(cut, resume=True, progress=False)
    assert second.state.step == STEPS

    a = read_safetensors(whole.final_dir / "model.safetensors")
    b = read_safetensors(second.final_dir / "model.safetensors")
    assert a.keys() == b.keys()
    if variant == "lora":
        assert any(".lora_" in k for k in a)
    moved = max((a[k] - at_stop[k]).abs().max().item() for k in a)
    assert moved > 1e-4  # steps after the resume point really changed the weights
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    # the optimizer state at step M matches too
    oa = read_safetensors(tmp_path / "whole" / "checkpoints" / f"step-{STEPS:08d}" / "optimizer.safetensors")
    ob = read_safetensors(tmp_path / "cut" / "checkpoints" / f"step-{STEPS:08d}" / "optimizer.safetensors")
    assert oa.keys() == ob.keys() and max((oa[k] - ob[k]).abs().max().item() for k in oa) <= 1e-6
    # the loss curves agree step by step
    la = [json.loads(l)["loss"] for l in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(l)["loss"] for l in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert len(la) == len(lb) == STEPS and max(abs(x - y) for x, y in zip(la, lb)) < 1e-5


def test_checkpoints_are_pruned_atomic_and_plotted(tmp_path):
    from vlmkit.train.plot import plot_run

    cfg = _cfg(tmp_path, "run", checkpoint={"every": 1, "keep_last": 2}, train={"max_steps": 4})
    res = train(cfg, progress=False)
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    best = res.state.best_step
    expected = sorted({f"step-{s:08d}" for s in (3, 4, best)})
    assert names == expected  # last 2 and the best; no temporary folders left behind
    pngs = plot_run(tmp_path / "run")
    assert [p.name for p in pngs] == ["loss.png", "lr.png"]
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    lrs = [json.loads(l)["lr/lm"] for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([3e-3 * lr_at(s, 4, 2, 0.0) for s in range(4)])
    assert lrs[0] < lrs[1] and lrs[1] > lrs[-1]  # warmup, then cosine decay


def test_resume_refuses_a_run_that_trains_other_parameters(tmp_path):
    cut = _cfg(tmp_path, "cut")
    train(cut, progress=False, max_steps_this_run=STOP)
    changed = _cfg(tmp_path, "cut", vision={"freeze": False})
    with pytest.raises(ckpt.CheckpointError, match="freeze flag"):
        train(changed, resume=True, progress=False)


def test_resume_from_a_run_that_kept_the_unread_block_in_its_optimizer(tmp_path, monkeypatch):
    """Runs before session 15 put the tower's unread last block in the optimizer, where it stayed without Adam state.
    Resuming one now (the block left out) continues as the uninterrupted run does."""
    from vlmkit.models.vision import VisionTower

    tower = {"vision": {"freeze": False}}
    whole = train(_cfg(tmp_path, "whole", **tower), progress=False)
    cut = _cfg(tmp_path, "cut", **tower)
    with monkeypatch.context() as m:
        m.setattr(VisionTower, "unused_by_features", lambda self: [])
        train(cut, progress=False, max_steps_this_run=STOP)
    saved = ckpt.latest(tmp_path / "cut" / "checkpoints")
    groups = json.loads((saved / "state.json").read_text())["optimizer"]["param_groups"]
    listed = {n for g in groups for n in g["params"]}
    assert "vision.model.norm.weight" in listed  # the old layout: the tower's unread final norm in the optimizer
    second = train(cut, resume=True, progress=False)
    a = read_safetensors(whole.final_dir / "model.safetensors")
    b = read_safetensors(second.final_dir / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


def test_a_trained_parameter_without_adam_state_stays_without_it_on_resume(tmp_path, monkeypatch):
    """A parameter in the optimizer that has had no gradient by the checkpoint has no Adam state; torch gives it
    zeroed state on loading, which must be dropped again so that its first gradient counts as Adam's step 1. Here
    the tower's unread block is kept in the optimizer (as before session 15) in both runs, so it never has state."""
    from vlmkit.models.vision import VisionTower

    monkeypatch.setattr(VisionTower, "unused_by_features", lambda self: [])
    tower = {"vision": {"freeze": False}}
    whole = train(_cfg(tmp_path, "whole", **tower), progress=False)
    cut = _cfg(tmp_path, "cut", **tower)
    train(cut, progress=False, max_steps_this_run=STOP)
    second = train(cut, resume=True, progress=False)
    a = read_safetensors(whole.final_dir / "model.safetensors")
    b = read_safetensors(second.final_dir / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    ob = read_safetensors(tmp_path / "cut" / "checkpoints" / f"step-{STEPS:08d}" / "optimizer.safetensors")
    assert not any(k.startswith("vision.model.norm.") for k in ob)  # still stateless after the resume
