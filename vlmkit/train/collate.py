"""Samples -> token ids with labels on assistant tokens only, and batches of them.

A conversation is rendered through the LM tokenizer's own chat template (the
same `processing.chat.render` inference uses), turn by turn, so every character
is known to belong to a system, user, template or assistant span. Labels are
-100 everywhere except each assistant reply and the end-of-turn marker after it
(`<|im_end|>` for ChatML): the model must learn to stop, so that marker is
supervised; the role header and the newline after the marker are not.
Visual positions, system and user turns and padding are never supervised.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch

from ..errors import ImageError
from ..processing.chat import render, tokenize_with_images
from .data import SkipSample, record_kind, resolve_image

IGNORE = -100
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def to_messages(row: dict, image_token: str, n_images: int, caption_prompt: str) -> list[dict]:
    """A LLaVA record (or a caption pair) -> chat messages with `image_token` placeholders."""
    if record_kind(row) == "captions":
        text = row.get("text")
        if not isinstance(text, str) or not text.strip():
            raise SkipSample("no_assistant_turn", "caption is empty")
        msgs = [{"role": "user", "content": image_token * n_images + "\n" + caption_prompt}, {"role": "assistant", "content": text}]
        return msgs
    turns = row["conversations"]
    if not isinstance(turns, list):
        raise SkipSample("bad_record", "conversations is not a list")
    msgs = []
    for t in turns:
        if not isinstance(t, dict) or t.get("from") not in ROLES or not isinstance(t.get("value"), str):
            raise SkipSample("bad_record", f"bad turn {t!r:.80}")
        given = t.get("given")
        if given is None:
            msgs.append({"role": ROLES[t["from"]], "content": t["value"]})
        elif ROLES[t["from"]] != "assistant" or not isinstance(given, str) or not given or not t["value"].strip():
            raise SkipSample("bad_record", f"'given' is a non-empty prefix of an assistant reply that goes on: {t!r:.80}")
        else:  # the reply is given + value; only value is trained (teacher-forced reasoning, a prefilled reply)
            msgs.append({"role": "assistant", "content": given + t["value"], "given": given})
    n_placeholders = sum(m["content"].count(image_token) for m in msgs)
    if n_images and n_placeholders == 0:
        first_user = next((m for m in msgs if m["role"] == "user"), None)
        if first_user is None:
            raise SkipSample("bad_record", "no user turn to hold the image")
        first_user["content"] = image_token * n_images + "\n" + first_user["content"]  # LLaVA's convention
    elif n_placeholders != n_images:
        raise SkipSample("image_count_mismatch", f"{n_placeholders} {image_token} placeholders, {n_images} images")
    return msgs


def encode_messages(tokenizer, messages: list[dict], image_token: str, image_token_id: int,
                    tokens_per_image: int | list) -> tuple[list[int], list[int]]:
    """-> (input_ids, labels): labels copy input_ids on assistant replies (+ end-of-turn marker), else -100.

    A reply's "given" prefix (to_messages) is part of the input but not of the labels."""
    last = max((k for k, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        raise SkipSample("no_assistant_turn")
    messages = messages[: last + 1]  # turns after the last reply teach nothing
    pieces: list[tuple[str, bool]] = []  # (text, supervised), concatenating to the full rendering
    done = ""
    for k, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        if image_token in m["content"]:
            raise SkipSample("bad_record", "an image placeholder inside an assistant reply")
        head = render(tokenizer, messages[:k], add_generation_prompt=True)
        full = render(tokenizer, messages[: k + 1], add_generation_prompt=False)
        if not head.startswith(done) or not full.startswith(head):
            # e.g. a template that injects a default system prompt only when the first turn is not one
            raise SkipSample("bad_conversation", "chat template is not prefix-stable for this conversation")
        reply = full[len(head):]
        body = reply.rstrip()
        given = m.get("given", "")
        if not body.startswith(given):
            raise SkipSample("bad_conversation", "the chat template changed a reply's given prefix")
        pieces += [(head[len(done):], False), (given, False), (body[len(given):], True), (reply[len(body):], False)]
        done = full
    ids: list[int] = []
    labels: list[int] = []
    for text, supervised in pieces:
        if not text:
            continue
        n_img = text.count(image_token)
        toks = tokenize_with_images(tokenizer, text, image_token, image_token_id, [tokens_per_image] * n_img)
        ids += toks
        labels += toks if supervised else [IGNORE] * len(toks)
    return ids, labels


class ConversationEncoder:
    """record -> {input_ids, labels, pixel_values [N_img, 3, S, S]}; raises SkipSample. Runs in DataLoader workers."""

    def __init__(self, tokenizer, image_processor, image_token: str, image_token_id: int, tokens_per_image: int | list,
                 max_length: int, caption_prompt: str = "Describe the image briefly."):
        self.tokenizer, self.image_processor = tokenizer, image_processor
        self.image_token, self.image_token_id, self.tokens_per_image = image_token, image_token_id, tokens_per_image
        self.max_length, self.caption_prompt = max_length, caption_prompt

    def __call__(self, row: dict, root: Path) -> dict:
        refs = row.get("images") if "images" in row else ([row["image"]] if row.get("image") is not None else [])
        if not isinstance(refs, list):
            raise SkipSample("bad_record", "images is not a list")
        msgs = to_messages(row, self.image_token, len(refs), self.caption_prompt)
        ids, labels = encode_messages(self.tokenizer, msgs, self.image_token, self.image_token_id, self.tokens_per_image)
        if self.max_length and len(ids) > self.max_length:
            # cutting would drop the answer or split an image; skipping is the honest choice
            raise SkipSample("too_long", f"{len(ids)} tokens > {self.max_length}")
        pixels = load_pixels(self.image_processor, [resolve_image(r, root) for r in refs])
        return {"input_ids": ids, "labels": labels, "pixel_values": pixels, "id": str(row.get("id", ""))}


class CaptionEncoder:
    """record -> {pixel_values [3, S, S], text} for contrastive training."""

    def __init__(self, image_processor):
        self.image_processor = image_processor

    def __call__(self, row: dict, root: Path) -> dict:
        text = row.get("text")
        if record_kind(row) != "captions" or not isinstance(text, str) or not text.strip():
            raise SkipSample("bad_record", "contrastive training needs caption pairs {image, text}")
        if row.get("image") is None:
            raise SkipSample("missing_image")
        pixels = load_pixels(self.image_processor, [resolve_image(row["image"], root)])
        return {"pixel_values": pixels[0], "text": text, "id": str(row.get("id", ""))}


def load_pixels(image_processor, images: list) -> torch.Tensor:
    for im in images:
        if isinstance(im, Path) and not im.is_file():
            raise SkipSample("missing_image", str(im))
    try:
        return image_processor(images)  # [N, 3, S, S]
    except ImageError as e:
        raise SkipSample("corrupt_image", str(e)) from None


# ---- batching ----
def split_skips(samples: list[dict]) -> tuple[list[dict], Counter]:
    skipped = Counter(s["skip"] for s in samples if "skip" in s)
    return [s for s in samples if "skip" not in s], skipped


def collate_lm(samples: list[dict], pad_id: int = 0) -> dict:
    """Right-padded batch: input_ids/attention_mask/labels [B, T], pixel_values [N_images, 3, S, S] or None,
    n_tokens (supervised next-token targets), skipped (Counter of reasons)."""
    good, skipped = split_skips(samples)
    if not good:
        return {"input_ids": None, "n_tokens": 0, "n_samples": 0, "skipped": skipped}
    T = max(len(s["input_ids"]) for s in good)
    B = len(good)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    labels = torch.full((B, T), IGNORE, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    for i, s in enumerate(good):
        n = len(s["input_ids"])
        input_ids[i, :n] = torch.tensor(s["input_ids"])
        labels[i, :n] = torch.tensor(s["labels"])
        mask[i, :n] = 1
    pix = [s["pixel_values"] for s in good if s["pixel_values"].shape[0]]
    return {
        "input_ids": input_ids, "attention_mask": mask, "labels": labels,
        "pixel_values": torch.cat(pix) if pix else None,
        "n_tokens": int((labels[:, 1:] != IGNORE).sum()),  # the loss shifts by one
        "n_samples": B, "skipped": skipped,
    }


def collate_pairs(samples: list[dict]) -> dict:
    """pixel_values [B, 3, S, S], texts [B]."""
    good, skipped = split_skips(samples)
    if not good:
        return {"pixel_values": None, "texts": [], "n_tokens": 0, "n_samples": 0, "skipped": skipped}
    return {"pixel_values": torch.stack([s["pixel_values"] for s in good]), "texts": [s["text"] for s in good],
            "n_tokens": len(good), "n_samples": len(good), "skipped": skipped}


class LMCollator:
    """Picklable for worker processes (a lambda is not)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, samples: list[dict]) -> dict:
        return collate_lm(samples, self.pad_id)
