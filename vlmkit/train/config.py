"""Training configs: nested dataclasses read from TOML (or YAML), with `--set a.b=value` overrides.

    stage = "instruct"                    # contrastive | align | instruct
    [model]  init = "runs/stage1/final"   # where the weights start
    [data]   train = ["data/shapes/train/conversations.jsonl"]
    [train]  batch_size = 8  lr = 2e-5  max_steps = 500
    [lm]     freeze = false  lr = 2e-5    # one table per tower: its own lr and freeze flag
    [lora]   enabled = true               # r=16, alpha=32 on q_proj/v_proj by default

Freeze flags left unset follow the stage (align: only the connector trains;
instruct: connector + LM; contrastive: the image tower and the projections).
"""
from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import VlmkitError

STAGES = ("contrastive", "align", "instruct")
DATA_FORMATS = ("auto", "conversations", "captions", "hf")


class ConfigError(VlmkitError):
    """A training config is unreadable, has an unknown key, or a value of the wrong kind."""


@dataclass
class ModelSpec:
    """Where the weights start. `init` is a vlmkit model directory (VLM or dual encoder) to continue from;
    without it a new model is built from `vision` / `connector` / `lm` (or `text` for a dual encoder)."""

    init: str | None = None
    vision_init: str | None = None  # copy the vision tower from this model dir (a dual encoder from the contrastive stage)
    vision: dict = field(default_factory=dict)  # VisionConfig fields for a new tower
    connector: dict = field(default_factory=lambda: {"kind": "mlp2x_gelu"})
    lm: str = "smollm2"  # LMConfig.source
    # Non-empty: a randomly initialised LM of `lm`'s family with these config fields replaced, e.g.
    # {num_hidden_layers = 2, hidden_size = 256, ...}; the tokenizer stays `lm`'s. A small decoder
    # trained from scratch with the tower teaches the tower what captions and answers need (CapPa).
    lm_config: dict = field(default_factory=dict)
    text: dict = field(default_factory=dict)  # TextTowerConfig fields (contrastive)
    embed_dim: int = 256
    text_proj: bool = False  # LiT: the locked text tower's space is the shared space
    loss: str = "siglip"  # contrastive: "clip" or "siglip"
    name: str = ""
    chat_template: str = ""  # "" keeps the model's; "chatml": plain ChatML, no default system prompt
    # None keeps the model's; "\n" writes a newline after each row of visual tokens (VLMConfig.image_row_separator)
    image_row_separator: str | None = None
    # None keeps the model's; "grid" gives visual tokens 2-D rotary positions (VLMConfig.image_positions)
    image_positions: str | None = None
    # None keeps the model's; "rows+columns" shows the LM each image's visual tokens by rows, then by columns
    # (VLMConfig.image_token_order)
    image_token_order: str | None = None
    # None keeps the model's; w in (0, 1) mixes each visual token with its cell's place in the LM's words
    # (ConnectorConfig.position_words; pixel_shuffle only), the table filled from the LM's embeddings
    position_words: float | None = None


@dataclass
class DataSpec:
    train: list[str] = field(default_factory=list)  # JSONL / JSON files, or HF dataset dirs/files
    format: str = "auto"  # conversations | captions | hf ("auto": from each file's first record)
    hf_format: str = ""  # hf: "parquet" | "imagefolder" | "json" ... ("": from the file suffix)
    image_column: str = "image"
    text_column: str = "text"
    max_length: int = 0  # tokens per sample; 0 = the LM's context. Longer samples are skipped, never cut
    num_workers: int = 0  # DataLoader worker processes that load images lazily
    shuffle: bool = True
    caption_prompt: str = "Describe the image briefly."  # align on caption pairs: the user turn
    group_by_length: bool = False  # batch samples of similar length together (less padding on mixed data)

    def __post_init__(self):
        if isinstance(self.train, str):
            self.train = [self.train]
        if self.format not in DATA_FORMATS:
            raise ConfigError(f"data.format must be one of {DATA_FORMATS}, got {self.format!r}")


@dataclass
class TowerSpec:
    """One optimizer param group. lr None = train.lr; freeze None = the stage's default."""

    lr: float | None = None
    freeze: bool | None = None
    weight_decay: float | None = None


@dataclass
class LoRASpec:
    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    merge_on_export: bool = False  # final/ holds the merged LM (weights="checkpoint") instead of adapters


@dataclass
class TrainSpec:
    batch_size: int = 8  # samples per optimizer step per process, before accumulation
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    max_steps: int = 0  # 0: run `epochs` epochs
    epochs: int = 1
    clip_grad: float = 1.0  # 0 disables
    bf16: str = "auto"  # "auto" (on where the accelerator has it; off on CPU), "on", "off"
    log_every: int = 1
    seed: int = 0
    device: str = "auto"
    # VLM stages: the LM's decoder layers recompute their activations in the backward pass. Stage 2 of vlmkit-smol
    # (batch 16, up to 512 tokens) holds about 12 GB at its peak without it, so two runs cannot share a 24 GB machine.
    gradient_checkpointing: bool = False

    def __post_init__(self):
        self.betas = tuple(self.betas)
        if self.bf16 not in ("auto", "on", "off"):
            raise ConfigError(f"train.bf16 must be auto, on or off, got {self.bf16!r}")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ConfigError("train.batch_size and train.grad_accum must be at least 1")


