"""Vision towers: our ViT, and thin adapters around transformers' CLIP, SigLIP and Idefics3 towers.

Every tower exposes the same interface:
  forward_features(pixel_values) -> [B, N_tokens, D_vision]   patch tokens for a connector
  encode_image(pixel_values)     -> [B, D_vision]             one pooled vector per image
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import VisionConfig


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, N, D = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each [B, H, N, D_head]
        # attn_mask (bool, True = attend) lets several images share one packed sequence (NaViT)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class Block(nn.Module):
    """Pre-norm transformer block (ViT / CLIP layout)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential()
        self.mlp.add_module("fc1", nn.Linear(dim, hidden))
        self.mlp.add_module("act", nn.GELU())
        self.mlp.add_module("fc2", nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), attn_mask)
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """A plain ViT (Dosovitskiy et al. 2021) with learned 2-D position embeddings.

    Position embeddings are learned for the training grid and bicubically
    interpolated for any other grid, so one checkpoint encodes any resolution
    that is a multiple of the patch size.
    """

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        D = cfg.hidden_size
        self.patch_embed = nn.Conv2d(3, D, cfg.patch_size, cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D)) if cfg.use_cls else None
        self.pos_embed = nn.Parameter(torch.randn(1, cfg.num_patches, D) * 0.02)  # grid positions only
        self.cls_pos = nn.Parameter(torch.zeros(1, 1, D)) if cfg.use_cls else None
        self.blocks = nn.ModuleList(Block(D, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.num_layers))
        self.norm = nn.LayerNorm(D, eps=1e-6)
        self.apply(_init_weights)

    def grid_pos_embed(self, gh: int, gw: int) -> torch.Tensor:
        """[1, gh*gw, D] position embeddings for a gh x gw patch grid."""
        g = self.cfg.grid_size
        if (gh, gw) == (g, g):
            return self.pos_embed
        return resize_grid_embed(self.pos_embed, g, gh, gw)

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixel_values)  # [B, D, gh, gw]
        gh, gw = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2) + self.grid_pos_embed(gh, gw)  # [B, gh*gw, D]
        if self.cls_token is not None:
            cls = (self.cls_token + self.cls_pos).expand(x.shape[0], -1, -1)
            x = torch.cat([cls, x], dim=1)  # [B, 1 + N_patches, D]
        return x

    def forward(self, pixel_values: torch.Tensor, attn_mask: torch.Tensor | None = None,
                num_blocks: int | None = None) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        """Returns (final normed output, hidden_states) with hidden_states[0] = embeddings."""
        return self.run_blocks(self.embed(pixel_values), attn_mask, num_blocks)

    def run_blocks(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                   num_blocks: int | None = None) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        """num_blocks: stop after that many blocks (a connector that reads a hidden state needs no more); the final
        normed output is then None, even when every block ran, since the caller reads hidden_states."""
        hidden_states = [x]
        for blk in self.blocks[:num_blocks]:
            x = blk(x, attn_mask)
            hidden_states.append(x)
        return (self.norm(x) if num_blocks is None else None), hidden_states

    def forward_packed(self, images: list[torch.Tensor], max_len: int | None = None, num_blocks: int | None = None):
        """NaViT (Dehghani et al. 2023): images of any size, no padding to a square.

        images: [3, H_i, W_i] each, sides multiples of the patch size. Each image becomes
        its own sequence (CLS + gh_i * gw_i patches, with position embeddings for its own
        grid); sequences are packed first-fit into rows of at most max_len tokens (default:
        all in one row), and a block-diagonal mask keeps every image attending only to itself.
        Returns (final [P, L, D], hidden_states, spans) with spans[i] = (row, start, end).
        """
        seqs = [self.embed(img.unsqueeze(0))[0] for img in images]  # [N_i, D] each
        lengths = [s.shape[0] for s in seqs]
        rows, spans = pack_sequences(lengths, max_len)
        L = max(sum(lengths[i] for i in r) for r in rows)
        D = seqs[0].shape[-1]
        x = seqs[0].new_zeros(len(rows), L, D)  # [P, L, D]
        seg = torch.full((len(rows), L), -1, dtype=torch.long)  # image index per slot, -1 = padding
        for i, (row, start, end) in enumerate(spans):
            x[row, start:end] = seqs[i]
            seg[row, start:end] = i
        mask = seg.unsqueeze(-1) == seg.unsqueeze(-2)  # [P, L, L] block-diagonal
        pad = seg == -1
        # padding slots attend only to themselves: a row of all-False would give NaN in softmax
        mask = mask & ~pad.unsqueeze(-1) | torch.diag_embed(pad)
        final, hidden_states = self.run_blocks(x, mask.unsqueeze(1), num_blocks)  # mask [P, 1, L, L] broadcasts over heads
        return final, hidden_states, spans


def resize_grid_embed(pos_embed: torch.Tensor, g: int, gh: int, gw: int) -> torch.Tensor:
    """[1, g*g, D] learned grid position embeddings -> [1, gh*gw, D], bicubic (ViT / CLIP at a new resolution)."""
    pe = pos_embed.reshape(1, g, g, -1).permute(0, 3, 1, 2)  # [1, D, g, g]
    pe = F.interpolate(pe, size=(gh, gw), mode="bicubic", align_corners=False)
    return pe.permute(0, 2, 3, 1).reshape(1, gh * gw, -1)


