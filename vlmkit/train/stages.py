"""What differs between the stages: the model, its data encoder, its loss, what trains.

  contrastive  DualEncoder (our ViT + a locked text tower, LiT); CLIP or SigLIP loss
  align        VisionLanguageModel; only the connector trains (LLaVA stage 1)
  instruct     VisionLanguageModel; connector + LM (full, or LoRA through peft); vision optional

Each stage gives a `Stage`: the model, the module DDP wraps, the dataset encoder
and collator, and `loss(batch, info) -> (numerator, scale)` where numerator * scale
is this process's share of the step's mean loss (see losses.py).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..config import ConnectorConfig, LMConfig, LoRAConfig, VisionConfig, VLMConfig
from ..errors import ModelLoadError
from ..models.lm import pad_id
from ..processing.chat import CHATML_TEMPLATE
from .collate import CaptionEncoder, ConversationEncoder, LMCollator, collate_pairs
from .config import ConfigError, TrainConfig
from .distributed import DistInfo, all_reduce_sum, gather_with_grad
from .losses import contrastive_loss, lm_loss_sum_at, supervised_positions

log = logging.getLogger(__name__)


@dataclass
class Stage:
    model: nn.Module  # the plain model (save_pretrained / from_pretrained)
    train_module: nn.Module  # what DDP/FSDP wraps; its forward runs the trainable graph
    encoder: Callable  # (record, root) -> sample dict, in DataLoader workers
    collate: Callable
    loss: Callable  # (train_module, batch, info) -> (numerator tensor, scale float)
    towers: dict[str, list[str]]  # param group name -> parameter name prefixes in `model`
    tokenizer: object = None
    shard_layers: list | None = None  # FSDP units
    loss_is_global: bool = False  # True when every process computes the loss of the whole global batch
    save_keys: list | None = None  # the names save_pretrained writes (set by the loop before wrapping)
    unread: tuple[str, ...] = ()  # parameters the loss never reaches (a tower's blocks past the layer the VLM reads)


# ---- building ----
def build(cfg: TrainConfig) -> Stage:
    return build_contrastive(cfg) if cfg.stage == "contrastive" else build_vlm(cfg)


def build_vlm(cfg: TrainConfig) -> Stage:
    from ..models.lm import LanguageModel, load_tokenizer
    from ..models.vlm import VisionLanguageModel
    from ..processing.images import ImageProcessor

    m = cfg.model
    if m.init:
        model = VisionLanguageModel.from_pretrained(m.init)
        tokenizer = load_tokenizer(Path(m.init), model.cfg.lm)
    else:
        lm = small_lm(m.lm, m.lm_config) if m.lm_config else LanguageModel.from_source(m.lm)
        vcfg = VLMConfig(vision=VisionConfig(**m.vision), connector=ConnectorConfig(**m.connector),
                         lm=lm.cfg, name=m.name or "vlmkit")
        model = VisionLanguageModel(vcfg, lm=lm)
        tokenizer = load_tokenizer(None, model.cfg.lm)
    if m.name:
        model.cfg.name = m.name
    if m.chat_template:
        if m.chat_template != "chatml":
            raise ConfigError(f"model.chat_template must be \"\" or \"chatml\", got {m.chat_template!r}")
        model.cfg.lm.chat_template = tokenizer.chat_template = CHATML_TEMPLATE
    layout = {k: getattr(m, k) for k in ("image_row_separator", "image_positions", "image_token_order")
              if getattr(m, k) is not None}
    if layout:
        try:
            replace(model.cfg, **layout)  # checks them as loading the saved config will
        except ValueError as e:
            raise ConfigError(f"model.{' and model.'.join(layout)}: {e}") from None
        for k, v in layout.items():
            setattr(model.cfg, k, v)
    if m.position_words is not None:
        set_position_words(model, tokenizer, m.position_words)
    if m.vision_init:
        copy_vision(model, Path(m.vision_init))
    if cfg.lora.enabled:
        if model.cfg.lm.lora is None:
            l = cfg.lora
            model.add_lora(LoRAConfig(r=l.r, alpha=l.alpha, dropout=l.dropout, target_modules=list(l.target_modules)))
    elif not cfg.lm.freeze and model.cfg.lm.lora is None:
        model.cfg.lm.weights = "checkpoint"  # the LM's weights change: they must live in our checkpoint
    if cfg.train.gradient_checkpointing:
        # non-reentrant: the frozen embeddings' output needs no requires_grad for the LoRA weights to get gradients
        model.lm.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    max_len = cfg.data.max_length or model.cfg.lm.max_position_embeddings
    encoder = ConversationEncoder(tokenizer, ImageProcessor.from_vision_config(model.cfg.vision), model.cfg.image_token,
                                  model.cfg.image_token_id, model.cfg.image_layout, max_len, cfg.data.caption_prompt)
    pad = pad_id(tokenizer)
    towers = {"vision": ["vision."], "connector": ["connector.", "fusion."], "lm": ["lm."]}
    layers = _decoder_layers(model)
    # the VLM reads the tower at feature_layer, so what comes after it never gets a gradient: kept out of training
    unread = () if cfg.vision.freeze else tuple("vision." + n for n in model.vision.unused_by_features())
    return Stage(model, model, encoder, LMCollator(pad), _vlm_loss, towers, tokenizer, layers, unread=unread)


def word_vectors(model, tokenizer, phrases: list[str]) -> torch.Tensor:
    """[P, D_lm]: each phrase as the mean of the LM's input embeddings of its tokens (with a leading space, as the
    phrase reads inside a sentence)."""
    emb = model.lm.model.get_input_embeddings().weight.detach()  # [V, D_lm]
    return torch.stack([emb[tokenizer(" " + p, add_special_tokens=False)["input_ids"]].float().mean(0) for p in phrases])


def set_position_words(model, tokenizer, weight: float) -> None:
    """model.position_words: mix each visual token with its cell's place in the LM's words (ConnectorConfig
    .position_words). A model that has the table keeps it and takes the new weight; 0 removes it."""
    from ..models.connectors import place_phrases

    conn = model.connector
    if model.cfg.connector.kind != "pixel_shuffle":
        raise ConfigError(f"model.position_words needs a pixel_shuffle connector, not {model.cfg.connector.kind!r}")
    try:  # the weight's range is ConnectorConfig's rule, checked before anything changes
        replace(model.cfg.connector, position_words=weight)
    except ValueError as e:
        raise ConfigError(f"model.position_words: {e}") from None
    if hasattr(conn, "pos_embed"):
        conn.cfg.position_words = weight
        if not weight:
            del conn.pos_embed
    elif weight:
        conn.set_place_table(word_vectors(model, tokenizer, place_phrases(conn.cell_side)), weight)


def small_lm(source: str, overrides: dict):
    """A fresh LM of `source`'s architecture with some config fields replaced (the weights are random)."""
    from transformers import AutoConfig

    from ..models.lm import LanguageModel, hf_config_dict, resolve_source

    hc = hf_config_dict(AutoConfig.from_pretrained(resolve_source(source)))
    unknown = sorted(set(overrides) - set(hc))
    if unknown:
        raise ConfigError(f"model.lm_config: {unknown} are not fields of {source}'s config")
    hc.update(overrides)
    # its weights exist only in our checkpoint; the tokenizer still comes from `source`
    return LanguageModel(LMConfig(source=source, weights="checkpoint", hf_config=hc))


