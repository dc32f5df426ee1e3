"""Visual token compression: merge neighbours that say the same thing (after ToMe, Bolya et al. 2023).

ToMe pairs tokens by similarity and averages the pair. Here the pairs are restricted to
neighbours, so the merged sequence keeps its raster order and the LM still reads the image
top-left to bottom-right:

  spatial   token (r, c) joins the run of (r, c-1) when their cosine similarity > threshold;
            each run of a row becomes one token, the mean of the run.
  temporal  token n of frame f joins the run of token n of frame f-1 when similar > threshold
            (a static background is kept once, in the first frame where it appears).

Each edge above the threshold saves exactly one token, so `saved` is the number of similar
neighbour pairs: predictable, and testable on constructed features.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class MergeResult:
    tokens: torch.Tensor  # [M, D] the kept (merged) tokens, in order
    sizes: torch.Tensor  # [M] how many input tokens each stands for
    # derived
    saved: int = field(init=False)

    def __post_init__(self):
        self.saved = int(self.sizes.sum()) - self.tokens.shape[0]


def _runs_mean(x: torch.Tensor, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [N, D], starts [N] bool (True where a new run begins) -> run means [M, D], run sizes [M]."""
    run_id = torch.cumsum(starts.long(), 0) - 1  # [N]
    M = int(run_id[-1]) + 1
    sums = x.new_zeros(M, x.shape[-1]).index_add_(0, run_id, x)
    sizes = torch.bincount(run_id, minlength=M)
    return sums / sizes.unsqueeze(-1).to(x.dtype), sizes


def merge_spatial(x: torch.Tensor, threshold: float, grid: tuple[int, int] | None = None) -> MergeResult:
    """x [N, D] on a rows x cols raster grid (default: square) -> runs of similar row neighbours merged."""
    N = x.shape[0]
    if N == 0:
        return MergeResult(x, torch.zeros(0, dtype=torch.long))
    rows, cols = grid or _square(N)
    if rows * cols != N:
        raise ValueError(f"grid {rows}x{cols} does not hold {N} tokens")
    sim = F.cosine_similarity(x[1:], x[:-1], dim=-1)  # [N-1] each token with its left neighbour
    joins = sim > threshold
    joins[cols - 1 :: cols] = False  # the first token of each row never joins the previous row's last
    starts = torch.cat([torch.ones(1, dtype=torch.bool), ~joins])
    tokens, sizes = _runs_mean(x, starts)
    return MergeResult(tokens, sizes)


def merge_temporal(frames: torch.Tensor, threshold: float) -> list[MergeResult]:
    """frames [F, N, D] (the same grid per frame) -> per frame, the tokens that changed since the previous one.

    A token similar to the same position in the previous frame is averaged into that earlier
    token and dropped from its own frame; chains of similar frames collapse into their first.
    """
    Fr, N, D = frames.shape
    if Fr == 0:
        return []
    sim = F.cosine_similarity(frames[1:], frames[:-1], dim=-1)  # [F-1, N]
    starts = torch.cat([torch.ones(1, N, dtype=torch.bool), ~(sim > threshold)])  # [F, N]
    # runs along time per position: average each run into its first frame
    flat = frames.transpose(0, 1).reshape(N * Fr, D)  # position-major, time inner
    run_starts = starts.transpose(0, 1).reshape(-1)
    means, sizes = _runs_mean(flat, run_starts)
    owner_frame = torch.arange(Fr).repeat(N)[run_starts]  # [M] the frame each run is kept in
    owner_pos = torch.arange(N).repeat_interleave(Fr)[run_starts]
    out = []
    for f in range(Fr):
        sel = owner_frame == f
        order = torch.argsort(owner_pos[sel])  # raster order inside the frame
        out.append(MergeResult(means[sel][order], sizes[sel][order]))
    return out


def _square(n: int) -> tuple[int, int]:
    side = math.isqrt(n)
    return (side, side) if side * side == n else (1, n)


@dataclass
class CompressionReport:
    before: int
    after: int

    @property
    def saved(self) -> int:
        return self.before - self.after

    def __str__(self) -> str:
        pct = 100 * self.saved / max(1, self.before)
        return f"{self.before:,} -> {self.after:,} visual tokens ({self.saved:,} saved, {pct:.1f}%)"