def pack_sequences(lengths: list[int], max_len: int | None = None) -> tuple[list[list[int]], list[tuple[int, int, int]]]:
    """First-fit packing, in order: -> (rows of sequence indices, (row, start, end) per sequence)."""
    if max_len is None:
        max_len = sum(lengths)
    rows: list[list[int]] = []
    used: list[int] = []
    spans: list[tuple[int, int, int]] = []
    for i, n in enumerate(lengths):
        if n > max_len:
            raise ValueError(f"sequence {i} has {n} tokens, more than the pack length {max_len}")
        r = next((r for r, u in enumerate(used) if u + n <= max_len), None)
        if r is None:
            rows.append([])
            used.append(0)
            r = len(rows) - 1
        spans.append((r, used[r], used[r] + n))
        rows[r].append(i)
        used[r] += n
    return rows, spans


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
        nn.init.trunc_normal_(m.weight, std=math.sqrt(1.0 / fan_in))
        nn.init.zeros_(m.bias)


def _build_hf_tower(cfg: VisionConfig) -> nn.Module:
    """A randomly initialised transformers tower of the given config (weights come from our loader)."""
    if cfg.kind == "hf_clip":
        from transformers import CLIPVisionConfig, CLIPVisionModel

        return CLIPVisionModel(CLIPVisionConfig(**cfg.hf_config))
    if cfg.kind == "hf_siglip":
        from transformers import SiglipVisionConfig, SiglipVisionModel

        return SiglipVisionModel(SiglipVisionConfig(**cfg.hf_config))
    if cfg.kind == "hf_idefics3":
        from transformers.models.idefics3.configuration_idefics3 import Idefics3VisionConfig
        from transformers.models.idefics3.modeling_idefics3 import Idefics3VisionTransformer

        return Idefics3VisionTransformer(Idefics3VisionConfig(**cfg.hf_config))
    raise ValueError(cfg.kind)


class VisionTower(nn.Module):
    """The standard interface around any tower: layer selection, CLS handling, pooling."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        self.model = ViT(cfg) if cfg.kind == "vit" else _build_hf_tower(cfg)

    def _feature_index(self) -> int | None:
        """cfg.feature_layer as an index from the front of hidden_states, which is also how many blocks our ViT must
        run to reach it (None: all of them, and the final norm)."""
        f = self.cfg.feature_layer
        return None if f is None else range(self.cfg.num_layers + 1)[f]

    def _run(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        if self.cfg.kind == "vit":
            return self.model(pixel_values, num_blocks=self._feature_index())
        out = self.model(pixel_values=pixel_values, output_hidden_states=True, return_dict=True)
        return out.last_hidden_state, list(out.hidden_states)

    def _select(self, final: torch.Tensor | None, hidden_states: list[torch.Tensor]) -> torch.Tensor:
        k = self._feature_index()
        return final if k is None else hidden_states[k]

    def forward_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, N_tokens, D_vision], from cfg.feature_layer (penultimate by default)."""
        x = self._select(*self._run(pixel_values))
        if self.cfg.use_cls and not self.cfg.keep_cls:
            x = x[:, 1:]  # drop CLS, as LLaVA's "default" select strategy does
        return x

    def forward_features_packed(self, images: list[torch.Tensor], max_len: int | None = None) -> list[torch.Tensor]:
        """Native resolution (our ViT only): [3, H_i, W_i] each -> [N_i, D_vision] each, packed NaViT-style."""
        if self.cfg.kind != "vit":
            raise ValueError(f"packed native-resolution encoding needs our ViT (vision.kind='vit'), not {self.cfg.kind!r}")
        final, hidden_states, spans = self.model.forward_packed(images, max_len, self._feature_index())
        x = self._select(final, hidden_states)  # [P, L, D]
        skip = int(self.cfg.use_cls and not self.cfg.keep_cls)
        return [x[row, start + skip:end] for row, start, end in spans]

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, D_vision]: the normed CLS token, or the mean of normed patch tokens."""
        if self.cfg.kind == "vit":
            final, _ = self.model(pixel_values)
            return final[:, 0] if self.cfg.use_cls else final.mean(dim=1)
        out = self.model(pixel_values=pixel_values, return_dict=True)
        pooled = getattr(out, "pooler_output", None)
        return pooled if pooled is not None else out.last_hidden_state.mean(dim=1)

    def unused_by_features(self) -> list[str]:
        """Names of the parameters that forward_features never reads: the blocks after cfg.feature_layer, a final
        norm, a pooling head. Found by autograd on one blank image rather than listed per tower kind, so it holds
        for ours and every transformers tower alike. A VLM's trainer leaves these out of the optimizer: they would get
        no gradient, which DDP refuses."""
        named = list(self.named_parameters())
        was = [p.requires_grad for _, p in named]
        p0 = named[0][1]
        try:
            for _, p in named:
                p.requires_grad_(True)
            with torch.enable_grad():
                x = torch.zeros(1, 3, self.cfg.image_size, self.cfg.image_size, device=p0.device, dtype=p0.dtype)
                out = self.forward_features(x)  # [1, N_tokens, D_vision]
                grads = torch.autograd.grad(out.float().sum(), [p for _, p in named], allow_unused=True)
        finally:
            for (_, p), w in zip(named, was):
                p.requires_grad_(w)
        return [n for (n, _), g in zip(named, grads) if g is None]

    forward = forward_features
