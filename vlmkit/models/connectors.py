"""Connectors: [B, N_tokens, D_vision] -> [B, N_visual, D_lm].

Each connector is chosen by `ConnectorConfig.kind` through CONNECTORS, and
reports how many visual tokens it hands the LM via `num_output_tokens`.
Module names follow the upstream checkpoints (LLaVA's linear_1/linear_2,
Idefics3's proj) so the converters' key maps stay small.

The resamplers (qformer, perceiver, cabstractor) hand the LM a fixed number of
tokens (ConnectorConfig.num_queries) whatever the resolution; the papers each
follows are named on the class and in models/README.md.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConnectorConfig
from .vision import resize_grid_embed

ACTIVATIONS = {"gelu": nn.GELU, "gelu_tanh": lambda: nn.GELU(approximate="tanh"), "relu": nn.ReLU, "silu": nn.SiLU}


def _pre_norm(cfg: ConnectorConfig) -> nn.Module:
    return nn.LayerNorm(cfg.in_dim) if cfg.pre_norm else nn.Identity()


class LinearConnector(nn.Module):
    """One linear layer (LLaVA-1.0)."""

    def __init__(self, cfg: ConnectorConfig):
        super().__init__()
        self.cfg = cfg
        self.norm = _pre_norm(cfg)
        self.proj = nn.Linear(cfg.in_dim, cfg.out_dim, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, N, D_v] -> [B, N, D_lm]
        return self.proj(self.norm(x))


class MLPConnector(nn.Module):
    """Linear, GELU, Linear (LLaVA-1.5 `mlp2x_gelu`)."""

    def __init__(self, cfg: ConnectorConfig):
        super().__init__()
        self.cfg = cfg
        self.norm = _pre_norm(cfg)
        self.linear_1 = nn.Linear(cfg.in_dim, cfg.hidden_dim, bias=cfg.bias)
        self.act = ACTIVATIONS[cfg.act]()
        self.linear_2 = nn.Linear(cfg.hidden_dim, cfg.out_dim, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, N, D_v] -> [B, N, D_lm]
        return self.linear_2(self.act(self.linear_1(self.norm(x))))


def pixel_shuffle(x: torch.Tensor, r: int) -> torch.Tensor:
    """Space-to-depth on a square token grid: [B, N, D] -> [B, N / r^2, D * r^2].

    The element order is Idefics3's (transformers `Idefics3Connector.pixel_shuffle`),
    which checkpoints trained with it depend on: merge r columns, transpose,
    merge r rows, transpose back.
    """
    B, N, D = x.shape
    side = math.isqrt(N)
    if side * side != N or side % r:
        raise ValueError(f"pixel_shuffle needs a square grid divisible by {r}, got {N} tokens")
    x = x.view(B, side, side // r, D * r)  # merge r neighbours along a row
    x = x.permute(0, 2, 1, 3).reshape(B, side // r, side // r, D * r * r)  # then along a column
    return x.permute(0, 2, 1, 3).reshape(B, N // (r * r), D * r * r)


class PixelShuffleConnector(nn.Module):
    """Pixel shuffle by r, then a linear layer (Idefics3 / SmolVLM): r^2 times fewer tokens.

    With `tokens_per_cell` k > 1 (ours, not Idefics3's) the layer writes k tokens per merged cell, consecutive in
    the sequence: k times the tokens of Idefics3 at the same r. With `hidden_dim` > 0 (ours too) the projection
    is a two-layer GELU MLP of that width.
    """

    def __init__(self, cfg: ConnectorConfig):
        super().__init__()
        self.cfg = cfg
        self.norm = _pre_norm(cfg)
        d_in, d_out = cfg.in_dim * cfg.scale_factor**2, cfg.out_dim * cfg.tokens_per_cell
        if cfg.hidden_dim:  # ours: a GELU MLP in place of the linear layer (fitted by scripts/fit_connector.py)
            self.proj = nn.Sequential(nn.Linear(d_in, cfg.hidden_dim, bias=cfg.bias), nn.GELU(),
                                      nn.Linear(cfg.hidden_dim, d_out, bias=cfg.bias))
        else:
            self.proj = nn.Linear(d_in, d_out, bias=cfg.bias)
        if cfg.position_words:
            if not cfg.grid_size:
                raise ValueError("connector.position_words needs connector.grid_size (VLMConfig fills it in)")
            # [1, N_cells, D_lm]: the LM's embedding of each cell's place (place_phrases), set by training
            self.pos_embed = nn.Parameter(torch.zeros(1, self.cell_side ** 2, cfg.out_dim))

    @property
    def cell_side(self) -> int:
        """Merged cells per side of the tower's own grid (the place table's grid)."""
        return self.cfg.grid_size // self.cfg.scale_factor

    def set_place_table(self, table: torch.Tensor, weight: float) -> None:
        """Turn on position words (ConnectorConfig.position_words) with `table` [N_cells, D_lm], one vector per
        merged cell in raster order (the LM's embeddings of place_phrases)."""
        side = self.cell_side
        if table.shape != (side * side, self.cfg.out_dim):
            raise ValueError(f"position words: expected a [{side * side}, {self.cfg.out_dim}] table, got {list(table.shape)}")
        self.cfg.position_words = weight
        self.cfg.__post_init__()  # checks the weight and the connector kind
        like = next(self.proj.parameters())
        self.pos_embed = nn.Parameter(table.detach().clone().unsqueeze(0).to(like), requires_grad=like.requires_grad)

    def merge(self, x: torch.Tensor) -> torch.Tensor:  # [B, N, D_v] -> [B, N/r^2, D_v * r^2]
        """What the projection sees (scripts/fit_connector.py fits the projection on it)."""
        return pixel_shuffle(self.norm(x), self.cfg.scale_factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, N, D_v] -> [B, N/r^2 * k, D_lm]
        y = self.proj(self.merge(x))  # [B, N/r^2, k * D_lm]
        if self.cfg.position_words:
            w = self.cfg.position_words
            y = (1 - w) * y + w * self.place_embed(y.shape[1]).repeat(1, 1, self.cfg.tokens_per_cell)
        return y.reshape(y.shape[0], -1, self.cfg.out_dim)  # cell m's k tokens at m*k .. m*k + k-1

    def place_embed(self, cells: int) -> torch.Tensor:  # -> [1, cells, D_lm]
        """The place vectors for a grid of `cells` merged cells: another resolution's grid resamples the table,
        as the tower resamples its position embeddings."""
        n = self.pos_embed.shape[1]
        if cells == n:
            return self.pos_embed
        g, side = math.isqrt(n), math.isqrt(cells)
        return resize_grid_embed(self.pos_embed, g, side, side)


def place_phrases(side: int) -> list[str]:
    """Where each cell of a side x side grid lies, in raster order, as the words spatial questions use: the image in
    thirds, "top left" .. "bottom right", "left" / "right" / "top" / "bottom" beside the centre, "centre" in it."""
    third = lambda i: (6 * i + 3) // (2 * side)  # which third holds the cell's centre
    rows, cols = ("top", "", "bottom"), ("left", "", "right")
    out = []
    for i in range(side):
        for j in range(side):
            words = " ".join(w for w in (rows[third(i)], cols[third(j)]) if w)
            out.append(words or "centre")
    return out


# ---- resamplers: a fixed number of visual tokens at any resolution ----


class CrossAttention(nn.Module):
    """Multi-head attention from `x` [B, Nq, D] over `context` [B, Nk, D_ctx] (self-attention when context is x)."""

    def __init__(self, dim: int, num_heads: int, context_dim: int | None = None, bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=bias)
        self.kv = nn.Linear(context_dim or dim, 2 * dim, bias=bias)
        self.out = nn.Linear(dim, dim, bias=bias)

    def project_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, Nk, D_ctx] -> k, v [B, H, Nk, D_head]; split out so callers can cache it."""
        B, N, _ = context.shape
        k, v = self.kv(context).view(B, N, 2, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        return k, v

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
                kv: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        B, N, D = x.shape
        k, v = kv if kv is not None else self.project_kv(x if context is None else context)
        q = self.q(x).view(B, N, self.num_heads, -1).transpose(1, 2)  # [B, H, Nq, D_head]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # mask: bool, True = attend
        return self.out(out.transpose(1, 2).reshape(B, N, D))


def feed_forward(dim: int, hidden: int, bias: bool = True) -> nn.Sequential:
    """Pre-norm MLP: LayerNorm, Linear, GELU, Linear."""
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden, bias=bias), nn.GELU(), nn.Linear(hidden, dim, bias=bias))


class QFormerBlock(nn.Module):
    """Self-attention over the queries, cross-attention from the queries to the image tokens, MLP (pre-norm)."""

    def __init__(self, dim: int, vision_dim: int, num_heads: int, mlp_hidden: int):
        super().__init__()
        self.norm_self = nn.LayerNorm(dim)
        self.self_attn = CrossAttention(dim, num_heads)
        self.norm_cross = nn.LayerNorm(dim)
        self.norm_image = nn.LayerNorm(vision_dim)
        self.cross_attn = CrossAttention(dim, num_heads, context_dim=vision_dim)
        self.mlp = feed_forward(dim, mlp_hidden)

    def forward(self, q: torch.Tensor, image: torch.Tensor) -> torch.Tensor:  # [B, K, H], [B, N, D_v] -> [B, K, H]
        q = q + self.self_attn(self.norm_self(q))
        q = q + self.cross_attn(self.norm_cross(q), self.norm_image(image))
        return q + self.mlp(q)


class QFormerConnector(nn.Module):
    """BLIP-2's Q-Former (Li et al. 2023): K learned queries read the image through cross-attention.

    BLIP-2 uses a 12-layer BERT with cross-attention in every second layer; here every block
    cross-attends, so the default 6 blocks hold BLIP-2's 6 cross-attention layers. Pre-norm
    rather than BERT's post-norm, since we train from scratch. Out: [B, num_queries, D_lm].
    """

    def __init__(self, cfg: ConnectorConfig):
        super().__init__()
        self.cfg = cfg
        H = cfg.hidden_dim
        # BLIP-2 inits the queries N(0, 0.02); truncated normal (as timm) is the same at +-100 sigma, and
        # unlike randn it builds instantly on the meta device `vlmkit tokens` counts parameters on
        self.queries = nn.Parameter(nn.init.trunc_normal_(torch.empty(1, cfg.num_queries, H), std=0.02))
        self.blocks = nn.ModuleList(
            QFormerBlock(H, cfg.in_dim, cfg.num_heads, int(H * cfg.mlp_ratio)) for _ in range(cfg.num_layers)
        )
        self.norm = nn.LayerNorm(H)
        self.proj = nn.Linear(H, cfg.out_dim, bias=cfg.bias)  # BLIP-2's language_projection

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, N, D_v] -> [B, K, D_lm]
        q = self.queries.expand(x.shape[0], -1, -1)
        for blk in self.blocks:
            q = blk(q, x)
        return self.proj(self.norm(q))


class PerceiverLayer(nn.Module):
    """Latents attend over [image tokens; latents], then an MLP (Flamingo's PerceiverAttention + FeedForward)."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int):
        super().__init__()
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.attn = CrossAttention(dim, num_heads, bias=False)  # bias-free, as in Flamingo / OpenFlamingo
        self.mlp = feed_forward(dim, mlp_hidden, bias=False)

    def forward(self, latents: torch.Tensor, media: torch.Tensor) -> torch.Tensor:  # [B, K, H], [B, N, H]
        lat = self.norm_latents(latents)
        # keys include the latents themselves, so latents can also exchange information (Flamingo, eq. in fig. 5)
        latents = latents + self.attn(lat, torch.cat([self.norm_media(media), lat], dim=1))
        return latents + self.mlp(latents)


class PerceiverResampler(nn.Module):
    """Flamingo's Perceiver resampler (Alayrac et al. 2022): K learned latents, any number of image tokens in.

    Flamingo keeps the resampler at the vision width and lets the LM's cross-attention project;
    here a final linear maps to D_lm so the same module serves token-sequence VLMs and the
    fusion mode. Single frames only: the temporal embeddings for video are left out.
    """

    def __init__(self, cfg: ConnectorConfig):
        super().__init__()
        self.cfg = cfg
        H = cfg.hidden_dim
        self.in_proj = nn.Linear(cfg.in_dim, H) if H != cfg.in_dim else nn.Identity()
        self.latents = nn.Parameter(nn.init.trunc_normal_(torch.empty(1, cfg.num_queries, H), std=1.0))  # OpenFlamingo: N(0, 1)
        self.layers = nn.ModuleList(PerceiverLayer(H, cfg.num_heads, int(H * cfg.mlp_ratio)) for _ in range(cfg.num_layers))
        self.norm = nn.LayerNorm(H)
        self.proj = nn.Linear(H, cfg.out_dim, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, N, D_v] -> [B, K, D_lm]
        media = self.in_proj(x)
        latents = self.latents.expand(x.shape[0], -1, -1)
        for layer in self.layers:
            latents = layer(latents, media)
        return self.proj(self.norm(latents))


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over channels of a [B, C, H, W] map (timm's LayerNorm2d, used by Honeybee)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class RegBlock(nn.Module):
    """The ResNet-style bottleneck of timm's RegNet, as Honeybee configures it (bottle ratio 1,
    depthwise 3x3, squeeze-excite 0.25, SiLU, LayerNorm2d), with a projected shortcut when widths differ."""

    def __init__(self, in_ch: int, out_ch: int, se_ratio: float = 0.25):
        super().__init__()
        se_ch = max(1, round(in_ch * se_ratio))
        self.conv1 = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, bias=False), LayerNorm2d(out_ch), nn.SiLU())
        self.conv2 = nn.Sequential(nn.Conv2d(out_ch, out_ch, 3, padding=1, groups=out_ch, bias=False), LayerNorm2d(out_ch), nn.SiLU())
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(out_ch, se_ch, 1), nn.ReLU(), nn.Conv2d(se_ch, out_ch, 1), nn.Sigmoid())
        self.conv3 = nn.Sequential(nn.Conv2d(out_ch, out_ch, 1, bias=False), LayerNorm2d(out_ch))
        self.shortcut = (
            nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, bias=False), LayerNorm2d(out_ch)) if in_ch != out_ch else nn.Identity()
        )
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C_in, h, w] -> [B, C_out, h, w]
        y = self.conv2(self.conv1(x))
        y = self.conv3(y * self.se(y))
        return self.act(y + self.shortcut(x))


