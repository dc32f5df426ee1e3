"""Evaluation hooks the loop calls every `eval.every` steps.

contrastive: zero-shot accuracy on a captions JSONL, each image classified
    among the file's distinct captions (so captions like "a photo of a circle"
    act as class prompts).
align / instruct: answers generated greedily for evaluation samples JSONL
    ({image, question, answers, metric, slice}), scored with vlmkit.eval.metrics
    when it is installed, else by normalised exact match; with `eval.ablation_data`
    (held-out conversations) also the image ablation below.

Image ablation: the answer loss with each conversation's own image, with the images
shuffled across the batch, and with blank images. A model that ignores its images
(it learned the answer priors and a constant soft prompt) scores the three alike,
however good its loss looks; `eval/image_gain` = shuffled - own is the check.
"""
from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path

import torch

from ..models.lm import pad_id
from .data import read_json_records, resolve_image

log = logging.getLogger(__name__)


def _score(metric: str, predictions: list[str], references: list[list[str]]) -> list[float]:
    try:
        from ..eval.metrics import evaluate

        return evaluate(metric, predictions, references).per_sample
    except (ImportError, KeyError):
        norm = lambda s: " ".join(s.lower().strip().rstrip(".").split())
        return [float(any(norm(p) == norm(r) for r in refs)) for p, refs in zip(predictions, references)]


@torch.no_grad()
def eval_vqa(model, tokenizer, path: Path, max_samples: int, max_new_tokens: int, batch_size: int, device) -> dict:
    from ..generation import GenerationConfig, eos_ids, generate_from_embeds
    from ..processing.chat import build_prompt, left_pad
    from ..processing.images import ImageProcessor

    recs = read_json_records(path)
    rows = list(zip(recs.rows, recs.roots))[:max_samples]
    proc = ImageProcessor.from_vision_config(model.cfg.vision)
    eos = eos_ids(tokenizer, model.lm.model)
    pad = pad_id(tokenizer)
    gen_cfg = GenerationConfig(max_new_tokens=max_new_tokens)
    preds, refs, metrics, slices = [], [], [], []
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(rows), batch_size):
            chunk = rows[i:i + batch_size]
            prompts = []
            for row, root in chunk:
                refs_img = row.get("images") or ([row["image"]] if row.get("image") is not None else [])
                content = [{"type": "image", "image": resolve_image(r, root)} for r in refs_img]
                content.append({"type": "text", "text": row["question"]})
                prompts.append(build_prompt(tokenizer, [{"role": "user", "content": content}], model.cfg.image_token,
                                            model.cfg.image_token_id, model.cfg.image_layout))
            ids, mask = (t.to(device) for t in left_pad([p.input_ids for p in prompts], pad))
            images = [im for p in prompts for im in p.images]
            feats = model.encode_images(proc(images).to(device)) if images else None
            embeds = model.embed_inputs(ids, feats)
            outs = generate_from_embeds(model.lm, embeds, mask, tokenizer, gen_cfg, eos,
                                        position_ids=model.position_ids(ids, mask))
            for (row, _), out in zip(chunk, outs):
                preds.append(out.text.strip())
                refs.append([str(a) for a in row.get("answers", [])])
                metrics.append(row.get("metric", "exact"))
                slices.append(row.get("slice", "all"))
    finally:
        model.train(was_training)
    scores = [0.0] * len(preds)
    for metric in set(metrics):
        idx = [k for k, m in enumerate(metrics) if m == metric]
        for k, s in zip(idx, _score(metric, [preds[k] for k in idx], [refs[k] for k in idx])):
            scores[k] = s
    out = {"eval/accuracy": sum(scores) / max(1, len(scores)), "eval/n": len(scores)}
    by_slice = defaultdict(list)
    for sl, s in zip(slices, scores):
        by_slice[sl].append(s)
    out.update({f"eval/{sl}": sum(v) / len(v) for sl, v in by_slice.items()})
    return out


