"""Training losses.

lm_loss_sum: next-token cross-entropy summed over supervised tokens. The loop
divides by the supervised-token count of the whole optimizer step (all
micro-batches, all processes), so the loss is a mean over answer tokens however
the batch is split, which is what makes accumulation and DDP match one big batch.

clip_loss (Radford et al. 2021): symmetric softmax cross-entropy over the
B x B similarity matrix with a learned temperature.
siglip_loss (Zhai et al. 2023): -1/B sum_ij log sigmoid(z_ij (t x_i.y_j + b)),
z_ij = 1 on the diagonal, -1 elsewhere; t and b learned (init log 10 and -10).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .collate import IGNORE


def lm_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """logits [B, T, V], labels [B, T] -> scalar sum over positions whose next-token label is not -100."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE, reduction="sum")


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """image_emb, text_emb [B, D] (L2-normalised), scale = exp(logit_scale) -> scalar."""
    logits = scale * image_emb @ text_emb.t()  # [B_img, B_txt]
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


def siglip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """image_emb, text_emb [B, D], scale = exp(t'), bias b -> scalar, normalised by B as in the paper."""
    logits = scale * image_emb @ text_emb.t() + bias  # [B, B]
    z = 2 * torch.eye(logits.shape[0], device=logits.device, dtype=logits.dtype) - 1
    return -F.logsigmoid(z * logits).sum() / logits.shape[0]


def contrastive_loss(kind: str, image_emb, text_emb, scale, bias=None) -> torch.Tensor:
    if kind == "clip":
        return clip_loss(image_emb, text_emb, scale)
    if kind == "siglip":
        return siglip_loss(image_emb, text_emb, scale, bias)
    raise ValueError(f"unknown contrastive loss {kind!r}")
