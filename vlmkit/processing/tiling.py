"""Tiling policies: how one image becomes what a fixed-resolution tower sees.

  resize  one tile: the whole image squashed (or letterboxed / padded) to the tower's square.
  anyres  LLaVA-NeXT: pick the best grid among pinpoints (effective resolution, then wasted
          area), resize keeping the aspect ratio, pad, cut into tiles; a global thumbnail first.
  split   Idefics3 / SmolVLM: resize the longest edge, round both sides up to tile multiples,
          cut row-major; the global image last; `<row_i_col_j>` text marks each tile.
  native  NaViT / Qwen2-VL: keep the aspect ratio, sides multiples of the patch, at most
          `max_patches` patches; one variable-length sequence (models/vision.py packs them).

`plan_grid` is arithmetic on the size alone, so the budget planner can price a request
without decoding a pixel; `tile_image` cuts the pixels by the same plan.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from PIL import Image

from .images import resize_square

POLICIES = ("resize", "anyres", "split", "native")
IDEFICS3_MAX_IMAGE_SIZE = 4096  # transformers' absolute cap on a resized side
# (h, w) pinpoints of llava-v1.6 / transformers' LlavaNextImageProcessor, at a 336 px tile
LLAVA_NEXT_PINPOINTS = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))
IDEFICS3_FAKE = "<fake_token_around_image>"
IDEFICS3_GLOBAL = "<global-img>"


def grid_pinpoints(tile: int, max_tiles: int, max_side: int | None = None) -> list[tuple[int, int]]:
    """Every rows x cols grid with rows * cols <= max_tiles, as (h, w) px (LLaVA's "(1x1),...,(NxM)" form)."""
    max_side = max_side or max_tiles
    return [(r * tile, c * tile) for r in range(1, max_side + 1) for c in range(1, max_side + 1) if r * c <= max_tiles]


@dataclass
class TilingConfig:
    """One tiling policy and its sizes. `tile_size` is the tower's input side (the thumbnail's too)."""

    policy: str = "resize"
    tile_size: int = 336
    resize_mode: str = "resize"  # the resize policy and the anyres thumbnail: resize | letterbox | pad
    # anyres: candidate (h, w) resolutions; None means LLaVA-NeXT's five, scaled to tile_size
    pinpoints: list | None = None
    # anyres: drop pinpoints with more tiles; split: lower longest_edge until the grid fits. 0 = no cap
    max_tiles: int = 0
    # split: Idefics3's size["longest_edge"]; 0 means 4 * tile_size (SmolVLM's 4 x 364 = 1456 at 364)
    longest_edge: int = 0
    thumbnail: bool = True  # anyres / split: add the global image
    patch_size: int = 14  # native: sides are multiples of this
    max_patches: int = 0  # native: 0 means 4 * (tile_size / patch_size)^2
    min_patches: int = 1  # native: upscale tiny images to at least this many patches

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise ValueError(f"tiling policy must be one of {POLICIES}, got {self.policy!r}")
        if self.resize_mode not in ("resize", "letterbox", "pad"):
            raise ValueError(f"resize_mode must be resize, letterbox or pad, got {self.resize_mode!r}")
        if self.tile_size <= 0:
            raise ValueError("tile_size must be positive")
        if self.pinpoints is None:
            scale = self.tile_size / 336
            self.pinpoints = [(round(h * scale), round(w * scale)) for h, w in LLAVA_NEXT_PINPOINTS]
        self.pinpoints = [tuple(int(v) for v in p) for p in self.pinpoints]
        if self.max_tiles and self.policy == "anyres":
            self.pinpoints = [p for p in self.pinpoints if _tiles_in(p, self.tile_size) <= self.max_tiles]
        if self.policy == "anyres":
            bad = [p for p in self.pinpoints if p[0] % self.tile_size or p[1] % self.tile_size]
            if bad:
                raise ValueError(f"anyres pinpoints must be multiples of the tile size {self.tile_size}: {bad}")
        if not self.longest_edge:
            self.longest_edge = 4 * self.tile_size
        if not self.max_patches:
            self.max_patches = 4 * (self.tile_size // self.patch_size) ** 2

    @classmethod
    def for_tower(cls, vision, policy: str = "resize", **kw) -> "TilingConfig":
        """Sizes from a VisionConfig: the tile is the tower's image_size, the patch its patch_size."""
        return cls(policy=policy, tile_size=vision.image_size, patch_size=vision.patch_size, **kw)

    @property
    def working_side(self) -> int:
        """The longest side any step of this policy reads; larger photos can be shrunk to it at decode time."""
        if self.policy == "anyres":
            return max([self.tile_size] + [max(p) for p in self.pinpoints])
        if self.policy == "split":
            return self.longest_edge
        if self.policy == "native":
            return self.patch_size * self.max_patches  # a one-row image of max_patches patches
        return self.tile_size

    def with_max_tiles(self, n: int) -> "TilingConfig":
        """The same policy with at most n tiles besides the global image (the budget planner's first retreat)."""
        return replace(self, max_tiles=n)  # __post_init__ drops the anyres pinpoints with more


def _tiles_in(pinpoint: tuple[int, int], tile: int) -> int:
    return (pinpoint[0] // tile) * (pinpoint[1] // tile)


@dataclass
class TileGrid:
    """What one image becomes: rows x cols tiles of tile_size (plus a global image), or, for native,
    one image of rows x cols patches."""

    policy: str
    original: tuple[int, int]  # (h, w) of the image as loaded
    resized: tuple[int, int]  # (h, w) it is resized to before cutting (native: the encoded size)
    rows: int = 1
    cols: int = 1
    tile_size: int = 0
    thumbnail: bool = False
    thumbnail_first: bool = True  # LLaVA-NeXT puts it first, Idefics3 last
    prescaled: tuple[int, int] | None = None  # split: (h, w) after the longest-edge resize, before rounding up

    # derived
    num_tiles: int = field(init=False)  # images the tower encodes (tiles + global)

    def __post_init__(self):
        # native: rows x cols counts patches of one image, not tiles
        self.num_tiles = 1 if self.policy == "native" else self.rows * self.cols + int(self.thumbnail)

    def tokens(self, per_tile: int) -> int:
        return self.num_tiles * per_tile


def select_best_resolution(original_size: tuple[int, int], possible_resolutions) -> tuple[int, int]:
    """LLaVA-NeXT's choice: most effective pixels kept (capped at the original), then least padding.

    Sizes are (h, w). Ties keep the first candidate, as transformers does.
    """
    oh, ow = original_size
    best, best_eff, best_waste = None, 0, float("inf")
    for h, w in possible_resolutions:
        scale = min(w / ow, h / oh)
        eff = min(int(ow * scale) * int(oh * scale), ow * oh)
        waste = w * h - eff
        if eff > best_eff or (eff == best_eff and waste < best_waste):
            best, best_eff, best_waste = (h, w), eff, waste
    return best


def fit_inside(original: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of the original scaled to fit the target, aspect kept (transformers' get_patch_output_size)."""
    oh, ow = original
    th, tw = target
    sw, sh = tw / ow, th / oh
    if sw < sh:
        return min(math.ceil(oh * sw), th), tw
    return th, min(math.ceil(ow * sh), tw)


def _idefics3_resize(h: int, w: int, longest: int) -> tuple[int, int]:
    """transformers Idefics3: longest edge to `longest` (even other side), then capped at 4096."""
    aspect = w / h
    if w >= h:
        w, h = longest, int(longest / aspect)
        h += h % 2
    else:
        h, w = longest, int(longest * aspect)
        w += w % 2
    h, w = max(h, 1), max(w, 1)
    aspect = w / h
    if w >= h and w > IDEFICS3_MAX_IMAGE_SIZE:
        w, h = IDEFICS3_MAX_IMAGE_SIZE, int(IDEFICS3_MAX_IMAGE_SIZE / aspect)
    elif h > w and h > IDEFICS3_MAX_IMAGE_SIZE:
        h, w = IDEFICS3_MAX_IMAGE_SIZE, int(IDEFICS3_MAX_IMAGE_SIZE * aspect)
    return max(h, 1), max(w, 1)


def _idefics3_round_up(h: int, w: int, tile: int) -> tuple[int, int]:
    """transformers Idefics3 resize_for_vision_encoder: both sides up to tile multiples, aspect from the long side."""
    aspect = w / h
    if w >= h:
        w = math.ceil(w / tile) * tile
        h = math.ceil(int(w / aspect) / tile) * tile
    else:
        h = math.ceil(h / tile) * tile
        w = math.ceil(int(h * aspect) / tile) * tile
    return h, w


def _split_grid(cfg: TilingConfig, h: int, w: int, longest: int) -> TileGrid:
    h1, w1 = _idefics3_resize(h, w, longest)
    h2, w2 = _idefics3_round_up(h1, w1, cfg.tile_size)
    t = cfg.tile_size
    if h2 > t or w2 > t:
        return TileGrid("split", (h, w), (h2, w2), h2 // t, w2 // t, t, cfg.thumbnail, False, (h1, w1))
    return TileGrid("split", (h, w), (h2, w2), 0, 0, t, True, False, (h1, w1))  # small: the global image only


def native_size(h: int, w: int, patch: int, max_patches: int, min_patches: int = 1) -> tuple[int, int]:
    """(h, w) in px, multiples of `patch`, aspect kept, at most max_patches patches (never upscaled past min)."""
    scale = min(1.0, math.sqrt(max_patches * patch * patch / (h * w)))
    if h * w * scale * scale < min_patches * patch * patch:
        scale = math.sqrt(min_patches * patch * patch / (h * w))
    gh, gw = max(1, math.floor(h * scale / patch)), max(1, math.floor(w * scale / patch))
    while gh * gw > max_patches:  # floor already keeps it inside but for max_patches < 1 row/col
        if gh >= gw and gh > 1:
            gh -= 1
        elif gw > 1:
            gw -= 1
        else:
            break
    return gh * patch, gw * patch


def plan_grid(cfg: TilingConfig, width: int, height: int) -> TileGrid:
    """The tiling of a width x height image, from its size alone."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    t = cfg.tile_size
    if cfg.policy == "resize":
        return TileGrid("resize", (height, width), (t, t), 1, 1, t)
    if cfg.policy == "anyres":
        if not cfg.pinpoints:
            return TileGrid("resize", (height, width), (t, t), 1, 1, t)
        bh, bw = select_best_resolution((height, width), cfg.pinpoints)
        return TileGrid("anyres", (height, width), (bh, bw), bh // t, bw // t, t, cfg.thumbnail)
    if cfg.policy == "split":
        grid = _split_grid(cfg, height, width, cfg.longest_edge)
        longest = cfg.longest_edge
        while cfg.max_tiles and grid.rows * grid.cols > cfg.max_tiles and longest > t:
            longest -= t  # fewer tiles: shrink the working resolution one tile at a time
            grid = _split_grid(cfg, height, width, longest)
        return grid
    h, w = native_size(height, width, cfg.patch_size, cfg.max_patches, cfg.min_patches)
    return TileGrid("native", (height, width), (h, w), h // cfg.patch_size, w // cfg.patch_size, 0)


@dataclass
class TiledImage:
    grid: TileGrid
    tiles: list  # PIL images in encoding order (square tiles, or one native-size image)


def tile_image(img: Image.Image, cfg: TilingConfig, original_size: tuple[int, int] | None = None) -> TiledImage:
    """Cut an RGB PIL image by its plan. `original_size` (w, h) plans from the file's size when
    the image was already shrunk at decode time (images.load_image(max_side=...))."""
    ow, oh = original_size or img.size
    grid = plan_grid(cfg, ow, oh)
    t = cfg.tile_size
    if grid.policy == "resize":
        return TiledImage(grid, [resize_square(img, t, cfg.resize_mode)])
    if grid.policy == "native":
        h, w = grid.resized
        return TiledImage(grid, [img.resize((w, h), Image.BICUBIC)])
    if grid.policy == "anyres":
        # resize keeping the aspect ratio, centre on black (transformers pads with 0 before normalising)
        rh, rw = fit_inside(grid.original, grid.resized)
        canvas = Image.new("RGB", (grid.resized[1], grid.resized[0]), (0, 0, 0))
        canvas.paste(img.resize((rw, rh), Image.BICUBIC), ((grid.resized[1] - rw) // 2, (grid.resized[0] - rh) // 2))
        tiles = _cut(canvas, grid.rows, grid.cols, t)
        if grid.thumbnail:
            tiles.insert(0, resize_square(img, t, cfg.resize_mode))
        return TiledImage(grid, tiles)
    # split: the same chain of LANCZOS resizes as transformers' Idefics3 image processor
    h1, w1 = grid.prescaled
    work = img.resize((w1, h1), Image.LANCZOS)
    work = work.resize((grid.resized[1], grid.resized[0]), Image.LANCZOS)
    if grid.rows == 0:
        return TiledImage(grid, [work])
    tiles = _cut(work, grid.rows, grid.cols, t)
    if grid.thumbnail:
        tiles.append(work.resize((t, t), Image.LANCZOS))
    return TiledImage(grid, tiles)


def _cut(img: Image.Image, rows: int, cols: int, t: int) -> list:
    return [img.crop((c * t, r * t, (c + 1) * t, (r + 1) * t)) for r in range(rows) for c in range(cols)]


# ---- prompt layouts: a list of text pieces (str) and runs of visual tokens (int) ----

def prompt_layout(grid: TileGrid, tile_tokens: list[int] | int) -> list:
    """How one image's visual tokens sit in the prompt.

    split follows Idefics3's processor exactly (fake-token wrappers, `<row_i_col_j>`,
    a newline per row, then the global image); the other policies are one run per tile.
    """
    counts = [tile_tokens] * grid.num_tiles if isinstance(tile_tokens, int) else list(tile_tokens)
    if len(counts) != grid.num_tiles:
        raise ValueError(f"{len(counts)} token counts for {grid.num_tiles} tiles")
    if grid.policy != "split":
        return [n for n in counts if n]
    out: list = []
    if grid.rows:
        k = 0
        for r in range(grid.rows):
            for c in range(grid.cols):
                out += [f"{IDEFICS3_FAKE}<row_{r + 1}_col_{c + 1}>", counts[k]]
                k += 1
            out.append("\n")
        out.append("\n")
    if grid.thumbnail:
        out += [f"{IDEFICS3_FAKE}{IDEFICS3_GLOBAL}", counts[-1], IDEFICS3_FAKE]
    return _join_text(out)


def _join_text(pieces: list) -> list:
    out: list = []
    for p in pieces:
        if isinstance(p, str) and out and isinstance(out[-1], str):
            out[-1] += p
        else:
            out.append(p)
    return out


def layout_text(layout: list, image_token: str) -> str:
    """The layout as a string, each visual token written as `image_token` (what HF processors emit)."""
    return "".join(p if isinstance(p, str) else image_token * p for p in layout)


def layout_tokens(layout: list) -> int:
    return sum(p for p in layout if isinstance(p, int))
