"""The Python API the CLI is built on:

    model = vlmkit.load()                      # the default model, or vlmkit.load(DIR)
    model.ask("photo.jpg", "What is this?")
    model.chat([{"role": "user", "content": [{"type": "image", "image": "a.png"},
                                             {"type": "text", "text": "Describe it."}]}])
    model.generate([messages_1, messages_2])   # one batched, left-padded pass
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import torch

from .errors import ModelLoadError
from .generation import GenerationConfig, GenerationResult, eos_ids, generate_from_embeds
from .models.lm import load_tokenizer
from .models.vlm import VisionLanguageModel
from .processing.chat import Prompt, build_prompt, left_pad
from .processing.images import ImageProcessor

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_NAMES = ("vlmkit-smol", "vlmkit-smol-untrained")


def default_model_dir() -> Path:
    """$VLMKIT_MODEL, else the trained default if present, else the untrained placeholder."""
    if os.environ.get("VLMKIT_MODEL"):
        return Path(os.environ["VLMKIT_MODEL"])
    for root in (Path(__file__).resolve().parent / "weights", REPO_ROOT / "weights"):
        for name in DEFAULT_MODEL_NAMES:
            if (root / name / "config.json").is_file():
                return root / name
    raise ModelLoadError("no default model found: pass --model DIR or set VLMKIT_MODEL")


class VLM:
    def __init__(self, model: VisionLanguageModel, tokenizer, image_processor: ImageProcessor | None = None, path: Path | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.cfg = model.cfg
        self.image_processor = image_processor or ImageProcessor.from_vision_config(model.cfg.vision)
        self.path = path
        self._eos = eos_ids(tokenizer, model.lm.model)

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> "VLM":
        path = Path(path) if path is not None else default_model_dir()
        if not path.exists():
            raise ModelLoadError(f"model directory not found: {path}")
        model_type = _hf_model_type(path)
        if model_type is not None:
            from .convert import load_hf_vlm

            model, tokenizer = load_hf_vlm(path, model_type)
            return cls(model, tokenizer, path=path)
        model = VisionLanguageModel.from_pretrained(path)
        return cls(model, load_tokenizer(path, model.cfg.lm), path=path)

    @property
    def tokens_per_image(self) -> int:
        return self.cfg.image_seq_len

    # ---- prompts ----
    def prompt(self, messages: list[dict], images: list | None = None) -> Prompt:
        return build_prompt(self.tokenizer, messages, self.cfg.image_token, self.cfg.image_token_id, self.tokens_per_image, images)

    def _embed_batch(self, prompts: list[Prompt]) -> tuple[torch.Tensor, torch.Tensor]:
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids, mask = left_pad([p.input_ids for p in prompts], pad)
        images = [im for p in prompts for im in p.images]
        feats = self.model.encode_images(self.image_processor(images)) if images else None
        return self.model.embed_inputs(input_ids, feats), mask

    # ---- generation ----
    @torch.no_grad()
    def generate(
        self,
        conversations: list[list[dict]],
        config: GenerationConfig | None = None,
        on_text: Callable[[int, str], None] | None = None,
        **kw,
    ) -> list[GenerationResult]:
        """Many conversations in one left-padded batch; on_text(row, delta) streams."""
        config = config or GenerationConfig(**kw)
        prompts = [self.prompt(c) for c in conversations]
        embeds, mask = self._embed_batch(prompts)
        return generate_from_embeds(self.model.lm, embeds, mask, self.tokenizer, config, self._eos, on_text)

    def chat(self, messages: list[dict], stream: Callable[[str], None] | None = None, **kw) -> str:
        on_text = (lambda _row, delta: stream(delta)) if stream else None
        return self.generate([messages], on_text=on_text, **kw)[0].text

    def ask(self, image, question: str, stream: Callable[[str], None] | None = None, **kw) -> str:
        """One or more images (a path, bytes, PIL image, or a list of them) and a question."""
        images = image if isinstance(image, (list, tuple)) else [image]
        parts = [{"type": "image", "image": im} for im in images] + [{"type": "text", "text": question}]
        return self.chat([{"role": "user", "content": parts}], stream=stream, **kw)


def _hf_model_type(path: Path) -> str | None:
    """'llava' / 'idefics3' for transformers VLM checkpoints, None for vlmkit's own."""
    cfg = path / "config.json"
    if not cfg.is_file():
        return None
    try:
        raw = json.loads(cfg.read_text())
    except json.JSONDecodeError:
        return None
    if isinstance(raw, dict) and "vision" not in raw and raw.get("model_type") in ("llava", "idefics3", "smolvlm"):
        return raw["model_type"]
    return None


def load(path: str | os.PathLike | None = None) -> VLM:
    return VLM.load(path)
