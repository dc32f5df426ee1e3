"""Images unlike anything in the visual worlds, whose every answer is an abstention.

A model trained only on clean synthetic scenes answers "3" or "red" about any picture at all.
A few percent of these in instruction tuning teach it the other answer: textures, blurred
blobs, gradients and pixel noise, asked the worlds' own questions (and a few open ones),
all answered with UNSURE. It is a prior, not a detector: what it does on real photos is
measured on scikit-image's photos (MODEL_CARD.md), which never appear in training.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .sample import QA

UNSURE = "I can't tell: this image is unlike the images I was trained on."
KINDS = ("blobs", "clouds", "waves", "noise", "gradient")
QUESTIONS = (
    "How many shapes are in the image?", "What colour is the circle?", "Is the square left of the triangle?",
    "Where is the triangle?", "What is written in the image?", "Read the text in the image.",
    "What value does Mar have?", "Which bar is the tallest?", "what shape is in the image?",
    "what color is the shape?", "What animal is this?", "What is in this picture?", "Describe the image briefly.",
    "What is the person wearing?", "How many people are there?",
)


@dataclass
class UnsureConfig:
    size: int = 224
    questions: int = 2  # question/answer turns per image


class UnsureGenerator:
    name = "unsure"
    slices = ("unsure",)

    def __init__(self, cfg: UnsureConfig | None = None, **kw):
        self.cfg = cfg or UnsureConfig(**kw)

    def spec(self, rng: random.Random) -> dict:
        return {"kind": rng.choice(KINDS), "key": rng.getrandbits(48)}

    def split_key(self, spec: dict) -> str:
        return f"{spec['kind']}-{spec['key']}"

    def build(self, spec: dict, rng: random.Random):
        s = self.cfg.size
        nrng = np.random.default_rng(spec["key"])
        img = getattr(self, "_" + spec["kind"])(s, rng, nrng)
        qs = rng.sample(QUESTIONS, self.cfg.questions)
        caption = "An abstract image: no shapes, text or chart that I can describe with confidence."
        return img, {"kind": spec["kind"]}, caption, [QA(q, UNSURE, "unsure", "exact") for q in qs]

    # Each renderer gives something photo-like in its statistics (smooth fields, soft edges,
    # continuous colour) rather than the flat fills and hard edges of the worlds.
    def _blobs(self, s, rng, nrng):
        img = Image.new("RGB", (s, s), tuple(int(v) for v in nrng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(img)
        for _ in range(rng.randint(15, 60)):
            x, y, r = rng.uniform(0, s), rng.uniform(0, s), rng.uniform(0.03, 0.3) * s
            draw.ellipse([x - r, y - r * rng.uniform(0.5, 1.5), x + r, y + r], fill=tuple(int(v) for v in nrng.integers(0, 256, 3)))
        return img.filter(ImageFilter.GaussianBlur(rng.uniform(2, 10)))

    def _clouds(self, s, rng, nrng):
        field = np.zeros((s, s, 3))
        for octave in range(1, 6):  # sum of upsampled noise: a 1/f field, like natural textures
            g = 2 ** octave
            small = nrng.random((g, g, 3))
            up = np.asarray(Image.fromarray((small * 255).astype(np.uint8)).resize((s, s), Image.BICUBIC), dtype=float) / 255
            field += up / octave
        field = (field - field.min()) / (np.ptp(field) + 1e-9)
        tint = nrng.random(3) * 0.6 + 0.4
        return Image.fromarray((field * tint * 255).clip(0, 255).astype(np.uint8))

    def _waves(self, s, rng, nrng):
        yy, xx = np.mgrid[0:s, 0:s] / s
        out = np.zeros((s, s, 3))
        for c in range(3):
            a, b, f = rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(2, 12)
            out[..., c] = 0.5 + 0.5 * np.sin(2 * math.pi * f * (a * xx + b * yy) + rng.uniform(0, 6))
        return Image.fromarray((out * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1))

    def _noise(self, s, rng, nrng):
        cell = rng.choice([1, 2, 4, 8])
        small = nrng.integers(0, 256, (s // cell, s // cell, 3), dtype=np.uint8)
        return Image.fromarray(small).resize((s, s), Image.NEAREST if rng.random() < 0.5 else Image.BILINEAR)

    def _gradient(self, s, rng, nrng):
        yy, xx = np.mgrid[0:s, 0:s] / s
        a, b = nrng.random(3), nrng.random(3)
        t = (rng.uniform(-1, 1) * xx + rng.uniform(-1, 1) * yy)[..., None]
        t = (t - t.min()) / (np.ptp(t) + 1e-9)
        img = (a * (1 - t) + b * t) + nrng.normal(0, 0.04, (s, s, 3))
        return Image.fromarray((img.clip(0, 1) * 255).astype(np.uint8))
