"""The Python API the CLI is built on:

    model = vlmkit.load()                      # the default model, or vlmkit.load(DIR)
    model.ask("photo.jpg", "What is this?")
    model.chat([{"role": "user", "content": [{"type": "image", "image": "a.png"},
                                             {"type": "text", "text": "Describe it."}]}])
    model.generate([messages_1, messages_2])   # one batched, left-padded pass

Detail and cost are per request: `tiling=TilingConfig(policy="anyres" | "split" | "native")`
tiles large images, `merge_threshold=0.9` merges similar neighbouring visual tokens,
`label_images=True` numbers the images, and a {"type": "video", "video": PATH,
"num_frames": N | "fps": R} part becomes timestamped frames, as many as the context holds.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from .errors import BudgetError, ModelLoadError, VlmkitError
from .generation import GenerationConfig, GenerationResult, eos_ids, generate_from_embeds
from .models.lm import load_tokenizer, pad_id
from .models.vlm import VisionLanguageModel
from .processing.chat import Prompt, build_prompt, left_pad
from .processing.budget import ON_OVER, degrade_ladder
from .processing.compress import CompressionReport, merge_spatial, merge_temporal
from .processing.images import ImageProcessor, load_image, resize_square, to_tensor
from .processing.tiling import TilingConfig, prompt_layout, tile_image
from .processing.video import Frame, expand_video_parts, has_video_parts, max_frames_for_budget, sample_frames

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


@dataclass
class _Frame:
    """A video frame in a prompt: always one tile; `features` set when it was merged across time."""

    image: Image.Image
    features: torch.Tensor | None = None  # [n, D_lm]
    saved: int = 0  # tokens merged into earlier frames


@dataclass
class _Visual:
    """One image's share of a prompt: its layout, and its pixels or already-encoded features."""

    layout: list
    tiles: torch.Tensor | None = None  # [T, 3, S, S] square tiles
    native: torch.Tensor | None = None  # [3, H, W] one native-resolution image (NaViT)
    features: torch.Tensor | None = None  # [n, D_lm] when encoded early (token merging)
    saved: int = 0  # visual tokens merged away


