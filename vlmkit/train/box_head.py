"""Fitting a box head (models/box_head.py) on a trained VLM whose weights stay as they are.

The VLM runs once over the grounding conversations, teacher-forced, and we keep, for every box answer, the LM's
final hidden state at the trigger and the token ids ending there, and for every image its tower patches and the
LM's final states at its visual tokens. The head then trains on those alone: about 800 steps a minute on two CPU
cores, where one LoRA step of the LM takes fifteen seconds.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data.boxes import parse_boxes
from ..models.box_head import BoxHead, context_window
from .collate import ROLES, ConversationEncoder, LMCollator
from .data import SkipSample


def as_conversation(row: dict) -> dict:
    """A grounding record as a conversation: LLaVA rows pass through; an evaluation row {question, answers}
    becomes one turn whose reply is its first reference."""
    if "conversations" in row:
        return row
    return {"id": row.get("id"), "image": row["image"],
            "conversations": [{"from": "human", "value": "<image>\n" + row["question"]},
                              {"from": "gpt", "value": row["answers"][0]}]}


def reply_boxes(row: dict) -> list[torch.Tensor]:
    """Every box in the row's replies, in order, as [4] in 0..1. A reply may hold several. A reply that writes points
    (`<point>x,y</point>`, whose digits do not give the box) carries its objects' boxes as "places", one 0-1000 box per
    box or point it writes, in order (scripts/make_grounded_relations.py --points)."""
    boxes = []
    for turn in row["conversations"]:
        if ROLES.get(turn.get("from")) == "assistant":
            boxes += turn["places"] if "places" in turn else parse_boxes(turn["value"])
    return [torch.tensor(box, dtype=torch.float32) / 1000 for box in boxes]


def trigger_positions(ids: list[int], labels: list[int], trigger_ids: list[int]) -> list[int]:
    """Positions of the last token of each supervised trigger: where the LM's state asks for the first digit."""
    k = len(trigger_ids)
    return [p + k - 1 for p in range(len(ids) - k + 1) if ids[p:p + k] == trigger_ids and labels[p] != -100]


