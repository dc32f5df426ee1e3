"""Checkpoints a run can resume from exactly.

    RUN/checkpoints/step-00000200/
        config.json, model.safetensors   the model, loadable as it is (vlmkit ask --model ...)
        optimizer.safetensors            optimizer tensors, keyed "<param name>/<state name>"
        state.json                       step, data position, RNG states, counters, param groups, best

Each checkpoint is written into a hidden temporary folder and renamed into
place, so a crash mid-write leaves only the previous checkpoints. The last
`keep_last` and the best (by the configured metric) are kept.
"""
from __future__ import annotations

import base64
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from ..errors import VlmkitError
from ..models.weights import load_strict, read_safetensors, save_safetensors

STATE = "state.json"
OPTIMIZER = "optimizer.safetensors"
PREFIX = "step-"


class CheckpointError(VlmkitError):
    """A checkpoint to resume from is missing, incomplete or does not match the run's model."""


# ---- RNG ----
def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode()


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def rng_state() -> dict:
    np_state = np.random.get_state()
    out = {
        "torch": _b64(torch.get_rng_state()),
        "python": json.loads(json.dumps(random.getstate())),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }
    if torch.cuda.is_available():
        out["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return out


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(_unb64(state["torch"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), *n[2:]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]])


# ---- optimizer ----
def optimizer_state(train_module, optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Full (unsharded) optimizer state keyed by parameter name: tensors for safetensors, the rest for JSON."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    sd = get_optimizer_state_dict(train_module, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    tensors, scalars = {}, {}
    for name, st in sd.get("state", {}).items():  # empty on all but the main process under FSDP
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{name}/{k}"] = v
            else:
                scalars[f"{name}/{k}"] = v
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd.get("param_groups", [])]
    return tensors, {"param_groups": groups, "scalars": scalars}


def load_optimizer_state(train_module, optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    state: dict[str, dict] = {}
    for key, v in list(tensors.items()) + list(meta.get("scalars", {}).items()):
        name, _, k = key.rpartition("/")
        state.setdefault(name, {})[k] = v
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]]
    now, groups = _check_params(train_module, optimizer, state, groups)
    # strict=False lets through the stateless parameters that _check_params has just accounted for
    set_optimizer_state_dict(train_module, optimizer, {"state": state, "param_groups": groups},
                             options=StateDictOptions(full_state_dict=True, strict=False))
    # torch gives every parameter zeroed state on the way in; drop it again for those that had none, so that their
    # first gradient counts as Adam's step 1, as it would have without the interruption
    for names, group in zip(now, optimizer.param_groups):
        for name, p in zip(names, group["params"]):
            if name not in state:
                optimizer.state.pop(p, None)


def _check_params(train_module, optimizer, state: dict, groups: list[dict]) -> tuple[list[list[str]], list[dict]]:
    """A trainable parameter that has had no gradient yet has no Adam state, and stays stateless on resume. One
    with no state that this run does not train at all is dropped from the checkpoint's groups: runs before session
    15 kept a tower's unread blocks (after the layer the connector reads) in the optimizer, which now leaves them
    out, and without state they were never changed. Anything else that does not line up (a parameter trained now but
    not then, state for one the run does not train) means the checkpoint is not this run's: an error.
    Returns the parameter names of each of the optimizer's groups, in its order, and the checkpoint's groups."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    # names as torch's optimizer state dicts spell them (wrappers stripped), group by group, in the optimizer's order;
    # not the full state dict, which under FSDP would gather to (and come back on) the main process only
    now = get_optimizer_state_dict(train_module, optimizer, options=StateDictOptions(full_state_dict=False))
    names = [list(g["params"]) for g in now["param_groups"]]
    trained_now = {n for g in names for n in g}
    never_moved = {n for g in groups for n in g["params"]} - trained_now - set(state)
    if never_moved:
        groups = [{**g, "params": [n for n in g["params"] if n not in never_moved]} for g in groups]
        groups = [g for g in groups if g["params"]]
    trained_then = {n for g in groups for n in g["params"]}
    if trained_now != trained_then:
        diff = sorted(trained_now ^ trained_then)
        raise CheckpointError(f"the checkpoint trained a different set of parameters than this run ({len(diff)} differ, "
                              f"e.g. {diff[:3]}); was a freeze flag or the LoRA setting changed?")
    unknown = sorted(set(state) - trained_then)
    if unknown:
        raise CheckpointError(f"the checkpoint has optimizer state for {len(unknown)} parameters it does not train, "
                              f"e.g. {unknown[:3]}")
    return names, groups


# ---- write / find / prune ----
def step_dir(root: Path, step: int) -> Path:
    return root / f"{PREFIX}{step:08d}"


def save(root: Path, step: int, write_model, opt_tensors: dict, state: dict) -> Path:
    """write_model(folder) writes config.json + model.safetensors; the rest is written here."""
    root.mkdir(parents=True, exist_ok=True)
    final = step_dir(root, step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write_model(tmp)
        save_safetensors(opt_tensors, tmp / OPTIMIZER, metadata={"format": "pt"})
        (tmp / STATE).write_text(json.dumps(state, indent=1) + "\n")
        if final.exists():  # re-saving a step (a resumed run reaching it again)
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def list_checkpoints(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / STATE).is_file())


def latest(root: Path) -> Path | None:
    ckpts = list_checkpoints(root)
    return ckpts[-1] if ckpts else None


def read_state(path: Path) -> dict:
    try:
        return json.loads((path / STATE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {path / STATE}: {e}") from None


def prune(root: Path, keep_last: int, best_step: int | None) -> None:
    ckpts = list_checkpoints(root)
    keep = set(ckpts[-keep_last:]) if keep_last > 0 else set()
    if best_step is not None:
        keep.add(step_dir(root, best_step))
    for p in ckpts:
        if p not in keep:
            shutil.rmtree(p, ignore_errors=True)


def load_weights(model, path: Path) -> None:
    """Strictly load a checkpoint's model.safetensors into an already-built model of the same shape."""
    if not (path / "model.safetensors").is_file():
        raise CheckpointError(f"{path} has no model.safetensors")
    load_strict(model, read_safetensors(path / "model.safetensors"), model._skip_prefixes(), source=str(path))