class VLM:
    def __init__(
        self,
        model: VisionLanguageModel,
        tokenizer,
        image_processor: ImageProcessor | None = None,
        path: Path | None = None,
        tiling: TilingConfig | None = None,
        merge_threshold: float | None = None,
        label_images: bool = False,
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.cfg = model.cfg
        self.image_processor = image_processor or ImageProcessor.from_vision_config(model.cfg.vision)
        self.path = path
        self._eos = eos_ids(tokenizer, model.lm.model)
        # request defaults; None tiling = one square per image through image_processor
        self.tiling, self.merge_threshold, self.label_images = tiling, merge_threshold, label_images
        self.last_compression: CompressionReport | None = None  # visual tokens merged away by the last generate()
        # optional {content hash: [N_visual, D_lm]} store with get/put (the server's LRU): a follow-up
        # question about the same image skips the vision pass. Keys come from image_cache_key.
        self.feature_cache = None

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
    def tokens_per_image(self) -> int | list:
        """One image's visual run: a count, or a layout when the model separates the rows of its grid."""
        return self.cfg.image_layout

    # ---- prompts ----
    def prompt(
        self,
        messages: list[dict],
        images: list | None = None,
        tiling: TilingConfig | None = None,
        merge_threshold: float | None = None,
        label_images: bool | None = None,
        max_new_tokens: int = 0,
    ) -> Prompt:
        """Token ids with visual positions; per-image layouts when a tiling policy or merging is on."""
        tiling = tiling if tiling is not None else self.tiling
        merge = merge_threshold if merge_threshold is not None else self.merge_threshold
        if tiling is not None or merge is not None or any(map(has_video_parts, messages)):
            why = self._whole_images_only()
            if why:  # tiles, merged tokens and frames get their own layouts, which this model has never read
                raise VlmkitError(f"{why}: tiling, token merging and video are not supported with it yet")
        label = self.label_images if label_images is None else label_images
        messages = self._expand_videos(messages, merge, max_new_tokens)
        args = (self.tokenizer, messages, self.cfg.image_token, self.cfg.image_token_id)
        if tiling is None and merge is None:
            return build_prompt(*args, self.tokens_per_image, images, label)
        tiling = tiling or TilingConfig.for_tower(self.cfg.vision)
        visuals: list[_Visual] = []

        def layout_for(image) -> list:
            visuals.append(self._prepare(image, tiling, merge))
            return visuals[-1].layout

        p = build_prompt(*args, layout_for, images, label)
        p.visuals = visuals
        return p

    def _whole_images_only(self) -> str | None:
        """Why this model takes each image as one full grid of the tower's tokens, or None if it takes any layout."""
        c = self.cfg
        if c.fusion.kind != "none":  # an image is one marker position whose features feed cross-attention
            return f"{c.fusion.kind} fusion models take whole images only"
        if c.image_row_separator:
            return "this model separates the rows of its visual tokens (image_row_separator)"
        if c.image_positions == "grid":
            return "this model numbers its visual tokens by row and column (image_positions='grid')"
        if c.image_token_order != "rows":
            return ("this model reads each image's visual tokens twice, by rows and by columns "
                    "(image_token_order='rows+columns')")
        return None

    def fitted_prompt(self, messages: list[dict], max_new_tokens: int = 0, on_over: str = "error", **request) -> Prompt:
        """A prompt that leaves room for max_new_tokens in the LM context. Over it: BudgetError, or with
        on_over="degrade" the tiling gives detail up (fewer tiles, then a plain resize) until it fits."""
        if on_over not in ON_OVER:
            raise VlmkitError(f"on_over must be one of {ON_OVER}, got {on_over!r}")
        p = self.prompt(messages, max_new_tokens=max_new_tokens, **request)
        context = self.cfg.lm.max_position_embeddings
        if not context or len(p.input_ids) + max_new_tokens <= context:
            return p
        tiling = request.get("tiling") or self.tiling
        if on_over == "degrade" and tiling is not None:
            most = max((v.tiles.shape[0] for v in p.visuals if v.tiles is not None), default=1)
            for _step, cheaper in degrade_ladder(tiling, most):
                p = self.prompt(messages, max_new_tokens=max_new_tokens, **{**request, "tiling": cheaper})
                if len(p.input_ids) + max_new_tokens <= context:
                    return p
        raise BudgetError(
            f"prompt of {len(p.input_ids):,} tokens plus {max_new_tokens:,} to generate is over the LM context of "
            f"{context:,}; use fewer images, a cheaper tiling policy, token merging or on_over='degrade'"
        )

    def _tile_tokens(self, tile_size: int) -> int:
        return self.cfg.connector.num_output_tokens(self.cfg.vision.tokens_at(tile_size))

    def _prepare(self, image, tiling: TilingConfig, merge: float | None) -> _Visual:
        if isinstance(image, _Frame):
            if image.features is not None:
                return _Visual([image.features.shape[0]], features=image.features, saved=image.saved)
            tiling = TilingConfig.for_tower(self.cfg.vision)  # a frame is one tile: the frame count carries the detail
            image = image.image
        img = load_image(image, self.image_processor.limits, max_side=tiling.working_side)
        tiled = tile_image(img, tiling, img.info.get("original_size"))
        v = self.cfg.vision
        pixels = [to_tensor(t, v.image_mean, v.image_std) for t in tiled.tiles]
        if tiled.grid.policy == "native":
            if v.kind != "vit" or self.cfg.connector.kind == "pixel_shuffle":
                raise VlmkitError("native-resolution tiling needs our ViT and a connector that keeps the token grid (not pixel_shuffle)")
            grids = [(tiled.grid.rows, tiled.grid.cols)]
            counts = [self.cfg.connector.num_output_tokens(tiled.grid.rows * tiled.grid.cols + int(v.use_cls and v.keep_cls))]
            visual = _Visual([], native=pixels[0])
        else:
            grids = [None] * len(pixels)  # square token grids
            counts = [self._tile_tokens(tiling.tile_size)] * len(pixels)
            visual = _Visual([], tiles=torch.stack(pixels))
        if merge is not None:
            feats = self._encode([visual])[0]  # [n, D_lm]
            merged = [merge_spatial(f, merge, g if g and g[0] * g[1] == f.shape[0] else None) for f, g in zip(feats.split(counts), grids)]
            counts = [m.tokens.shape[0] for m in merged]
            visual.features = torch.cat([m.tokens for m in merged])
            visual.saved = sum(m.saved for m in merged)
        visual.layout = prompt_layout(tiled.grid, counts)
        return visual

    @torch.no_grad()
    def _encode(self, visuals: list[_Visual]) -> list[torch.Tensor]:
        """Each visual -> [n, D_lm]: square tiles of all images in one batch, native images packed."""
        out: list[torch.Tensor | None] = [v.features for v in visuals]
        todo = [i for i, v in enumerate(visuals) if v.features is None and v.tiles is not None]
        if todo:
            feats = self.model.encode_images(torch.cat([visuals[i].tiles for i in todo]))  # [sum T, N, D_lm]
            for i, f in zip(todo, feats.split([visuals[i].tiles.shape[0] for i in todo])):
                out[i] = f.reshape(-1, f.shape[-1])
        native = [i for i, v in enumerate(visuals) if v.features is None and v.native is not None]
        if native:
            seqs = self.model.vision.forward_features_packed([visuals[i].native for i in native])
            for i, s in zip(native, seqs):
                out[i] = self.model.connector(s.unsqueeze(0))[0]
        return out

    def _expand_videos(self, messages: list[dict], merge: float | None, max_new_tokens: int) -> list[dict]:
        """Video parts -> timestamped frames, capped so the frames fit the context left after generation."""
        per_frame = self._tile_tokens(self.cfg.vision.image_size)
        budget = self.cfg.lm.max_position_embeddings - max_new_tokens - 256  # 256: room for the text of the turn

        def frames_for(part: dict) -> list:
            cap = max_frames_for_budget(budget, per_frame)
            if part.get("max_frames"):
                cap = min(cap, int(part["max_frames"]))
            frames = sample_frames(part["video"], part.get("num_frames"), part.get("fps"), cap, max_side=self.cfg.vision.image_size)
            if merge is None:
                return [Frame(f.time, _Frame(f.image)) for f in frames]
            v = self.cfg.vision
            px = torch.stack([to_tensor(resize_square(f.image, v.image_size), v.image_mean, v.image_std) for f in frames])
            with torch.no_grad():
                feats = self.model.encode_images(px)  # [F, N, D_lm]
            return [Frame(f.time, _Frame(f.image, m.tokens, m.saved)) for f, m in zip(frames, merge_temporal(feats, merge))]

        return expand_video_parts(messages, frames_for)

    def _embed_batch(self, prompts: list[Prompt]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (embeddings [B, T, D_lm], attention mask [B, T], position ids [(3,) B, T]), left-padded."""
        pad = pad_id(self.tokenizer)
        input_ids, mask = left_pad([p.input_ids for p in prompts], pad)
        visuals = [v for p in prompts for v in p.visuals]
        if visuals:
            feats = torch.cat(self._encode(visuals)).unsqueeze(0)  # [1, total visual tokens, D_lm], filled in order
        else:
            images = [im.image if isinstance(im, _Frame) else im for p in prompts for im in p.images]
            feats = self.encode_images(images) if images else None
        return self.model.embed_inputs(input_ids, feats), mask, self.model.position_ids(input_ids, mask)

    @torch.no_grad()
    def encode_images(self, images: list) -> torch.Tensor:
        """Images -> [N, N_visual, D_lm], through feature_cache when one is set."""
        cache = self.feature_cache
        if cache is None:
            return self.model.encode_images(self.image_processor(images))
        keys = [image_cache_key(im) or f"uncached-{i}" for i, im in enumerate(images)]
        feats = {k: cache.get(k) for k in dict.fromkeys(keys)}  # the same image twice in a batch is encoded once
        todo = [k for k, f in feats.items() if f is None]
        if todo:
            first = {k: images[keys.index(k)] for k in todo}
            fresh = self.model.encode_images(self.image_processor(list(first.values())))  # [len(todo), N_visual, D_lm]
            for k, f in zip(todo, fresh):
                feats[k] = f
                if not k.startswith("uncached-"):
                    cache.put(k, f)
        return torch.stack([feats[k] for k in keys])

    # ---- generation ----
    @torch.no_grad()
    def generate(
        self,
        conversations: list[list[dict]],
        config: GenerationConfig | None = None,
        on_text: Callable[[int, str], None] | None = None,
        json_schema: dict | None = None,
        logits_processor: Callable | None = None,
        **kw,
    ) -> list[GenerationResult]:
        """Many conversations in one left-padded batch; on_text(row, delta) streams.

        json_schema: constrain every row's output to parse and validate against it (vlmkit.constrained).
        """
        request = {k: kw.pop(k) for k in ("tiling", "merge_threshold", "label_images") if k in kw}
        on_over = kw.pop("on_over", "error")
        config = config or GenerationConfig(**kw)
        prompts = [self.fitted_prompt(c, config.max_new_tokens, on_over, **request) for c in conversations]
        self.last_compression = compression_report(prompts, self.cfg.image_token_id)
        if json_schema is not None:
            from .constrained import json_processor

            logits_processor, config = json_processor(self.tokenizer, json_schema, config, len(prompts), self._eos)
        return self.generate_prompts(prompts, config, on_text, logits_processor)

    @torch.no_grad()
    def generate_prompts(self, prompts: list[Prompt], config: GenerationConfig, on_text=None, logits_processor=None) -> list[GenerationResult]:
        """Prompts already built by `prompt` (a server counts their tokens before queueing them), as one batch."""
        embeds, mask, positions = self._embed_batch(prompts)
        # a constrained decoder (a JSON schema) tracks every token it allowed: the box head's tokens would bypass it
        writer = self._box_writer(prompts) if logits_processor is None else None
        return generate_from_embeds(self.model.lm, embeds, mask, self.tokenizer, config, self._eos, on_text,
                                    logits_processor, positions, writer)

    def _box_writer(self, prompts: list[Prompt]):
        """The box head's inserter, or None without one. It reads the tower's patches of a prompt's one whole
        image; prompts with tiles, frames or several images leave the digits to the LM."""
        if self.model.box_head is None:
            return None
        from .models.box_head import BoxWriter

        whole = [p.images[0] if len(p.images) == 1 and not p.visuals and not isinstance(p.images[0], _Frame) else None
                 for p in prompts]
        return BoxWriter(self.model.box_head, self.tokenizer, self.model.lm.embed_tokens,
                         [p.input_ids for p in prompts], whole,
                         lambda image: self.model.vision.forward_features(self.image_processor([image]))[0],
                         self.cfg.image_token_id)

    def chat(self, messages: list[dict], stream: Callable[[str], None] | None = None, **kw) -> str:
        on_text = (lambda _row, delta: stream(delta)) if stream else None
        return self.generate([messages], on_text=on_text, **kw)[0].text

    def ask(self, image, question: str, stream: Callable[[str], None] | None = None, **kw) -> str:
        """One or more images (a path, bytes, PIL image, or a list of them) and a question."""
        images = image if isinstance(image, (list, tuple)) else [image]
        parts = [{"type": "image", "image": im} for im in images] + [{"type": "text", "text": question}]
        return self.chat([{"role": "user", "content": parts}], stream=stream, **kw)


def compression_report(prompts: list[Prompt], image_token_id: int) -> CompressionReport:
    """Visual tokens the prompts would have had without merging, and have now."""
    after = sum(p.input_ids.count(image_token_id) for p in prompts)
    return CompressionReport(after + sum(v.saved for p in prompts for v in p.visuals), after)


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


def image_cache_key(image) -> str | None:
    """A content hash for feature caching: raw bytes, or a PIL image carrying info["content_hash"]; else None."""
    if isinstance(image, (bytes, bytearray)):
        import hashlib

        return hashlib.sha256(image).hexdigest()
    if isinstance(image, Image.Image):
        return image.info.get("content_hash")
    return None


def load(path: str | os.PathLike | None = None) -> VLM:
    return VLM.load(path)