@dataclass
class CheckpointSpec:
    every: int = 0  # steps; 0 = only at the end
    keep_last: int = 2
    best_metric: str = ""  # a metrics key, e.g. "eval/accuracy"; "" = the eval hook's main metric
    best_mode: str = "max"


@dataclass
class EvalSpec:
    data: str = ""  # eval samples JSONL (instruct/align) or captions JSONL (contrastive)
    every: int = 0
    max_samples: int = 64
    max_new_tokens: int = 16
    batch_size: int = 8
    ablation_data: str = ""  # held-out conversations JSONL: also log the loss with own vs shuffled images
    ablation_samples: int = 32


@dataclass
class DistributedSpec:
    strategy: str = "ddp"  # "ddp" or "fsdp" (under torchrun)
    backend: str = "auto"  # gloo on CPU, nccl on CUDA

    def __post_init__(self):
        if self.strategy not in ("ddp", "fsdp"):
            raise ConfigError(f"distributed.strategy must be ddp or fsdp, got {self.strategy!r}")


@dataclass
class TrainConfig:
    stage: str = "instruct"
    out_dir: str = "runs/vlmkit"
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    vision: TowerSpec = field(default_factory=TowerSpec)
    connector: TowerSpec = field(default_factory=TowerSpec)  # contrastive: the projections and logit scale/bias
    lm: TowerSpec = field(default_factory=TowerSpec)
    lora: LoRASpec = field(default_factory=LoRASpec)
    checkpoint: CheckpointSpec = field(default_factory=CheckpointSpec)
    eval: EvalSpec = field(default_factory=EvalSpec)
    distributed: DistributedSpec = field(default_factory=DistributedSpec)

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ConfigError(f"stage must be one of {STAGES}, got {self.stage!r}")
        defaults = {  # (vision, connector, lm) frozen?
            "contrastive": (False, False, True),
            "align": (True, False, True),
            "instruct": (True, False, False),
        }[self.stage]
        for tower, frozen in zip((self.vision, self.connector, self.lm), defaults):
            if tower.freeze is None:
                tower.freeze = frozen
            if tower.lr is None:
                tower.lr = self.train.lr
            if tower.weight_decay is None:
                tower.weight_decay = self.train.weight_decay
        if self.lora.enabled and self.stage != "instruct":
            raise ConfigError("lora.enabled applies to stage = \"instruct\" only")
        if self.lora.enabled:
            self.lm.freeze = False  # the adapters train; peft freezes the base weights itself

    def to_dict(self) -> dict:
        return _to_dict(self)


# ---- reading ----
def load_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    raw = read_file(Path(path)) if path else {}
    for item in overrides:
        apply_override(raw, item)
    return from_dict(raw)


def read_file(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            data = tomllib.loads(text)
    except Exception as e:  # toml, yaml and json each raise their own error type
        raise ConfigError(f"{path}: cannot parse: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a table")
    return data


def apply_override(raw: dict, item: str) -> None:
    """`train.lr=1e-4`: the value is read as TOML (numbers, booleans, ["lists"]), else kept as a string."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects KEY=VALUE (like train.lr=1e-4), got {item!r}")
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    *parents, leaf = key.strip().split(".")
    node = raw
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: {p} is not a table")
    node[leaf] = parsed


def from_dict(raw: dict) -> TrainConfig:
    try:
        return _build(TrainConfig, raw, "")
    except TypeError as e:
        raise ConfigError(f"config: {e}") from None


def _build(cls, raw: dict, where: str):
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(where + k for k in unknown)}; "
                          f"{where.rstrip('.') or 'top level'} takes: {', '.join(fields)}")
    kw = {}
    for name, value in raw.items():
        default = getattr(cls(), name) if _has_defaults(cls) else None
        if dataclasses.is_dataclass(default) and not isinstance(default, type):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}{name} must be a table")
            kw[name] = _build(type(default), value, f"{where}{name}.")
        else:
            kw[name] = _check_type(value, default, f"{where}{name}")
    return cls(**kw)


def _has_defaults(cls) -> bool:
    return all(f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
               for f in dataclasses.fields(cls) if f.init)


def _check_type(value: Any, default: Any, key: str) -> Any:
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
    elif isinstance(default, float):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    elif isinstance(default, int):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
    elif isinstance(default, str) and not isinstance(value, str):
        raise ConfigError(f"{key} must be a string, got {value!r}")
    return value


def _to_dict(obj) -> dict:
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        out[f.name] = _to_dict(v) if dataclasses.is_dataclass(v) else (list(v) if isinstance(v, tuple) else v)
    return out
