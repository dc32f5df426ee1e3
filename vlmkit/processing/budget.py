"""Visual token arithmetic: what an image costs the LM before anyone pays for it."""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

import torch

from ..config import ConnectorConfig, LMConfig, VisionConfig
from ..errors import BudgetError
from .tiling import TileGrid, TilingConfig, plan_grid, prompt_layout

# Towers as the field quotes them (image size, patch, width, class token).
VISION_PRESETS = {
    "clip-vit-b-16": dict(image_size=224, patch_size=16, hidden_size=768, num_layers=12, num_heads=12, use_cls=True),
    "clip-vit-l-14": dict(image_size=224, patch_size=14, hidden_size=1024, num_layers=24, num_heads=16, use_cls=True),
    "clip-vit-l-14-336": dict(image_size=336, patch_size=14, hidden_size=1024, num_layers=24, num_heads=16, use_cls=True),
    "siglip-so400m-14-384": dict(image_size=384, patch_size=14, hidden_size=1152, num_layers=27, num_heads=16, use_cls=False),
    "siglip-b-16-512": dict(image_size=512, patch_size=16, hidden_size=768, num_layers=12, num_heads=12, use_cls=False),
    "vlmkit-vit": dict(image_size=224, patch_size=16, hidden_size=192, num_layers=6, num_heads=3, use_cls=True),
}

# Decoder shapes that set KV-cache size (hidden, layers, heads, kv heads, head dim, context).
LM_PRESETS = {
    "smollm2-135m": dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, head_dim=64, vocab_size=49152, max_position_embeddings=8192),
    "smollm2-360m": dict(hidden_size=960, num_hidden_layers=32, num_attention_heads=15, num_key_value_heads=5, head_dim=64, vocab_size=49152, max_position_embeddings=8192),
    "vicuna-7b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32, head_dim=128, vocab_size=32000, max_position_embeddings=4096),
    "llama3-8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=128256, max_position_embeddings=8192),
}


@dataclass
class TokenPlan:
    image_size: int
    tower_tokens: int  # out of the vision tower (patches, plus CLS if kept)
    visual_tokens: int  # handed to the LM per image, after the connector
    connector_params: int
    kv_bytes_per_image: int
    context: int

    def rows(self) -> list[tuple[str, str]]:
        return [
            ("image size", f"{self.image_size} px"),
            ("tower tokens", f"{self.tower_tokens:,}"),
            ("visual tokens to the LM (per image)", f"{self.visual_tokens:,}"),
            ("connector parameters", f"{self.connector_params:,}"),
            ("KV cache for the visual tokens", human_bytes(self.kv_bytes_per_image)),
            ("LM context", f"{self.context:,}"),
            ("images that fit the context", f"{self.context // max(1, self.visual_tokens):,}"),
        ]


def connector_param_count(cfg: ConnectorConfig) -> int:
    """Built on the meta device: exact counts, no memory, even for 7B-sized projectors."""
    from ..models.connectors import build_connector

    with torch.device("meta"):
        module = build_connector(cfg)
    return sum(p.numel() for p in module.parameters())


def plan(vision: VisionConfig, connector: ConnectorConfig, lm: LMConfig, image_size: int | None = None, dtype_bytes: int = 2) -> TokenPlan:
    size = image_size or vision.image_size
    if size % vision.patch_size:
        raise ValueError(f"image size {size} is not a multiple of the patch size {vision.patch_size}")
    connector.in_dim, connector.out_dim = vision.hidden_size, lm.hidden_size
    connector.__post_init__()
    tower = vision.tokens_at(size)
    visual = connector.num_output_tokens(tower)
    return TokenPlan(size, tower, visual, connector_param_count(connector), visual * lm.kv_bytes_per_token(dtype_bytes), lm.max_position_embeddings)


