"""The training loop: one function, the same for every stage.

Each optimizer step takes `grad_accum` micro-batches, counts their supervised
tokens over all processes first (a step with none is never taken), divides
every loss sum by that count (the mean over answer tokens of the whole step),
clips, steps, and sets each group's lr from the step number alone (warmup then
cosine), so a resumed run needs no scheduler state. A NaN/inf loss or gradient
stops the run before the optimizer touches the weights: the last checkpoint
on disk is the last good one.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import VlmkitError
from ..files import write_text_atomic
from . import checkpoint as ckpt
from . import distributed as dist_
from .config import ConfigError, TrainConfig
from .data import DataPosition, EpochBatchSampler, TrainDataset, load_records, make_loader, micro_batches
from .evaluate import run_eval, write_jsonl
from .stages import Stage, build, global_count, param_groups

log = logging.getLogger(__name__)


class TrainingDiverged(VlmkitError):
    """The loss or the gradient became NaN or infinite."""


@dataclass
class RunState:
    step: int = 0
    pos: DataPosition = field(default_factory=DataPosition)
    samples: int = 0
    tokens: int = 0
    skipped: Counter = field(default_factory=Counter)
    empty_steps: int = 0
    best_value: float | None = None
    best_step: int | None = None
    last_loss: float | None = None


def lr_at(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Multiplier on the base lr: linear warmup over `warmup` steps, then cosine to min_ratio at `total`."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def use_bf16(mode: str, device: torch.device) -> bool:
    if mode == "on":
        return True
    if mode == "off" or device.type != "cuda":
        return False  # CPU bf16 autocast is slower than fp32 on most CPUs: off unless asked
    return torch.cuda.is_bf16_supported()


@dataclass
class RunResult:
    run_dir: Path
    state: RunState
    final_dir: Path | None
    summary: dict


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True, max_steps_this_run: int | None = None) -> RunResult:
    """Run (or resume) the configured stage. `max_steps_this_run` stops early, as if interrupted (tests)."""
    info = dist_.init(cfg.train.device, cfg.distributed.backend)
    try:
        result = _train(cfg, info, resume, progress, max_steps_this_run)
    except BaseException:
        dist_.shutdown(info, clean=False)
        raise
    dist_.shutdown(info)
    return result


def _train(cfg: TrainConfig, info: dist_.DistInfo, resume: bool, progress: bool, stop_after: int | None) -> RunResult:
    for name, path in (("eval.data", cfg.eval.data), ("eval.ablation_data", cfg.eval.ablation_data)):
        if path and not Path(path).is_file():  # else it shows only as a warning at each evaluation, steps later
            raise ConfigError(f"{name} not found: {path}")
    run_dir = Path(cfg.out_dir)
    ckpt_root = run_dir / "checkpoints"
    seed_everything(cfg.train.seed)
    stage = build(cfg)
    groups, counts = param_groups(stage, cfg)
    records = load_records(cfg.data.train, cfg.data.format, cfg.data.hf_format, cfg.data.image_column, cfg.data.text_column)
    dataset = TrainDataset(records, stage.encoder)
    sampler = EpochBatchSampler(len(dataset), cfg.train.batch_size, cfg.train.seed, cfg.data.shuffle, info.rank, info.world_size,
                                lengths=dataset.lengths() if cfg.data.group_by_length else None)
    loader = make_loader(dataset, sampler, stage.collate, cfg.data.num_workers, cfg.train.seed)
    per_epoch = sampler.num_batches()
    total = cfg.train.max_steps or max(1, (cfg.train.epochs * per_epoch) // cfg.train.grad_accum)

    state = RunState(skipped=Counter(records.bad_lines))
    start_ckpt = ckpt.latest(ckpt_root) if resume else None
    if resume and start_ckpt is None and info.is_main:
        log.warning("--resume: no checkpoint in %s, starting from the beginning", ckpt_root)
    if start_ckpt is not None:
        ckpt.load_weights(stage.model, start_ckpt)
    stage.model.to(info.device)
    stage.save_keys = list(stage.model.state_to_save())  # names, before FSDP turns parameters into shards
    module = dist_.wrap(stage.train_module, info, cfg.distributed.strategy, stage.shard_layers)
    fsdp = info.enabled and cfg.distributed.strategy == "fsdp"
    if fsdp:  # fully_shard replaced the parameters: the optimizer must hold the sharded ones
        groups, counts = param_groups(stage, cfg)
    optimizer = torch.optim.AdamW(groups, lr=cfg.train.lr, betas=cfg.train.betas, weight_decay=cfg.train.weight_decay)
    if start_ckpt is not None:
        _restore(start_ckpt, module, optimizer, state)
    trainable = [p for g in groups for p in g["params"]]
    bf16 = use_bf16(cfg.train.bf16, info.device)
    amp = (lambda: torch.autocast(info.device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / "train_config.json", json.dumps(cfg.to_dict(), indent=1) + "\n")
        log.info("trainable parameters: %s", {k: f"{v:,}" for k, v in counts.items()})
    metrics_path = run_dir / "metrics.jsonl"
    if start_ckpt is not None and info.is_main:
        _drop_metrics_after(metrics_path, state.step)
    stream = micro_batches(loader, sampler, state.pos)
    bar = _progress(progress and info.is_main, total, state.step)
    fallback: dict | None = None  # a batch this process can replay with weight 0 when its own share is empty
    steps_run = empty_run = 0
    t_last = time.perf_counter()

    while state.step < total and (stop_after is None or steps_run < stop_after):
        batches = [next(stream) for _ in range(cfg.train.grad_accum)]
        for b in batches:
            state.skipped.update(b["skipped"])
        n_global = global_count(batches, info)
        if n_global == 0:
            state.empty_steps += 1  # nothing supervised anywhere: never step on it
            empty_run += 1
            if empty_run > per_epoch // cfg.train.grad_accum + 1:  # a whole epoch with nothing usable
                raise VlmkitError(f"no usable training samples in a whole epoch; skipped: {dict(state.skipped)}")
            continue
        empty_run = 0
        lr_mult = lr_at(state.step, total, cfg.train.warmup_steps, cfg.train.min_lr_ratio)
        for g in optimizer.param_groups:
            g["lr"] = g["base_lr"] * lr_mult

        loss_sum, bad_loss, fallback = accumulate(module, stage, batches, info, n_global, amp, fallback)
        if dist_.any_flag(bad_loss, info):  # every process stops together, before the optimizer step
            _diverged(state, ckpt_root, "loss")
        global_loss = loss_sum / n_global if stage.loss_is_global else dist_.all_reduce_sum(loss_sum, info) / n_global

        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, cfg.train.clip_grad if cfg.train.clip_grad > 0 else float("inf"))
        if dist_.any_flag(not math.isfinite(float(grad_norm)), info):
            _diverged(state, ckpt_root, "gradient")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        state.step += 1
        steps_run += 1
        n_samples = int(dist_.all_reduce_sum(sum(b["n_samples"] for b in batches), info))
        n_tok = int(dist_.all_reduce_sum(sum(int(b["attention_mask"].sum()) if b.get("attention_mask") is not None else 0 for b in batches), info))
        state.samples += n_samples
        state.tokens += n_tok
        state.last_loss = global_loss
        now = time.perf_counter()
        dt, t_last = now - t_last, now
        rec = {"step": state.step, "loss": global_loss, "grad_norm": float(grad_norm), "samples_per_s": n_samples / dt,
               "tokens_per_s": n_tok / dt, "epoch": state.pos.epoch, "samples": state.samples, "time": time.time()}
        rec.update({f"lr/{g['name']}": g["lr"] for g in optimizer.param_groups if not g["name"].endswith("_no_decay")})
        if info.is_main and (state.step % cfg.train.log_every == 0 or state.step == total):
            write_jsonl(metrics_path, rec)
        if bar is not None:
            bar.set_postfix(loss=f"{global_loss:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}", sps=f"{n_samples / dt:.1f}")
            bar.update(1)

        metric = None
        if cfg.eval.data and cfg.eval.every and state.step % cfg.eval.every == 0:
            metric = _evaluate(cfg, stage, info, metrics_path, state.step)
        if (cfg.checkpoint.every and state.step % cfg.checkpoint.every == 0) or state.step == total:
            if metric is None and cfg.eval.data and state.step == total:
                metric = _evaluate(cfg, stage, info, metrics_path, state.step)
            _checkpoint(cfg, stage, module, optimizer, state, info, ckpt_root, metric)
        t_last = time.perf_counter()  # eval and checkpoint time is not training throughput

    if bar is not None:
        bar.close()
    finished = state.step >= total
    final_dir = _export(cfg, stage, run_dir, info, module) if finished else None
    summary = _summary(state, total, finished, final_dir)
    if info.is_main:
        write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=1) + "\n")
    return RunResult(run_dir, state, final_dir, summary)


def accumulate(module, stage: Stage, batches: list[dict], info, n_global: int, amp=contextlib.nullcontext,
               fallback: dict | None = None) -> tuple[float, bool, dict | None]:
    """Forward/backward every micro-batch of one step; gradients end up as those of the step's mean loss.

    Returns (this process's loss numerator, whether any was NaN/inf, the replay batch). Under DDP only
    the last micro-batch synchronises; a process whose micro-batch is empty replays an earlier one with
    weight 0, because collectives need every process to run forward and backward.
    """
    loss_sum, bad = 0.0, False
    for k, b in enumerate(batches):
        weight = 1.0
        if b["n_samples"] == 0:
            if not info.enabled:
                continue
            if fallback is None:
                raise VlmkitError("a process received only unusable samples before any usable one; check the data")
            b, weight = fallback, 0.0
        else:
            fallback = b
        sync = k == len(batches) - 1 or not info.enabled
        ctx = module.no_sync() if (not sync and hasattr(module, "no_sync")) else contextlib.nullcontext()
        with ctx:
            with amp():
                numerator, scale = stage.loss(module, b, info)
            bad |= not math.isfinite(float(numerator.detach()))
            (numerator * (scale * weight / n_global)).backward()  # NaN gradients are never applied
        loss_sum += float(numerator.detach()) * weight
    return loss_sum, bad, fallback


def _progress(on: bool, total: int, initial: int):
    if not on:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)


def _diverged(state: RunState, ckpt_root: Path, what: str) -> None:
    last = ckpt.latest(ckpt_root)
    where = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
    raise TrainingDiverged(f"the {what} became NaN or infinite at step {state.step + 1}; stopped before updating "
                           f"the weights; {where} (lower the lr or check the data)")


def _evaluate(cfg, stage: Stage, info, metrics_path: Path, step: int) -> dict | None:
    if not info.is_main:
        return None
    if info.enabled and cfg.distributed.strategy == "fsdp":
        log.warning("evaluation hooks need the whole model in one process: skipped under FSDP (evaluate final/ instead)")
        return None
    try:
        out = run_eval(cfg.stage, stage.model, stage.tokenizer, cfg.eval, info.device)
    except VlmkitError as e:
        log.warning("evaluation at step %d failed: %s", step, e)
        return None
    write_jsonl(metrics_path, {"step": step, **out, "time": time.time()})
    return out


def _checkpoint(cfg, stage: Stage, module, optimizer, state: RunState, info, root: Path, metric: dict | None) -> None:
    opt_tensors, opt_meta = ckpt.optimizer_state(module, optimizer)  # collective under FSDP: every process
    full = _full_weights(module, stage, info, cfg) if info.enabled and cfg.distributed.strategy == "fsdp" else None
    key = cfg.checkpoint.best_metric or "eval/accuracy"
    value = metric.get(key) if metric else None
    if value is None and not cfg.eval.data:
        value = -state.last_loss if cfg.checkpoint.best_mode == "max" else state.last_loss  # no eval: lowest loss
    if value is not None:
        better = state.best_value is None or (value > state.best_value if cfg.checkpoint.best_mode == "max" else value < state.best_value)
        if better:
            state.best_value, state.best_step = value, state.step
    if info.is_main:
        payload = {
            "step": state.step, "epoch": state.pos.epoch, "batch": state.pos.batch, "samples": state.samples,
            "tokens": state.tokens, "skipped": dict(state.skipped), "empty_steps": state.empty_steps,
            "best_value": state.best_value, "best_step": state.best_step, "last_loss": state.last_loss,
            "world_size": info.world_size, "rng": ckpt.rng_state(), "optimizer": opt_meta, "metric": metric,
        }
        ckpt.save(root, state.step, lambda d: _write_model(stage, d, full), opt_tensors, payload)
        ckpt.prune(root, cfg.checkpoint.keep_last, state.best_step)
    dist_.barrier(info)


def _full_weights(module, stage: Stage, info, cfg) -> dict:
    """FSDP: gather the unsharded weights (a collective) for the main process to write."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: sd[k] for k in stage.save_keys if k in sd} if info.is_main else {}


def _write_model(stage: Stage, path: Path, full: dict | None = None) -> None:
    if full is not None:  # FSDP: the model's own parameters are shards; write the gathered copy
        from ..models.weights import save_safetensors

        path.mkdir(parents=True, exist_ok=True)
        save_safetensors(full, path / "model.safetensors", metadata={"format": "pt", "vlmkit": "1"})
        stage.model.cfg.save(path / "config.json")
        if stage.tokenizer is not None and getattr(getattr(stage.model.cfg, "lm", None), "weights", "") == "checkpoint":
            stage.tokenizer.save_pretrained(path)
        return
    if stage.tokenizer is not None:
        stage.model.save_pretrained(path, tokenizer=stage.tokenizer)
    else:
        stage.model.save_pretrained(path)


def _drop_metrics_after(path: Path, step: int) -> None:
    """A resumed run repeats the steps after its checkpoint: drop what the interrupted run logged for them (and a
    half-written last line), so that the curves read as one run's."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line + "\n")
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    write_text_atomic(path, "".join(kept))


def _restore(path: Path, module, optimizer, state: RunState) -> None:
    s = ckpt.read_state(path)
    opt_tensors = ckpt.read_safetensors(path / ckpt.OPTIMIZER)
    ckpt.load_optimizer_state(module, optimizer, opt_tensors, s["optimizer"])
    state.step, state.samples, state.tokens = s["step"], s["samples"], s["tokens"]
    state.pos.epoch, state.pos.batch = s["epoch"], s["batch"]
    state.skipped = Counter(s["skipped"])
    state.empty_steps = s["empty_steps"]
    state.best_value, state.best_step, state.last_loss = s["best_value"], s["best_step"], s["last_loss"]
    ckpt.set_rng_state(s["rng"])


def _export(cfg: TrainConfig, stage: Stage, run_dir: Path, info, module) -> Path | None:
    """run_dir/final: the trained model, loadable with vlmkit.load (adapters merged if asked)."""
    fsdp = info.enabled and cfg.distributed.strategy == "fsdp"
    full = _full_weights(module, stage, info, cfg) if fsdp else None  # a collective: every process
    if not info.is_main:
        return None
    final = run_dir / "final"
    if cfg.lora.enabled and cfg.lora.merge_on_export and not fsdp:
        stage.model.merge_lora()
    _write_model(stage, final, full)
    return final


def _summary(state: RunState, total: int, finished: bool, final_dir: Path | None) -> dict:
    return {"steps": state.step, "total_steps": total, "finished": finished, "samples": state.samples,
            "tokens": state.tokens, "skipped": dict(state.skipped), "skipped_total": sum(state.skipped.values()),
            "empty_steps": state.empty_steps, "last_loss": state.last_loss, "best_step": state.best_step,
            "best_value": state.best_value, "final": str(final_dir) if final_dir else None}
