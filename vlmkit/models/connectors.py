"""Connectors: [B, N_tokens, D_vision] -> [B, N_visual, D_lm].

Each connector is chosen by `ConnectorConfig.kind` through CONNECTORS, and
reports how many visual tokens it hands the LM via `num_output_tokens`.
Module names follow the upstream checkpoints (LLaVA's linear_1/linear_2,
Idefics3's proj) so the converters' key maps stay small.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..config import ConnectorConfig

ACTIVATIONS = {"gelu": nn.GELU, "gelu_tanh": lambda: nn.GELU(approximate="tanh"), "relu": nn.ReLU, "silu": nn.SiLU}


class LinearConnector(nn.Module):
    """One linear layer (LLaVA-1.0)."""

    def __init__(self, cfg: ConnectorConfig):
        super().__init__()
        self.cfg = cfg
        self.proj = nn.Linear(cfg.in_dim, cfg.out_dim, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, N, D_v] -> [B, N, D_lm]
        return self.proj(x)


class MLPConnector(nn.Module):
    """Linear, GELU, Linear (LLaVA-1.5 `mlp2x_gelu`)."""

    def __init__(self, cfg: ConnectorConfig):
        super().__init__()
        self.cfg = cfg
        self.linear_1 = nn.Linear(cfg.in_dim, cfg.hidden_dim, bias=cfg.bias)
        self.act = ACTIVATIONS[cfg.act]()
        self.linear_2 = nn.Linear(cfg.hidden_dim, cfg.out_dim, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, N, D_v] -> [B, N, D_lm]
        return self.linear_2(self.act(self.linear_1(x)))


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
    """Pixel shuffle by r, then a linear layer (Idefics3 / SmolVLM): r^2 times fewer tokens."""

    def __init__(self, cfg: ConnectorConfig):
        super().__init__()
        self.cfg = cfg
        self.proj = nn.Linear(cfg.in_dim * cfg.scale_factor**2, cfg.out_dim, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, N, D_v] -> [B, N/r^2, D_lm]
        return self.proj(pixel_shuffle(x, self.cfg.scale_factor))


CONNECTORS: dict[str, type[nn.Module]] = {
    "linear": LinearConnector,
    "mlp2x_gelu": MLPConnector,
    "pixel_shuffle": PixelShuffleConnector,
}


def build_connector(cfg: ConnectorConfig) -> nn.Module:
    if cfg.kind not in CONNECTORS:
        raise ValueError(f"connector {cfg.kind!r} is not available; choose from {sorted(CONNECTORS)}")
    if not (cfg.in_dim and cfg.out_dim):
        raise ValueError("connector in_dim/out_dim are unset: build it through VLMConfig")
    return CONNECTORS[cfg.kind](cfg)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