def _decoder_layers(model) -> list:
    base = model.lm.model
    base = base.get_base_model() if hasattr(base, "get_base_model") else base
    inner = getattr(base, "model", None)
    return list(getattr(inner, "layers", []) or [])


def _vlm_loss(train_module, batch, info: DistInfo):
    dev = info.device
    pix = batch["pixel_values"]
    labels = batch["labels"].to(dev)
    keep = supervised_positions(labels)
    if keep.numel() == 0:  # nothing supervised here: a zero that still reaches every trainable parameter's graph
        keep = torch.zeros(1, dtype=torch.long, device=dev)
    out = train_module(input_ids=batch["input_ids"].to(dev), attention_mask=batch["attention_mask"].to(dev),
                       pixel_values=pix.to(dev) if pix is not None else None, logits_to_keep=keep)
    # DDP averages gradients over processes: scale by world_size so the sum over tokens survives
    return lm_loss_sum_at(out.logits, labels, keep), float(info.world_size)


def read_vision_config(src: Path):
    """The VisionConfig of any vlmkit model dir: a dual encoder's or a VLM's."""
    from ..models.dual_encoder import is_dual_encoder_dir, read_dual_config
    from ..models.vlm import read_config

    return read_dual_config(src).vision if is_dual_encoder_dir(src) else read_config(src).vision