class CAbstractor(nn.Module):
    """Honeybee's C-Abstractor (Cha et al. 2024): conv blocks on the patch grid, adaptive average
    pooling to a sqrt(K) x sqrt(K) grid, more conv blocks, then an MLP readout to D_lm.

    Convolutions keep locality that a resampler's attention throws away, at any input grid.
    Honeybee also adds a learned position embedding to the tower tokens; it is left out so
    one checkpoint runs at any resolution (the tower's tokens already carry positions).
    """

    def __init__(self, cfg: ConnectorConfig):
        super().__init__()
        self.cfg = cfg
        H, depth = cfg.hidden_dim, cfg.num_layers
        self.side = math.isqrt(cfg.num_queries)
        self.stage1 = nn.Sequential(*(RegBlock(cfg.in_dim if i == 0 else H, H) for i in range(depth)))
        self.pool = nn.AdaptiveAvgPool2d(self.side)
        self.stage2 = nn.Sequential(*(RegBlock(H, H) for _ in range(depth)))
        # Honeybee's readout: build_mlp(depth=2) = Linear, SiLU, Linear
        self.readout = nn.Sequential(nn.Linear(H, cfg.out_dim, bias=cfg.bias), nn.SiLU(), nn.Linear(cfg.out_dim, cfg.out_dim, bias=cfg.bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, N, D_v] -> [B, K, D_lm]
        B, N, D = x.shape
        side = math.isqrt(N)
        if side * side != N:
            raise ValueError(f"cabstractor needs a square patch grid, got {N} tokens (drop the CLS token)")
        x = x.transpose(1, 2).reshape(B, D, side, side)  # [B, D_v, h, w]
        x = self.stage2(self.pool(self.stage1(x)))  # [B, H, sqrt(K), sqrt(K)]
        return self.readout(x.flatten(2).transpose(1, 2))


CONNECTORS: dict[str, type[nn.Module]] = {
    "linear": LinearConnector,
    "mlp2x_gelu": MLPConnector,
    "pixel_shuffle": PixelShuffleConnector,
    "qformer": QFormerConnector,
    "perceiver": PerceiverResampler,
    "cabstractor": CAbstractor,
}


def build_connector(cfg: ConnectorConfig) -> nn.Module:
    if cfg.kind not in CONNECTORS:
        raise ValueError(f"connector {cfg.kind!r} is not available; choose from {sorted(CONNECTORS)}")
    if not (cfg.in_dim and cfg.out_dim):
        raise ValueError("connector in_dim/out_dim are unset: build it through VLMConfig")
    return CONNECTORS[cfg.kind](cfg)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
