"""Does the model look at the image? Loss on held-out conversations with their own images, with the
images shuffled across the batch, and with blank images; plus the norm of visual vs text tokens.

  .venv/bin/python scripts/image_ablation.py --model weights/vlmkit-smol --data data/shapes/val/conversations.jsonl

A model that ignores its images scores the same three losses. This is how the first vlmkit-smol run
was caught: true 1.032, shuffled 1.033, with visual tokens ~380x the norm of text tokens.
"""
import argparse
import json
from pathlib import Path

import torch

from vlmkit.api import load
from vlmkit.processing.images import ImageProcessor
from vlmkit.train.collate import IGNORE, ConversationEncoder, LMCollator
from vlmkit.train.losses import lm_loss_sum


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None)
    p.add_argument("--data", required=True, help="conversations JSONL (held out)")
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    m = load(a.model)
    model, tok = m.model, m.tokenizer
    path = Path(a.data)
    rows = [json.loads(l) for l in path.read_text().splitlines() if l.strip()][:a.n]
    enc = ConversationEncoder(tok, ImageProcessor.from_vision_config(model.cfg.vision), model.cfg.image_token,
                              model.cfg.image_token_id, model.cfg.image_seq_len, 1024, "")
    batch = LMCollator(tok.pad_token_id)([enc(r, path.parent) for r in rows])
    ids, px, labels = batch["input_ids"], batch["pixel_values"], batch["labels"]
    n = int((labels[:, 1:] != IGNORE).sum())
    with torch.no_grad():
        feats = model.encode_images(px)  # [B, N_visual, D_lm]
        text = ids[(ids != model.cfg.image_token_id) & (ids < model.cfg.lm.vocab_size)]
        print(f"visual token norm {feats.norm(dim=-1).mean():.2f}   text token norm {model.lm.embed_tokens(text).norm(dim=-1).mean():.2f}")
        perm = torch.randperm(len(px), generator=torch.Generator().manual_seed(a.seed))
        for name, pv in (("own images", px), ("shuffled images", px[perm]), ("blank images", torch.zeros_like(px))):
            out = model(input_ids=ids, attention_mask=batch["attention_mask"], pixel_values=pv)
            print(f"{name:16s} loss {lm_loss_sum(out.logits, labels).item() / n:.3f}  ({n} answer tokens, {len(rows)} conversations)")


if __name__ == "__main__":
    main()
