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


def supervised_positions(labels: torch.Tensor) -> torch.Tensor:
    """labels [B, T] -> 1-D indices t (shared by the batch) whose next token t+1 is supervised in some row.

    Only these positions need the vocabulary projection: on instruction data they are a small
    fraction of the sequence, and a 49k-vocabulary head costs about a fifth of SmolLM2's FLOPs."""
    return (labels[:, 1:] != IGNORE).any(0).nonzero().squeeze(-1)


def lm_loss_sum_at(logits: torch.Tensor, labels: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """logits [B, P, V] computed at `positions` (from supervised_positions) -> the same sum as lm_loss_sum."""
    targets = labels[:, positions + 1]  # [B, P]
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE, reduction="sum")


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, scale: torch.Tensor, positives: torch.Tensor | None = None) -> torch.Tensor:
    """image_emb, text_emb [B, D] (L2-normalised), scale = exp(logit_scale) -> scalar.

    positives [B, B] (bool) marks extra matching pairs, e.g. two images captioned with the same
    class prompt; each row's target then spreads evenly over its positives. None = the diagonal.
    """
    logits = scale * image_emb @ text_emb.t()  # [B_img, B_txt]
    if positives is None:
        target = torch.arange(logits.shape[0], device=logits.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
    soft = positives.to(logits.dtype)
    return (F.cross_entropy(logits, soft / soft.sum(1, keepdim=True)) + F.cross_entropy(logits.t(), soft.t() / soft.t().sum(1, keepdim=True))) / 2


def siglip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, positives: torch.Tensor | None = None) -> torch.Tensor:
    """image_emb, text_emb [B, D], scale = exp(t'), bias b -> scalar, normalised by B as in the paper.

    positives [B, B] (bool): pairs labelled +1 (None = the diagonal). Without it, two images with the
    same class caption would be pushed apart from each other's (identical) text.
    """
    logits = scale * image_emb @ text_emb.t() + bias  # [B, B]
    pos = torch.eye(logits.shape[0], device=logits.device, dtype=torch.bool) if positives is None else positives
    z = 2 * pos.to(logits.dtype) - 1
    return -F.logsigmoid(z * logits).sum() / logits.shape[0]


def same_text_positives(texts: list[str]) -> torch.Tensor:
    """[B, B] bool: True where two captions are identical (the diagonal included)."""
    ids = {t: i for i, t in enumerate(dict.fromkeys(texts))}
    k = torch.tensor([ids[t] for t in texts])
    return k[:, None] == k[None, :]


def contrastive_loss(kind: str, image_emb, text_emb, scale, bias=None, positives=None) -> torch.Tensor:
    if kind == "clip":
        return clip_loss(image_emb, text_emb, scale, positives)
    if kind == "siglip":
        return siglip_loss(image_emb, text_emb, scale, bias, positives)
    raise ValueError(f"unknown contrastive loss {kind!r}")