def human_bytes(n: int) -> str:
    if n < 1024:
        return f"{n:,} B"
    x, unit = float(n), "B"
    for unit in ("KiB", "MiB", "GiB"):
        x /= 1024
        if x < 1024:
            break
    return f"{x:,.2f} {unit} ({n:,} B)"


# ---- request-level planning: several images, a tiling policy, the whole context ----

ON_OVER = ("error", "degrade")
_MARKER = re.compile(r"<[^<>\s]+>|\n")  # Idefics3's wrapper, row/col and global tags are one token each


def tile_tokens(tiling: TilingConfig, vision: VisionConfig, connector: ConnectorConfig) -> int:
    """Visual tokens the LM gets for one square tile of tiling.tile_size."""
    if tiling.tile_size % vision.patch_size:
        raise ValueError(f"tile size {tiling.tile_size} is not a multiple of the patch size {vision.patch_size}")
    return connector.num_output_tokens(vision.tokens_at(tiling.tile_size))


def grid_tokens(grid: TileGrid, tiling: TilingConfig, vision: VisionConfig, connector: ConnectorConfig) -> list[int]:
    """Visual tokens per encoded image (tile, thumbnail, or the one native sequence), in encoding order."""
    if grid.policy == "native":
        return [connector.num_output_tokens(grid.rows * grid.cols + int(vision.use_cls and vision.keep_cls))]
    return [tile_tokens(tiling, vision, connector)] * grid.num_tiles


@dataclass
class ImageCost:
    name: str
    size: tuple[int, int]  # (w, h)
    grid: TileGrid
    visual_tokens: int
    marker_tokens: int  # layout text around the tiles (Idefics3's <row_i_col_j> etc.), one token per tag

    @property
    def grid_text(self) -> str:
        g = self.grid
        if g.policy == "native":
            return f"{g.resized[1]}x{g.resized[0]} px, {g.rows}x{g.cols} patches"
        tiles = f"{g.rows}x{g.cols} tiles" if g.rows else "no split"
        return f"{tiles}{' + global' if g.thumbnail and g.rows else ''} of {g.tile_size} px"


@dataclass
class RequestPlan:
    images: list[ImageCost]
    tiling: TilingConfig
    text_tokens: int
    max_new_tokens: int
    context: int
    kv_bytes_per_token: int
    degraded: str | None = None  # the cheaper policy a degraded request settled on

    # derived
    visual_tokens: int = field(init=False)
    total_tokens: int = field(init=False)
    kv_bytes: int = field(init=False)
    fits: bool = field(init=False)

    def __post_init__(self):
        self.visual_tokens = sum(c.visual_tokens for c in self.images)
        markers = sum(c.marker_tokens for c in self.images)
        self.total_tokens = self.visual_tokens + markers + self.text_tokens + self.max_new_tokens
        self.kv_bytes = self.total_tokens * self.kv_bytes_per_token
        self.fits = self.total_tokens <= self.context

    def summary_rows(self) -> list[tuple[str, str]]:
        return [
            ("policy", self.tiling.policy + (f" (degraded: {self.degraded})" if self.degraded else "")),
            ("visual tokens (all images)", f"{self.visual_tokens:,}"),
            ("layout text tokens", f"{sum(c.marker_tokens for c in self.images):,}"),
            ("text + new tokens", f"{self.text_tokens:,} + {self.max_new_tokens:,}"),
            ("total tokens", f"{self.total_tokens:,}"),
            ("KV cache", human_bytes(self.kv_bytes)),
            ("LM context", f"{self.context:,}"),
            ("fits", "yes" if self.fits else f"NO: {self.total_tokens - self.context:,} tokens over"),
        ]


def image_cost(size: tuple[int, int], tiling: TilingConfig, vision: VisionConfig, connector: ConnectorConfig, name: str = "") -> ImageCost:
    w, h = size
    grid = plan_grid(tiling, w, h)
    counts = grid_tokens(grid, tiling, vision, connector)
    layout = prompt_layout(grid, counts)
    markers = sum(len(_MARKER.findall(p)) for p in layout if isinstance(p, str))
    return ImageCost(name or f"{w}x{h}", (w, h), grid, sum(counts), markers)