def copy_vision(model, src: Path) -> None:
    """Take the vision tower's weights from another vlmkit model (a dual encoder or a VLM)."""
    from ..config import to_dict
    from ..models.vision import resize_grid_embed
    from ..models.weights import load_strict, read_safetensors

    vcfg = read_vision_config(src)
    ours = model.cfg.vision
    # Only the resolution may differ: a tower pretrained small is commonly fine-tuned larger
    # (the position embeddings are resampled, as ViT/CLIP do when they change resolution).
    strip = lambda c: {k: v for k, v in to_dict(c).items() if k != "image_size"}
    if strip(vcfg) != strip(ours):
        raise ModelLoadError(f"model.vision_init {src}: its vision config differs from this model's "
                             f"(set model.vision to match: {to_dict(vcfg)}; only image_size may differ)")
    weights = {k[len("vision."):]: v for k, v in read_safetensors(src / "model.safetensors").items() if k.startswith("vision.")}
    if vcfg.image_size != ours.image_size:
        if ours.kind != "vit":
            raise ModelLoadError(f"model.vision_init {src}: resizing {ours.kind} towers is not supported")
        pe, g = weights["model.pos_embed"], vcfg.grid_size  # pe stored fp16 in exports: bicubic runs in fp32
        if pe.shape[1] != g * g:
            raise ModelLoadError(f"model.vision_init {src}: {pe.shape[1]} position embeddings for a {g}x{g} grid")
        weights["model.pos_embed"] = resize_grid_embed(pe.float(), g, ours.grid_size, ours.grid_size).to(pe.dtype)
        log.info("vision_init: position embeddings resampled %dpx -> %dpx", vcfg.image_size, ours.image_size)
    load_strict(model.vision, weights, source=str(src))