@torch.no_grad()
def collect(model, tokenizer, image_processor, rows: list[dict], root: Path, batch_size: int = 16,
            progress: bool = True) -> dict[str, torch.Tensor]:
    """-> {query [n, D_lm], context [n, K], context_mask [n, K], patches [m, N, D_vision], states [m, M, D_lm],
    image [n], box [n, 4]} for the n boxes of m images. Rows whose boxes and triggers disagree, or that fail to load, are skipped and
    counted in "skipped"."""
    from tqdm.auto import tqdm

    cfg = model.cfg.box_head
    cfg_k = cfg.context_tokens
    # a trigger tokenizes differently at the start of a reply ("<box>": "<", ...) and after a word (" <", ...)
    triggers = [tokenizer(lead + t, add_special_tokens=False).input_ids for t in (cfg.trigger, cfg.point_trigger)
                for lead in ("", " ")]
    enc = ConversationEncoder(tokenizer, image_processor, model.cfg.image_token, model.cfg.image_token_id,
                              model.cfg.image_layout, max_length=0)
    collate = LMCollator(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    kept: dict[str, list] = {"query": [], "context": [], "context_mask": [], "patches": [], "states": [], "image": [],
                             "box": []}
    captured = {}
    hook = model.lm._final_norm.register_forward_hook(lambda m, a, out: captured.__setitem__("h", out))
    skipped = 0
    try:
        for start in tqdm(range(0, len(rows), batch_size), desc="box head: features", unit="batch", disable=not progress):
            batch = []
            for row in rows[start:start + batch_size]:
                row = as_conversation(row)
                try:
                    batch.append((enc(row, root), reply_boxes(row)))
                except SkipSample:
                    skipped += 1
            if not batch:
                continue
            b = collate([s for s, _ in batch])
            patches = model.vision.forward_features(b["pixel_values"])  # [B, N, D_vision]
            model(b["input_ids"], attention_mask=b["attention_mask"], image_features=model.connector(patches),
                  logits_to_keep=1)
            hidden = captured.pop("h")  # [B, T, D_lm], after the final norm
            for i, (sample, boxes) in enumerate(batch):
                ids, labels = b["input_ids"][i].tolist(), b["labels"][i].tolist()
                ends = sorted({p for t in triggers for p in trigger_positions(ids, labels, t)})  # boxes and points
                if len(ends) != len(boxes) or not boxes:
                    skipped += 1
                    continue
                kept["patches"].append(patches[i].half())
                visual = b["input_ids"][i] == model.cfg.image_token_id
                kept["states"].append(hidden[i, visual].half())  # [M, D_lm]
                for p, box in zip(ends, boxes):
                    ctx, real = context_window(ids[:p + 1], cfg_k)
                    kept["query"].append(hidden[i, p].half())
                    kept["context"].append(torch.tensor(ctx))
                    kept["context_mask"].append(torch.tensor(real))
                    kept["image"].append(len(kept["patches"]) - 1)
                    kept["box"].append(box)
    finally:
        hook.remove()
    if not kept["box"]:
        raise ValueError("no box answers found: the rows need replies like <box>x1,y1,x2,y2</box>")
    out = {k: torch.stack(v) if k != "image" else torch.tensor(v) for k, v in kept.items()}
    out["skipped"] = torch.tensor(skipped)
    return out


def box_iou(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[..., 4] x1, y1, x2, y2 -> (IoU, union area), elementwise."""
    lt, rb = torch.max(a[..., :2], b[..., :2]), torch.min(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = lambda x: (x[..., 2:] - x[..., :2]).clamp(min=0).prod(-1)  # noqa: E731
    union = area(a) + area(b) - inter
    return inter / union.clamp(min=1e-9), union


def generalized_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """GIoU (Rezatofighi et al., 2019): IoU minus the share of the enclosing box that neither covers."""
    iou, union = box_iou(a, b)
    hull = (torch.max(a[..., 2:], b[..., 2:]) - torch.min(a[..., :2], b[..., :2])).clamp(min=0).prod(-1)
    return iou - (hull - union) / hull.clamp(min=1e-9)


def centrality(centres: torch.Tensor, boxes: torch.Tensor, grid: int) -> torch.Tensor:
    """[N, 2] patch centres, [B, 4] boxes -> [B, N] targets: FCOS's centre-ness, 1 at the box centre and 0 at its
    edges and outside. The patch holding the centre always counts, so a box smaller than a patch has one."""
    c = centres[None]  # [1, N, 2]
    mid = (boxes[:, :2] + boxes[:, 2:]) / 2  # [B, 2]
    half = ((boxes[:, 2:] - boxes[:, :2]) / 2).clamp(min=1e-3)
    off = (c - mid[:, None]).abs()  # [B, N, 2]
    inside = (off < half[:, None]).all(-1) | (off <= 0.5 / grid).all(-1)
    share = (1 - off / half[:, None]).clamp(min=0.05)
    return share.prod(-1).sqrt() * inside


def head_loss(head: BoxHead, query, words, words_mask, patches, states, boxes) -> tuple[torch.Tensor, dict]:
    """Centrality as a per-patch binary target, plus GIoU of each central patch's box weighted by its centrality."""
    scores, pred = head(query, words, words_mask, patches, states)  # [B, N], [B, N, 4]
    target = centrality(head.centres, boxes, head.cfg.grid)
    l_centre = F.binary_cross_entropy_with_logits(scores, target)
    g = generalized_iou(pred, boxes[:, None].expand_as(pred))
    l_box = ((1 - g) * target).sum() / target.sum().clamp(min=1e-6)
    return 5 * l_centre + l_box, {"centrality": l_centre.item(), "giou": l_box.item()}


def merge(parts: list[dict]) -> dict:
    """collect()'s outputs of several files as one: the boxes' image indices move past the earlier parts' images."""
    out = {k: torch.cat([p[k] for p in parts]) for k in ("query", "context", "context_mask", "patches", "states", "box")}
    offsets = torch.tensor([0] + [len(p["patches"]) for p in parts[:-1]]).cumsum(0)
    out["image"] = torch.cat([p["image"] + o for p, o in zip(parts, offsets.tolist())])
    out["skipped"] = sum(p["skipped"] for p in parts)
    return out


def batch_of(data: dict, idx: torch.Tensor, embed) -> tuple:
    image = data["image"][idx]
    return (data["query"][idx].float(), embed(data["context"][idx]).float(), data["context_mask"][idx],
            data["patches"][image].float(), data["states"][image].float(), data["box"][idx])


@torch.no_grad()
def evaluate(head: BoxHead, data: dict, embed, batch_size: int = 256) -> dict:
    """IoU of the predicted boxes: the share at 0.5 or more (the grounding metric) and the mean."""
    head.eval()
    ious = []
    for s in range(0, len(data["box"]), batch_size):
        *inputs, b = batch_of(data, torch.arange(s, min(s + batch_size, len(data["box"]))), embed)
        ious.append(box_iou(head.predict(*inputs), b)[0])
    head.train()
    iou = torch.cat(ious)
    return {"iou@0.5": (iou >= 0.5).float().mean().item(), "mean_iou": iou.mean().item()}


def fit(head: BoxHead, train: dict, embed, steps: int, batch_size: int = 32, lr: float = 1e-3, warmup: int = 100,
        val: dict | None = None, every: int = 500, seed: int = 0, log=None, progress: bool = True) -> list[dict]:
    """AdamW with linear warmup and a cosine to zero. The embedding table is the LM's, read and never trained.
    log(record) gets every `every` steps' losses and, with val, its metrics."""
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    history = []
    head.train()
    bar = tqdm(range(steps), desc="box head: fit", unit="step", disable=not progress)
    for step in bar:
        idx = torch.randint(0, len(train["box"]), (batch_size,), generator=gen)
        loss, parts = head_loss(head, *batch_of(train, idx, embed))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % every == 0 or step + 1 == steps:
            record = {"step": step + 1, "loss": loss.item(), **parts}
            if val is not None:
                record.update({f"val_{k}": v for k, v in evaluate(head, val, embed).items()})
            history.append(record)
            bar.set_postfix({k: round(v, 3) for k, v in record.items() if k != "step"})
            if log:
                log(record)
    head.eval()
    return history