@torch.no_grad()
def eval_zero_shot(model, path: Path, max_samples: int, batch_size: int, device) -> dict:
    recs = read_json_records(path)
    rows = [(r, root) for r, root in zip(recs.rows, recs.roots) if isinstance(r.get("text"), str)][:max_samples]
    classes = sorted({r["text"] for r, _ in rows})
    was_training = model.training
    model.eval()
    try:
        text_emb = model.encode_text(classes).to(device)  # [C, D]
        index = {c: k for k, c in enumerate(classes)}
        hits = []
        for i in range(0, len(rows), batch_size):
            chunk = rows[i:i + batch_size]
            pix = model.image_processor([resolve_image(r["image"], root) for r, root in chunk]).to(device)
            pred = (model.encode_image(pix) @ text_emb.t()).argmax(-1).tolist()
            hits += [float(p == index[r["text"]]) for p, (r, _) in zip(pred, chunk)]
    finally:
        model.train(was_training)
    return {"eval/accuracy": sum(hits) / max(1, len(hits)), "eval/n": len(hits), "eval/classes": len(classes)}


@torch.no_grad()
def image_ablation(model, tokenizer, path: Path, n: int = 32, batch_size: int = 8, seed: int = 0) -> dict:
    """Mean answer-token loss on `n` conversations of `path` with own / shuffled / blank images,
    and the mean norm of visual tokens against text tokens (they should be of one scale)."""
    from ..processing.images import ImageProcessor
    from .collate import IGNORE, ConversationEncoder, LMCollator
    from .losses import lm_loss_sum

    recs = read_json_records(path)
    enc = ConversationEncoder(tokenizer, ImageProcessor.from_vision_config(model.cfg.vision), model.cfg.image_token,
                              model.cfg.image_token_id, model.cfg.image_layout, 4096, "")
    samples = [s for r, root in list(zip(recs.rows, recs.roots))[:n] if len((s := enc(r, root))["pixel_values"]) == 1]
    if len(samples) < 2:  # shuffling needs one image per conversation, so rows and images chunk together
        raise ValueError(f"image ablation needs at least 2 one-image conversations in the first {n} of {path}")
    pad = pad_id(tokenizer)
    batch = LMCollator(pad)(samples)
    dev = next(model.parameters()).device
    ids, mask, labels = batch["input_ids"].to(dev), batch["attention_mask"].to(dev), batch["labels"].to(dev)
    px = batch["pixel_values"].to(dev)
    # a derangement within each chunk would be ideal; a seeded permutation of >=8 images is close enough
    perm = torch.randperm(len(px), generator=torch.Generator().manual_seed(seed)).to(dev)
    was_training = model.training
    model.eval()
    try:
        feats = model.encode_images(px)  # [N_images, N_visual, D_lm]
        text = ids[(ids != model.cfg.image_token_id) & (ids < model.cfg.lm.vocab_size) & (mask > 0)]
        out = {"eval/visual_norm": feats.norm(dim=-1).mean().item(),
               "eval/text_norm": model.lm.embed_tokens(text).norm(dim=-1).mean().item()}
        n_tok = int((labels[:, 1:] != IGNORE).sum())
        for name, pv in (("own", px), ("shuffled", px[perm]), ("blank", torch.zeros_like(px))):
            total = 0.0
            for i in range(0, len(ids), batch_size):
                sl = slice(i, i + batch_size)
                logits = model(input_ids=ids[sl], attention_mask=mask[sl], pixel_values=pv[sl]).logits
                total += lm_loss_sum(logits, labels[sl]).item()
            out[f"eval/loss_{name}"] = total / max(1, n_tok)
    finally:
        model.train(was_training)
    out["eval/image_gain"] = out["eval/loss_shuffled"] - out["eval/loss_own"]
    return out


def run_eval(stage_name: str, model, tokenizer, spec, device) -> dict:
    path = Path(spec.data)
    with torch.random.fork_rng(devices=[]):  # evaluation must not move the training RNG (exact resume)
        if stage_name == "contrastive":
            return eval_zero_shot(model, path, spec.max_samples, spec.batch_size, device)
        out = eval_vqa(model, tokenizer, path, spec.max_samples, spec.max_new_tokens, spec.batch_size, device)
        if spec.ablation_data:
            out.update(image_ablation(model, tokenizer, Path(spec.ablation_data), spec.ablation_samples, spec.batch_size))
        return out


def write_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
