"""Conversations -> token ids with visual placeholders, through the LM tokenizer's own chat template.

Messages are OpenAI-style: `content` is a string, or a list of parts
  {"type": "text", "text": ...}
  {"type": "image", "image": PATH | bytes | PIL.Image}
  {"type": "image_url", "image_url": {"url": "data:image/png;base64,..." | PATH}}
A string content may hold `<image>` placeholders, bound in order to `images=`.
Each placeholder expands to that image's visual tokens (cfg.image_token_id repeated), or to
a layout: text pieces and runs of visual tokens (tiles with position tags, see tiling.py).
An image part may carry a "label" (video frames carry their timestamp); with
label_images=True the others are numbered "Image 1:", "Image 2:", ... so the question
can refer to them.
"""
from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..errors import ImageError, VlmkitError

# Plain ChatML with no injected system turn. Used when a tokenizer ships no chat template (tiny
# test tokenizers), and by models that choose it (train config model.chat_template = "chatml").
CHATML_TEMPLATE = FALLBACK_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass
class Prompt:
    input_ids: list[int]
    images: list = field(default_factory=list)  # raw image inputs, in placeholder order
    visuals: list = field(default_factory=list)  # per image, what the caller prepared for it (tiles, features)


def decode_data_url(url: str) -> bytes:
    if not url.startswith("data:"):
        raise ImageError("expected a data: URL")
    header, sep, payload = url.partition(",")
    if not sep or ";base64" not in header:
        raise ImageError("image data URL must be base64 encoded (data:image/...;base64,...)")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError("image data URL has malformed base64") from None


def flatten_messages(messages: list[dict], image_token: str, images: list | None = None, label_images: bool = False) -> tuple[list[dict], list]:
    """Content parts -> plain strings with `image_token` placeholders; returns (messages, images in order)."""
    extra = list(images or [])
    out_msgs, out_images = [], []
    numbered = 0

    def placeholder(label: str | None = None) -> str:
        nonlocal numbered
        if label is None and label_images:
            numbered += 1
            label = f"Image {numbered}:"
        return f"{label} {image_token}" if label else image_token

    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise VlmkitError(f"message {i} needs 'role' and 'content'")
        content = m["content"]
        if isinstance(content, str):
            n = content.count(image_token)
            if n > len(extra):
                raise VlmkitError(f"message {i} has {n} {image_token} placeholder(s) but only {len(extra)} image(s) remain")
            out_images += extra[:n]
            extra = extra[n:]
            if label_images and n:
                pieces = content.split(image_token)
                content = pieces[0] + "".join(placeholder() + p for p in pieces[1:])
            out_msgs.append({"role": m["role"], "content": content})
            continue
        if not isinstance(content, list):
            raise VlmkitError(f"message {i}: content must be a string or a list of parts")
        pieces = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                pieces.append(str(part.get("text", "")))
            elif kind == "image":
                pieces.append(placeholder(part.get("label")))
                out_images.append(part["image"])
            elif kind == "image_url":
                url = part.get("image_url")
                url = url.get("url") if isinstance(url, dict) else url
                if not isinstance(url, str):
                    raise VlmkitError(f"message {i}: image_url part needs a url")
                pieces.append(placeholder(part.get("label")))
                out_images.append(decode_data_url(url) if url.startswith("data:") else url)
            else:
                raise VlmkitError(f"message {i}: unknown content part type {kind!r}")
        out_msgs.append({"role": m["role"], "content": "\n".join(pieces)})
    if extra:
        raise VlmkitError(f"{len(extra)} image(s) given but no {image_token} placeholder left for them")
    return out_msgs, out_images


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = True) -> str:
    template = None if getattr(tokenizer, "chat_template", None) else FALLBACK_TEMPLATE
    return tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def tokenize_with_images(tokenizer, text: str, image_token: str, image_token_id: int, tokens_per_image: list) -> list[int]:
    """Tokenise around each placeholder, inserting that image's visual ids in its place.

    tokens_per_image[i] is a count, or a layout: a list of text pieces (str) and counts (int).
    Text is tokenised in the longest pieces between runs of visual ids, as an HF processor
    tokenises its expanded string when the image token is a special token.
    """
    segments = text.split(image_token)
    if len(segments) - 1 != len(tokens_per_image):
        raise VlmkitError(f"{len(segments) - 1} placeholders but {len(tokens_per_image)} images")
    pieces: list = [segments[0]]
    for layout, seg in zip(tokens_per_image, segments[1:]):
        for p in ([layout] if isinstance(layout, int) else layout) + [seg]:
            if isinstance(p, str) and isinstance(pieces[-1], str):
                pieces[-1] += p
            else:
                pieces.append(p)
    ids: list[int] = []
    for p in pieces:
        if isinstance(p, str):
            ids += tokenizer(p, add_special_tokens=False)["input_ids"] if p else []
        else:
            ids += [image_token_id] * p
    return ids


def build_prompt(
    tokenizer,
    messages,
    image_token: str,
    image_token_id: int,
    tokens_per_image: int | Callable,
    images=None,
    label_images: bool = False,
) -> Prompt:
    """tokens_per_image: a count for every image, or layout_for(image) -> count | layout."""
    msgs, imgs = flatten_messages(messages, image_token, images, label_images)
    text = render(tokenizer, msgs)
    layouts = [tokens_per_image(im) if callable(tokens_per_image) else tokens_per_image for im in imgs]
    return Prompt(tokenize_with_images(tokenizer, text, image_token, image_token_id, layouts), imgs)


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """-> input_ids [B, T], attention_mask [B, T]; padding on the left so every row ends at its last token."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, T - len(s):] = torch.tensor(s)
            mask[i, T - len(s):] = 1
    return ids, mask
