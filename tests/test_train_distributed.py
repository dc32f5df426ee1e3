"""Two gloo processes (DDP) produce the gradients of one process on the same global batch."""
import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from test_train_common import COLOURS, make_captions, make_images, save_tiny_vlm, write_jsonl

from vlmkit.train.config import from_dict

ANSWERS = ["red", "a green one", "blue, I think, with some white", "yellow", "it is red", "green", "a blue square", "yellow!"]


def _data(root: Path) -> Path:
    make_images(root / "images")
    names = list(COLOURS)
    # answers of different lengths, so the two processes hold different numbers of supervised tokens
    rows = [{"id": str(i), "image": f"images/{names[i % 4]}.png",
             "conversations": [{"from": "human", "value": "<image>\nWhat colour?" + " Be brief." * (i % 3)},
                               {"from": "gpt", "value": ANSWERS[i]}]} for i in range(8)]
    return write_jsonl(root / "conversations.jsonl", rows)


def _configs(tmp: Path, world: int) -> list:
    vlm = {"stage": "instruct", "out_dir": str(tmp / "run"), "model": {"init": str(tmp / "vlm")},
           "data": {"train": [str(tmp / "data" / "conversations.jsonl")]},
           "train": {"batch_size": 4 // world, "grad_accum": 2, "seed": 3}}
    dual = {"stage": "contrastive", "out_dir": str(tmp / "run2"),
            "model": {"vision": {"image_size": 32, "patch_size": 8, "hidden_size": 24, "num_layers": 2, "num_heads": 2},
                      "loss": "siglip"},
            "data": {"train": [str(tmp / "caps" / "captions.jsonl")]}, "train": {"batch_size": 4 // world, "seed": 3}}
    return [from_dict(vlm), from_dict(dual)]


def _grads(tmp: Path, world: int, rank: int) -> dict:
    from vlmkit.train import distributed as dist_
    from vlmkit.train.data import EpochBatchSampler, TrainDataset, load_records
    from vlmkit.train.loop import accumulate
    from vlmkit.train.stages import build, global_count, param_groups

    info = dist_.init("cpu", "gloo")
    assert info.world_size == world and info.rank == rank
    out = {}
    for cfg in _configs(tmp, world):
        torch.manual_seed(0)
        stage = build(cfg)
        groups, _ = param_groups(stage, cfg)
        module = dist_.wrap(stage.train_module, info, "ddp")
        ds = TrainDataset(load_records(cfg.data.train), stage.encoder)
        sampler = EpochBatchSampler(len(ds), cfg.train.batch_size, cfg.train.seed, True, info.rank, info.world_size)
        it = iter(sampler)
        batches = [stage.collate([ds[i] for i in next(it)]) for _ in range(cfg.train.grad_accum)]
        n = global_count(batches, info)
        accumulate(module, stage, batches, info, n)
        for name, p in stage.model.named_parameters():
            if p.grad is not None:
                out[f"{cfg.stage}/{name}"] = p.grad.detach().clone()
        out[f"{cfg.stage}/#n"] = torch.tensor(float(n))
    dist_.shutdown(info)
    return out


def _worker(rank: int, world: int, port: int, tmp: str):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from safetensors.torch import save_file

    g = _grads(Path(tmp), world, rank)
    save_file({k: v.contiguous() for k, v in g.items()}, f"{tmp}/grads-{rank}.safetensors")


def _run_two(fn, args, timeout: float = 300.0) -> None:
    """Two forked processes (they inherit the imported modules instead of importing torch and transformers
    again); a hang (pytorch/pytorch#75097: gloo's shutdown can deadlock) fails the test
    after `timeout` seconds instead of blocking the suite."""
    ctx = mp.start_processes(fn, args=args, nprocs=2, join=False, start_method="fork")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"two-process run still going after {timeout:.0f} s (killed)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_gradients_equal_single_process(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    save_tiny_vlm(tmp_path / "vlm")
    _data(tmp_path / "data")
    make_captions(tmp_path / "caps", n=8)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    single = _grads(tmp_path, 1, 0)

    _run_two(_worker, (2, _free_port(), str(tmp_path)))
    g0 = load_file(tmp_path / "grads-0.safetensors")
    g1 = load_file(tmp_path / "grads-1.safetensors")
    assert g0.keys() == single.keys() == g1.keys()
    for stage in ("instruct", "contrastive"):
        keys = [k for k in single if k.startswith(stage + "/") and not k.endswith("#n")]
        assert keys, stage
        assert g0[f"{stage}/#n"].item() == single[f"{stage}/#n"].item()
        for k in keys:
            scale = single[k].abs().max().item() + 1e-12
            assert torch.allclose(g0[k], g1[k], atol=1e-7), k  # DDP synchronised the processes
            assert (g0[k] - single[k]).abs().max().item() <= 1e-5 * max(1.0, scale), k
        assert any(single[k].abs().max() > 0 for k in keys)


def _fsdp_worker(rank: int, port: int, tmp: str, strategy: str = "fsdp"):
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from vlmkit.train.loop import train

    train(_fsdp_cfg(Path(tmp), "fsdp", batch=2, strategy=strategy), progress=False)  # 2 per process = the global 4


def _fsdp_cfg(tmp: Path, run: str, batch: int, strategy: str = "fsdp"):
    # the tower trains too: its last block is past the layer the connector reads, so it can get no gradient, which
    # DDP refuses unless the trainer leaves it out
    return from_dict({"stage": "instruct", "out_dir": str(tmp / run), "model": {"init": str(tmp / "vlm")},
                      "data": {"train": [str(tmp / "data" / "conversations.jsonl")]},
                      "train": {"batch_size": batch, "max_steps": 2, "lr": 1e-3, "seed": 3},
                      "vision": {"freeze": False}, "distributed": {"strategy": strategy}})


@pytest.mark.parametrize("strategy", ["fsdp", "ddp"])
def test_two_processes_train_as_one(tmp_path, monkeypatch, strategy):
    """DDP, and FSDP2 (fully_shard), on CPU/gloo, every tower trained: the weights and losses of one process;
    FSDP's sharded checkpoints gathered."""
    from vlmkit.models.weights import read_safetensors
    from vlmkit.train.loop import train

    save_tiny_vlm(tmp_path / "vlm")
    _data(tmp_path / "data")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    one = train(_fsdp_cfg(tmp_path, "one", batch=4), progress=False)
    _run_two(_fsdp_worker, (_free_port(), str(tmp_path), strategy))
    a = read_safetensors(one.final_dir / "model.safetensors")
    b = read_safetensors(tmp_path / "fsdp" / "final" / "model.safetensors")
    init = read_safetensors(tmp_path / "vlm" / "model.safetensors")
    assert any((a[k] - init[k]).abs().max() > 0 for k in a if k.startswith("vision.")), "the tower did not train"
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5
    la = [l for l in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    lb = [l for l in (tmp_path / "fsdp" / "metrics.jsonl").read_text().splitlines()]
    import json

    assert [json.loads(l)["loss"] for l in la] == pytest.approx([json.loads(l)["loss"] for l in lb], abs=1e-5)


def _fsdp_resume_worker(rank: int, port: int, tmp: str, resume: bool):
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from vlmkit.train.loop import train

    cfg = _fsdp_tower_cfg(Path(tmp), "fsdp", batch=2)
    if resume:
        train(cfg, resume=True, progress=False)
    else:
        train(cfg, progress=False, max_steps_this_run=1)


def _fsdp_tower_cfg(tmp: Path, run: str, batch: int):
    cfg = _fsdp_cfg(tmp, run, batch)
    cfg.checkpoint.every = 1
    return cfg


def test_fsdp_resume_matches_one_uninterrupted_process(tmp_path, monkeypatch):
    """Stopped after step 1 and resumed under FSDP, with stateless parameters in the checkpoint: the weights of one
    process that was never stopped."""
    from vlmkit.models.weights import read_safetensors
    from vlmkit.train.loop import train

    save_tiny_vlm(tmp_path / "vlm")
    _data(tmp_path / "data")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    one = train(_fsdp_tower_cfg(tmp_path, "one", batch=4), progress=False)
    _run_two(_fsdp_resume_worker, (_free_port(), str(tmp_path), False), timeout=120)
    _run_two(_fsdp_resume_worker, (_free_port(), str(tmp_path), True), timeout=120)
    a = read_safetensors(one.final_dir / "model.safetensors")
    b = read_safetensors(tmp_path / "fsdp" / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5
