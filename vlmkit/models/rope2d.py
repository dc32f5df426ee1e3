"""2-D rotary positions for visual tokens: M-RoPE (Qwen2-VL, Wang et al. 2024), with the interleaved frequency
layout of Qwen3-VL.

In a raster of visual tokens the LM's 1-D RoPE tells it roughly which row a token is in (its place in the
sequence) but not its column: vlmkit-smol learned to place boxes by row and not by column (EXPERIMENTS.md,
session 13). Here every position has three ids (t, row, col):

- A text token has the same id on all three axes, so a prompt without images rotates exactly as under the LM's
  own RoPE.
- An image's R x C grid that starts at id s has t = s, row = s + r, col = s + c. The text after it goes on from
  s + max(R, C), as in transformers' Qwen2-VL `get_rope_index`.

Each rotary frequency follows one axis. Qwen2-VL gives the axes three blocks of frequencies, which would leave the
column only the slowest ones: at SmolLM2's base of 1e5 they turn by less than a thousandth of a radian from one
column to the next. Qwen3-VL interleaves them instead (t, row, col, t, row, col, ...), which gives rows and columns
the fast frequencies too.
"""
from __future__ import annotations

import torch


def frequency_axes(n_freq: int) -> torch.Tensor:
    """[F]: the axis (0 t, 1 row, 2 col) each rotary frequency follows. With n = F // 3, rows get frequencies
    1, 4, ..., 3n - 2 and columns 2, 5, ..., 3n - 1; t gets the rest. This is Qwen3-VL's mrope_section
    [F - 2n, n, n]."""
    n = n_freq // 3
    axes = torch.zeros(n_freq, dtype=torch.long)
    axes[1:3 * n:3] = 1
    axes[2:3 * n:3] = 2
    return axes


def grid_position_ids(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, image_token_id: int,
                      grid: tuple[int, int]) -> torch.Tensor:
    """input_ids [B, T] -> position ids [3, B, T] (t, row, col).

    Every rows * cols consecutive image tokens are one image (or one tile), laid out row by row. Padding
    (attention_mask 0) takes no ids, so a left-padded row has the ids it would have alone.
    """
    rows, cols = grid
    per_image = rows * cols
    valid = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    is_image = (input_ids == image_token_id) & valid  # [B, T]
    counts = is_image.sum(-1)
    if (counts % per_image).any():
        raise ValueError(f"prompt rows have {counts.tolist()} image positions, not a whole number of {rows} x {cols} grids")
    k = (is_image.long().cumsum(-1) - 1) % per_image  # [B, T] place of an image token within its grid
    last_of_image = is_image & (k == per_image - 1)
    # ids each token uses up: 1 for text, max(R, C) for a whole image (charged at its last token), 0 for padding
    step = (valid & ~is_image).long() + last_of_image.long() * max(rows, cols)
    start = step.cumsum(-1) - step  # [B, T] exclusive running sum: an image's tokens all see the id it starts at
    row = torch.where(is_image, k // cols, 0)
    col = torch.where(is_image, k % cols, 0)
    return torch.stack([start, start + row, start + col])  # [3, B, T]


def rotary_cos_sin(rotary, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What `rotary` (a transformers Llama-style rotary embedding: `inv_freq`, `attention_scaling`, halves
    concatenated) returns for 1-D ids, for 3-axis ids [3, B, T] instead: cos, sin [B, T, head_dim]."""
    inv_freq = rotary.inv_freq.to(device=x.device, dtype=torch.float)  # [F]
    axes = frequency_axes(inv_freq.shape[0]).to(x.device)
    ids = position_ids[axes].permute(1, 2, 0).float()  # [B, T, F]: each frequency's own axis
    freqs = ids * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)  # [B, T, head_dim]
    return (emb.cos() * rotary.attention_scaling).to(x.dtype), (emb.sin() * rotary.attention_scaling).to(x.dtype)
