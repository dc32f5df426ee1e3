"""Scale-out on PyTorch's own engine: torchrun sets RANK / WORLD_SIZE / LOCAL_RANK, we wrap in DDP or FSDP.

    torchrun --nproc_per_node 2 -m vlmkit.train recipes/vlmkit-smol-stage2.toml

Gradients match one process on the same global batch because the loop divides
each process's loss sum by the global count of supervised tokens and scales by
world_size (DDP averages gradients over processes), and because contrastive
losses gather every process's embeddings (with gradient) before scoring.
"""
from __future__ import annotations

import gc
import os
import time
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(name)


def init(device: str = "auto", backend: str = "auto") -> DistInfo:
    """Join the process group torchrun describes in the environment; a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local)
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            if backend == "auto":
                backend = "nccl" if dev.type == "cuda" else "gloo"
            dist.init_process_group(backend=backend, rank=rank, world_size=world)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
    return DistInfo(rank, world, local, dev)


def shutdown(info: DistInfo, clean: bool = True) -> None:
    """Leave the process group. `clean=False` (this rank failed): skip the drain, since the other ranks may
    never reach the barrier, and an exiting rank is what lets torchrun stop the rest."""
    if info.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            if clean:
                # Gloo's destructor joins its worker threads while holding the GIL; a worker still dropping the
                # last reference to a finished collective's tensors needs the GIL too, and the process hangs
                # (pytorch/pytorch#75097, seen here once in a test). Drain every rank's queue first and let the
                # workers finish that cleanup before the destructor runs.
                dist.barrier()
                gc.collect()
                time.sleep(0.05)
            dist.destroy_process_group()


def wrap(module: nn.Module, info: DistInfo, strategy: str = "ddp", shard_layers: list[nn.Module] | None = None) -> nn.Module:
    """DDP, or FSDP2 (`fully_shard`) on each layer in shard_layers and then the root."""
    if not info.enabled:
        return module
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for layer in shard_layers or []:
            fully_shard(layer)
        fully_shard(module)
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(module, device_ids=[info.device.index] if info.device.type == "cuda" else None)


def all_reduce_sum(value: float | int, info: DistInfo) -> float:
    if not info.enabled:
        return value
    import torch.distributed as dist

    t = torch.tensor([float(value)], dtype=torch.float64, device=info.device if info.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return t.item()


def any_flag(flag: bool, info: DistInfo) -> bool:
    return all_reduce_sum(int(flag), info) > 0


def gather_with_grad(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """[B_local, D] -> [B_local * world, D] in rank order; gradients flow back to each process's slice."""
    if not info.enabled:
        return x
    import torch.distributed as dist
    from torch.distributed.nn.functional import all_gather

    # processes may hold different counts (skipped samples): pad to the largest, then cut each slice back
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(info.world_size)]
    dist.all_gather(sizes, torch.tensor([x.shape[0]], device=x.device))
    sizes = [int(s) for s in sizes]
    pad = max(sizes) - x.shape[0]
    if pad:
        x = torch.cat([x, x.new_zeros(pad, *x.shape[1:])])
    parts = all_gather(x)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)], dim=0)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if hasattr(module, "module") and isinstance(module, nn.parallel.DistributedDataParallel) else module
