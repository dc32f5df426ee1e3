"""VisionLanguageModel: vision tower -> connector -> LM, merged at the image placeholders."""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..config import VLMConfig
from ..errors import ModelLoadError
from .box_head import BoxHead
from .connectors import build_connector
from .fusion import build_fusion
from .lm import LanguageModel
from .vision import VisionTower
from .weights import expected_state, load_strict, read_model_dir_config, read_safetensors, save_safetensors

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


class VisionLanguageModel(nn.Module):
    def __init__(self, cfg: VLMConfig, lm: LanguageModel | None = None):
        super().__init__()
        if lm is None:
            if cfg.lm.weights == "source" or not cfg.lm.hf_config:
                lm = LanguageModel.from_source(cfg.lm.source)
            else:
                lm = LanguageModel(cfg.lm)
        # The LM's own config is the truth for its widths; re-derive the connector from it.
        cfg = dataclasses.replace(cfg, lm=_with_hf(cfg.lm, lm))
        self.cfg = cfg
        self.vision = VisionTower(cfg.vision)
        self.connector = build_connector(cfg.connector)
        self.lm = lm
        if cfg.lm.lora is not None:
            self._wrap_lora(cfg.lm.lora)
        # Flamingo mode: gated cross-attention hooked into the LM's decoder layers (models/fusion.py)
        self.fusion = build_fusion(cfg, lm)
        # the coordinates after each `<box>`, from the tower's patches (models/box_head.py)
        self.box_head = BoxHead(cfg.box_head) if cfg.box_head is not None else None
        if self.box_head is not None and self.lm._final_norm is None:
            raise ValueError(f"box_head reads the LM's final norm, which {type(lm.model).__name__} does not name")

    # ---- forward pieces ----
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[N_images, 3, H, W] -> [N_images, N_visual, D_lm]."""
        feats = self.connector(self.vision.forward_features(pixel_values))  # [N_images, R * C, D_lm], raster
        if self.cfg.image_token_order == "rows+columns":
            rows, cols = self.cfg.image_grid("image_token_order='rows+columns'")
            by_column = feats.unflatten(1, (rows, cols)).transpose(1, 2).flatten(1, 2)  # [N_images, C * R, D_lm]
            feats = torch.cat([feats, by_column], dim=1)  # [N_images, 2 * R * C, D_lm]
        return feats

    def embed_inputs(self, input_ids: torch.Tensor, image_features: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings with image placeholders replaced, in order, by visual tokens.

        input_ids [B, T] holds cfg.image_token_id at each visual position;
        image_features [N_images, N_visual, D_lm] fills them row-major.
        In fusion mode each image has one marker position instead, and the features are bound
        to the LM's cross-attention for the LM calls that follow (see models/fusion.py).
        """
        if self.fusion is not None:
            return self.fusion.embed_inputs(self.lm, input_ids, self.cfg.image_token_id, image_features)
        is_image = input_ids == self.cfg.image_token_id
        embeds = self.lm.embed_tokens(input_ids.masked_fill(is_image, 0))  # [B, T, D_lm]
        n_slots = int(is_image.sum())
        n_feats = 0 if image_features is None else image_features.shape[0] * image_features.shape[1]
        if n_slots != n_feats:
            raise ValueError(f"prompt has {n_slots} image positions but images give {n_feats} visual tokens")
        if n_slots:
            feats = image_features.reshape(-1, embeds.shape[-1]).to(embeds.dtype)
            embeds = embeds.masked_scatter(is_image.unsqueeze(-1), feats)
        return embeds

    def position_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The LM's position ids for a (left-padded) batch: [B, T], or [3, B, T] (t, row, col) under
        cfg.image_positions == "grid" (models/rope2d.py)."""
        if self.cfg.image_positions == "grid":
            from .rope2d import grid_position_ids

            return grid_position_ids(input_ids, attention_mask, self.cfg.image_token_id,
                                     self.cfg.image_grid("image_positions='grid'"))
        if attention_mask is None:
            return torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # left padding safe

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
    ):
        """Logits [B, T, V]; with labels, the loss averaged over supervised (label != -100) tokens.
        logits_to_keep (transformers' meaning): an int keeps the last n positions, a 1-D index tensor
        those positions; training passes the supervised positions only (see train/losses.py)."""
        if image_features is None and pixel_values is not None:
            image_features = self.encode_images(pixel_values)
        embeds = self.embed_inputs(input_ids, image_features)
        if position_ids is None:
            position_ids = self.position_ids(input_ids, attention_mask)
        out = self.lm(embeds, attention_mask=attention_mask, position_ids=position_ids, logits_to_keep=logits_to_keep)
        if labels is not None:
            if not (isinstance(logits_to_keep, int) and logits_to_keep == 0):
                raise ValueError("labels need the logits of every position (logits_to_keep=0)")
            # shift so that position t predicts token t+1; mean over answer tokens only
            out.loss = F.cross_entropy(
                out.logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100
            )
        return out

    # ---- save / load ----
    def _skip_prefixes(self) -> tuple[str, ...]:
        if self.cfg.lm.weights != "source":
            return ()
        if self.cfg.lm.lora is None:
            return ("lm.",)
        # LoRA on a source LM: the base weights come from the source, only the adapters are ours
        return tuple(k for k in self.state_dict() if k.startswith("lm.") and ".lora_" not in k)

    # ---- LoRA (peft) ----
    def _wrap_lora(self, lora) -> None:
        from peft import LoraConfig, get_peft_model

        peft_cfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=list(lora.target_modules))
        with warnings.catch_warnings():
            # peft reads transformers' deprecated `is_gradient_checkpointing` (a FutureWarning at every load of a
            # LoRA model): a notice for peft, not something a vlmkit user can act on
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
            self.lm.model = get_peft_model(self.lm.model, peft_cfg)  # freezes the base weights

    def add_lora(self, lora) -> None:
        """Put LoRA adapters (a config.LoRAConfig) on the LM; save_pretrained then stores only the adapters."""
        if self.cfg.lm.lora is not None:
            raise ValueError("the LM already has LoRA adapters")
        self._wrap_lora(lora)
        self.cfg.lm.lora = lora

    def merge_lora(self) -> None:
        """Fold the adapters into the LM weights (for export): the LM's weights then live in our checkpoint."""
        if self.cfg.lm.lora is None:
            return
        self.lm.model = self.lm.model.merge_and_unload()
        self.cfg.lm.lora = None
        self.cfg.lm.weights = "checkpoint"

    def state_to_save(self) -> dict[str, torch.Tensor]:
        return expected_state(self, self._skip_prefixes())

    def save_pretrained(self, path: str | Path, tokenizer=None) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_safetensors(self.state_to_save(), path / WEIGHTS_NAME, metadata={"format": "pt", "vlmkit": "1"})
        self.cfg.save(path / CONFIG_NAME)
        if tokenizer is not None and self.cfg.lm.weights == "checkpoint":
            tokenizer.save_pretrained(path)

    @classmethod
    def from_pretrained(cls, path: str | Path, lm: LanguageModel | None = None) -> "VisionLanguageModel":
        path = Path(path)
        cfg = read_config(path)
        model = cls(cfg, lm=lm)
        load_strict(model, read_safetensors(path / WEIGHTS_NAME), model._skip_prefixes(), source=str(path / WEIGHTS_NAME))
        return model.eval()


def read_config(path: Path) -> VLMConfig:
    cfg_file, raw = read_model_dir_config(path, CONFIG_NAME, WEIGHTS_NAME)
    if not isinstance(raw, dict) or "vision" not in raw or "lm" not in raw:
        kind = raw.get("model_type") if isinstance(raw, dict) else None
        hint = f" (it is a transformers '{kind}' model: use vlmkit.load, which converts it)" if kind else ""
        raise ModelLoadError(f"{cfg_file} is not a vlmkit config{hint}")
    try:
        return VLMConfig.from_dict(raw)
    except (TypeError, ValueError) as e:
        raise ModelLoadError(f"{cfg_file}: {e}") from e


def _with_hf(lm_cfg, lm: LanguageModel):
    from .lm import hf_config_dict

    # replace, not a fresh LMConfig: every other field (the chat template above all) must survive loading
    return dataclasses.replace(lm_cfg, hf_config=lm_cfg.hf_config or hf_config_dict(lm.model.config))