def degrade_ladder(tiling: TilingConfig, most_tiles: int):
    """Cheaper policies, in the order a request gives detail up: fewer tiles, then one plain resize."""
    if tiling.policy in ("anyres", "split"):
        for n in range(most_tiles - 1, 0, -1):
            yield f"at most {n} tile{'s' * (n > 1)}", tiling.with_max_tiles(n)
    if tiling.policy == "native":
        patches = tiling.max_patches
        while patches > (tiling.tile_size // tiling.patch_size) ** 2:
            patches //= 2
            yield f"at most {patches} patches", TilingConfig(**{**_init_fields(tiling), "max_patches": patches})
    if tiling.policy != "resize":
        yield "plain resize", TilingConfig(**{**_init_fields(tiling), "policy": "resize"})


def _init_fields(cfg) -> dict:
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.init}


def plan_request(
    sizes: list[tuple[int, int]],
    tiling: TilingConfig,
    vision: VisionConfig,
    connector: ConnectorConfig,
    lm: LMConfig,
    text_tokens: int = 0,
    max_new_tokens: int = 0,
    dtype_bytes: int = 2,
    on_over: str = "error",
    context: int | None = None,
    names: list[str] | None = None,
) -> RequestPlan:
    """Price a request before running it. Over the context: BudgetError, or (on_over="degrade")
    the first cheaper policy from degrade_ladder that fits, with the steps recorded."""
    if on_over not in ON_OVER:
        raise ValueError(f"on_over must be one of {ON_OVER}, got {on_over!r}")
    names = names or [f"image {i + 1}" for i in range(len(sizes))]
    ctx = context or lm.max_position_embeddings
    per_token = lm.kv_bytes_per_token(dtype_bytes)

    def price(t: TilingConfig, degraded: str | None) -> RequestPlan:
        costs = [image_cost(s, t, vision, connector, n) for s, n in zip(sizes, names)]
        return RequestPlan(costs, t, text_tokens, max_new_tokens, ctx, per_token, degraded)

    result = price(tiling, None)
    if result.fits:
        return result
    if on_over == "degrade":
        most = max((c.grid.rows * c.grid.cols for c in result.images), default=0)
        for step, cheaper in degrade_ladder(tiling, most):
            result = price(cheaper, step)
            if result.fits:
                return result
    raise BudgetError(
        f"request needs {result.total_tokens:,} tokens ({result.visual_tokens:,} visual across {len(sizes)} image(s), "
        f"{text_tokens:,} text, {max_new_tokens:,} to generate) but the LM context is {ctx:,}"
        + (" even after degrading to a plain resize" if on_over == "degrade"
           else "; use fewer images, or let it degrade (on_over='degrade', --on-over degrade)")
    )


def preset_configs(vision: str, lm: str, connector: str = "mlp2x_gelu", scale_factor: int = 2) -> tuple[VisionConfig, ConnectorConfig, LMConfig]:
    """Configs from the preset names above (for planning models that are not on disk)."""
    from ..errors import VlmkitError

    if vision not in VISION_PRESETS:
        raise VlmkitError(f"unknown vision preset {vision!r}; choose from {', '.join(VISION_PRESETS)}")
    if lm not in LM_PRESETS:
        raise VlmkitError(f"unknown LM preset {lm!r}; choose from {', '.join(LM_PRESETS)}")
    v = VisionConfig(**VISION_PRESETS[vision])
    l = LMConfig(source=lm, hf_config=dict(LM_PRESETS[lm]))
    try:
        c = ConnectorConfig(kind=connector, scale_factor=scale_factor, in_dim=v.hidden_size, out_dim=l.hidden_size)
    except ValueError as e:
        raise VlmkitError(str(e)) from None
    return v, c, l
