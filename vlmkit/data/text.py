"""Rendered words and short lines, for reading.

The split key is the text itself: a word in the test split is never drawn in
training, in any font or place, so the reading score measures reading, not
recall of memorised word images.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

from .augment import AugmentConfig, augment, get_preset
from .fonts import available_families, get_font
from .sample import QA
from .words import COMMON_WORDS

INK = {"black": (15, 15, 15), "dark blue": (20, 40, 120), "dark red": (130, 20, 20), "dark green": (20, 90, 40),
       "grey": (70, 70, 70)}
_CONSONANTS, _VOWELS = "bcdfghklmnprstvwz", "aeiou"


@dataclass
class TextConfig:
    size: int = 224
    augment: str | AugmentConfig = "light"
    min_font: float = 0.075  # smallest glyph size, as a fraction of the side (17 px at 224: legible at this size)
    max_font: float = 0.2
    max_words: int = 3


class TextGenerator:
    name = "text"
    slices = ("reading",)

    def __init__(self, cfg: TextConfig | None = None, **kw):
        self.cfg = cfg or TextConfig(**kw)
        self.aug = get_preset(self.cfg.augment)
        self.families = available_families()

    def spec(self, rng: random.Random) -> dict:
        kind = rng.random()
        if kind < 0.45:
            words = [rng.choice(COMMON_WORDS)]
        elif kind < 0.75:
            words = [rng.choice(COMMON_WORDS) for _ in range(rng.randint(2, self.cfg.max_words))]
        elif kind < 0.9:
            words = [_pseudo_word(rng)]  # not a word at all: only reading the letters gets it right
        else:
            words = [_code(rng)]
        case = rng.random()
        if case < 0.2:
            words = [w.upper() for w in words]
        elif case < 0.45:
            words = [w.capitalize() for w in words]
        return {"text": " ".join(words)}

    def split_key(self, spec: dict) -> str:
        return spec["text"].lower()  # "Apple" and "APPLE" are the same word to read

    def build(self, spec: dict, rng: random.Random):
        s, text = self.cfg.size, spec["text"]
        family = rng.choice(self.families)
        ink_name = rng.choice(sorted(INK))
        ink = INK[ink_name]
        paper = tuple(rng.randint(225, 252) for _ in range(3))
        if rng.random() < 0.15:  # light text on a dark ground
            ink, paper, ink_name = paper, tuple(rng.randint(10, 60) for _ in range(3)), "white"
        img = Image.new("RGB", (s, s), paper)
        draw = ImageDraw.Draw(img)
        size = round(rng.uniform(self.cfg.min_font, self.cfg.max_font) * s)
        while True:  # shrink until the line fits with a margin
            font = get_font(family, size)
            x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
            if x1 - x0 <= 0.9 * s or size <= self.cfg.min_font * s:
                break
            size -= 1
        w, h = x1 - x0, y1 - y0
        x = rng.uniform(0.05 * s, max(0.05 * s, 0.95 * s - w)) - x0
        y = rng.uniform(0.08 * s, max(0.08 * s, 0.92 * s - h)) - y0
        draw.text((x, y), text, font=font, fill=ink)
        img = augment(img, rng, self.aug, fill=paper)
        truth = {"size": [s, s], "text": text, "font": family, "font_size": size, "ink": ink_name,
                 "box_px": [round(x + x0, 1), round(y + y0, 1), round(x + x1, 1), round(y + y1, 1)]}
        q = rng.choice(["What does the text say?", "What is written in the image?", "Read the text in the image."])
        what = "word" if " " not in text else "words"
        caption = f'The {what} "{text}" written in {ink_name} on a {"dark" if ink_name == "white" else "light"} background.'
        return img, truth, caption, [QA(q, text, "reading", "exact")]


def _pseudo_word(rng: random.Random) -> str:
    return "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(rng.randint(2, 3)))


def _code(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.4:
        return str(rng.randint(10, 99999))
    if kind < 0.7:
        return f"{rng.choice('ABCDEFGHKLMNPRSTXZ')}{rng.randint(1, 99)}-{rng.randint(100, 999)}"
    return f"{rng.randint(1, 28):02d}/{rng.randint(1, 12):02d}/{rng.randint(2000, 2030)}"