# ---- contrastive ----
class ContrastiveModule(nn.Module):
    """The trainable graph of a dual encoder, as one forward for DDP: text features come precomputed
    (and cached) when the text tower is locked."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values, text_features=None, texts=None):
        img = self.model.encode_image(pixel_values)  # [B, D]
        feats = text_features if text_features is not None else self.model.text(texts)
        return img, self.model.project_text(feats), self.model.scale(), self.model.logit_bias


class TextFeatureCache:
    """A locked tower gives the same features for the same caption: compute each once."""

    def __init__(self, model, max_items: int = 200_000):
        self.model, self.max_items, self.store = model, max_items, {}

    def __call__(self, texts: list[str], device) -> torch.Tensor:
        missing = list(dict.fromkeys(t for t in texts if t not in self.store))
        if missing:
            with torch.no_grad():
                feats = self.model.text(missing).float().cpu()
            if len(self.store) + len(missing) <= self.max_items:
                self.store.update(zip(missing, feats))
            else:
                return self.model.text(texts).detach().to(device)
        return torch.stack([self.store[t] for t in texts]).to(device)


def build_contrastive(cfg: TrainConfig) -> Stage:
    from ..models.dual_encoder import DualEncoder, DualEncoderConfig, TextTowerConfig
    from ..processing.images import ImageProcessor

    if cfg.train.gradient_checkpointing:
        raise ConfigError("train.gradient_checkpointing is for the VLM stages (it recomputes the LM's decoder layers)")
    m = cfg.model
    for k in ("position_words", "image_row_separator", "image_positions", "image_token_order"):
        if getattr(m, k) is not None:
            raise ConfigError(f"model.{k} is for the VLM stages (a dual encoder has no connector and no LM)")
    if m.init:
        model = DualEncoder.from_pretrained(m.init)
    else:
        if m.loss not in ("clip", "siglip"):
            raise ConfigError(f"model.loss must be clip or siglip, got {m.loss!r}")
        dcfg = DualEncoderConfig(vision=VisionConfig(**m.vision), text=TextTowerConfig(**m.text), embed_dim=m.embed_dim,
                                 text_proj=m.text_proj, loss=m.loss, name=m.name or "vlmkit-clip")
        model = DualEncoder(dcfg)
    if m.vision_init:
        copy_vision(model, Path(m.vision_init))
    if not cfg.lm.freeze:  # unlock the text tower: its weights then belong in our checkpoint
        model.cfg.text.frozen = False
        model.cfg.text.weights = "checkpoint"
        model.text.requires_grad_(True)
    model.train()
    cache = TextFeatureCache(model) if model.cfg.text.frozen else None
    kind = model.cfg.loss

    def loss(train_module, batch, info: DistInfo):
        dev = info.device
        pix = batch["pixel_values"].to(dev)
        if cache is not None:
            img, txt, scale, bias = train_module(pix, text_features=cache(batch["texts"], dev))
        else:
            img, txt, scale, bias = train_module(pix, texts=batch["texts"])
        img, txt = gather_with_grad(img, info), gather_with_grad(txt, info)
        # every process scores the same global batch; all_gather's backward sums the slices' gradients
        # across processes and DDP then averages, so no world_size factor here
        # identical captions ("a photo of a dress" twice in a batch) are positives, not negatives;
        # identical texts give identical embeddings, which works across processes without gathering strings
        with torch.no_grad():
            positives = (txt @ txt.t()) > 1 - 1e-5  # [B, B]
        return contrastive_loss(kind, img, txt, scale, bias, positives) * img.shape[0], 1.0

    towers = {"vision": ["vision."], "connector": ["image_proj.", "text_proj.", "logit_scale", "logit_bias"], "lm": ["text."]}
    return Stage(model, ContrastiveModule(model), CaptionEncoder(ImageProcessor.from_vision_config(model.cfg.vision)),
                 collate_pairs, loss, towers, None, list(getattr(model.vision.model, "blocks", []) or []) or None,
                 loss_is_global=True)


def global_count(batches: list[dict], info: DistInfo) -> int:
    """Supervised tokens (or pairs) in the whole step, over all micro-batches and processes."""
    return int(all_reduce_sum(sum(b["n_tokens"] for b in batches), info))


# ---- param groups ----
def param_groups(stage: Stage, cfg: TrainConfig) -> tuple[list[dict], dict[str, int]]:
    """One group per tower (and a no-decay twin for biases and norms); frozen towers get requires_grad=False."""
    specs = {"vision": cfg.vision, "connector": cfg.connector, "lm": cfg.lm}
    named = dict(stage.model.named_parameters())
    owner: dict[str, str] = {}
    for tower, prefixes in stage.towers.items():
        for name in named:
            if name.startswith(tuple(prefixes)):
                owner[name] = tower
    groups, counts = [], {}
    for tower, spec in specs.items():
        names = [n for n in named if owner.get(n) == tower]
        if spec.freeze:
            for n in names:
                named[n].requires_grad_(False)
            continue
        if tower == "lm" and _has_lora(stage.model):
            trainable = [n for n in names if ".lora_" in n]  # the base stays as peft froze it
        else:
            trainable = names
        unread = [n for n in trainable if n in stage.unread]
        if unread:
            log.info("%s: %d parameters (%s ...) feed nothing the loss reads; not trained", tower, len(unread),
                     ", ".join(unread[:2]))
            trainable = [n for n in trainable if n not in stage.unread]
            for n in unread:
                named[n].requires_grad_(False)
        for n in trainable:
            named[n].requires_grad_(True)
        decay = [named[n] for n in trainable if named[n].ndim >= 2]
        no_decay = [named[n] for n in trainable if named[n].ndim < 2]
        counts[tower] = sum(p.numel() for p in decay + no_decay)
        for suffix, params, wd in (("", decay, spec.weight_decay), ("_no_decay", no_decay, 0.0)):
            if params:
                groups.append({"params": params, "lr": spec.lr, "base_lr": spec.lr, "weight_decay": wd, "name": tower + suffix})
    if not groups:
        raise ConfigError("every tower is frozen: nothing would train")
    unowned = [n for n in named if n not in owner and named[n].requires_grad]
    for n in unowned:  # e.g. a box head fitted after training (scripts/fit_box_head.py): kept as it is
        named[n].requires_grad_(False)
    if unowned:  # one line, not one per tensor: a box head alone has dozens
        log.warning("%d parameters belong to no tower and stay frozen: %s", len(unowned),
                    ", ".join(sorted({n.split(".")[0] for n in unowned})))
    return groups, counts


def _has_lora(model) -> bool:
    return getattr(getattr(getattr(model, "cfg", None), "lm", None), "lora", None) is not None
