"""Seeded augmentations: rotation, perspective, lighting, blur, noise and JPEG artefacts.

Rotation and perspective are one homography, so a generator can move its
ground-truth geometry (object outlines, hence boxes) through the same map as
the pixels. Every random draw comes from the caller's `random.Random`, so the
same seed gives byte-identical images.
"""
from __future__ import annotations

import io
import math
import random
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageFilter


@dataclass(frozen=True)
class AugmentConfig:
    rotate_p: float = 0.0
    rotate_deg: float = 0.0  # largest |angle|
    perspective_p: float = 0.0
    perspective: float = 0.0  # largest corner shift, as a fraction of the side
    lighting_p: float = 0.0
    brightness: float = 0.0  # largest shift, as a fraction of full scale
    contrast: float = 0.0  # largest relative change
    shading: float = 0.0  # largest amplitude of a linear light gradient across the image
    blur_p: float = 0.0
    blur_radius: float = 0.0  # largest blur radius in pixels
    noise_p: float = 0.0
    noise_std: float = 0.0  # largest per-pixel std on the 0-255 scale
    jpeg_p: float = 0.0
    jpeg_quality: tuple[int, int] = (40, 90)

    @property
    def is_identity(self) -> bool:
        return not any((self.rotate_p, self.perspective_p, self.lighting_p, self.blur_p, self.noise_p, self.jpeg_p))


PRESETS = {
    "none": AugmentConfig(),
    # mild enough that colours keep their names and boxes stay inside the frame
    "light": AugmentConfig(rotate_p=0.3, rotate_deg=4.0, perspective_p=0.2, perspective=0.025, lighting_p=0.3,
                           brightness=0.08, contrast=0.12, shading=0.08, blur_p=0.2, blur_radius=0.8, noise_p=0.25,
                           noise_std=5.0, jpeg_p=0.2, jpeg_quality=(55, 90)),
    # a phone photo of a document: skewed, unevenly lit, soft and compressed
    "photo": AugmentConfig(rotate_p=0.7, rotate_deg=3.0, perspective_p=0.6, perspective=0.035, lighting_p=0.7,
                           brightness=0.12, contrast=0.2, shading=0.15, blur_p=0.4, blur_radius=1.0, noise_p=0.5,
                           noise_std=7.0, jpeg_p=0.6, jpeg_quality=(45, 85)),
}


def get_preset(name: str | AugmentConfig) -> AugmentConfig:
    from .sample import DataError

    if isinstance(name, AugmentConfig):
        return name
    if name not in PRESETS:
        raise DataError(f"unknown augmentation preset {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name]


def without_geometry(cfg: AugmentConfig) -> AugmentConfig:
    return replace(cfg, rotate_p=0.0, perspective_p=0.0)


# ---- geometry -------------------------------------------------------------------------------------------------

def homography_from_points(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """3x3 H with dst ~ H @ src for 4 point pairs (the direct linear transform)."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs += [u, v]
    h = np.linalg.solve(np.asarray(rows, dtype=np.float64), np.asarray(rhs, dtype=np.float64))
    return np.append(h, 1.0).reshape(3, 3)


def random_homography(rng: random.Random, cfg: AugmentConfig, size: tuple[int, int]) -> np.ndarray | None:
    """Rotation about the centre, then a random corner shift; None when neither is drawn."""
    w, h = size
    H = np.eye(3)
    used = False
    if cfg.rotate_p and rng.random() < cfg.rotate_p:
        a = math.radians(rng.uniform(-cfg.rotate_deg, cfg.rotate_deg))
        c, s = math.cos(a), math.sin(a)
        cx, cy = w / 2, h / 2
        H = np.array([[c, -s, cx - c * cx + s * cy], [s, c, cy - s * cx - c * cy], [0, 0, 1.0]]) @ H
        used = True
    if cfg.perspective_p and rng.random() < cfg.perspective_p:
        corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float64)
        shift = np.array([[rng.uniform(-1, 1) * cfg.perspective * w, rng.uniform(-1, 1) * cfg.perspective * h]
                          for _ in range(4)])
        H = homography_from_points(corners, corners + shift) @ H
        used = True
    return H if used else None


def transform_points(H: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """[N, 2] points through H."""
    p = np.c_[pts, np.ones(len(pts))] @ H.T  # [N, 3]
    return p[:, :2] / p[:, 2:3]


def warp(img: Image.Image, H: np.ndarray, fill) -> Image.Image:
    inv = np.linalg.inv(H)  # PIL maps each output pixel back to its source
    inv = inv / inv[2, 2]
    return img.transform(img.size, Image.Transform.PERSPECTIVE, tuple(inv.flatten()[:8]),
                         resample=Image.Resampling.BILINEAR, fillcolor=fill)


# ---- photometric ----------------------------------------------------------------------------------------------

def photometric(img: Image.Image, rng: random.Random, cfg: AugmentConfig) -> Image.Image:
    """Lighting, then blur, then sensor noise, then compression, as a camera pipeline orders them."""
    if cfg.lighting_p and rng.random() < cfg.lighting_p:
        img = _lighting(img, rng, cfg)
    if cfg.blur_p and rng.random() < cfg.blur_p:
        # one box pass: at radii up to ~1 px it looks like defocus and costs a third of a Gaussian (three passes)
        img = img.filter(ImageFilter.BoxBlur(rng.uniform(0.3, max(0.3, cfg.blur_radius))))
    if cfg.noise_p and rng.random() < cfg.noise_p:
        std = rng.uniform(1.0, max(1.0, cfg.noise_std))
        noise = np.random.default_rng(rng.getrandbits(63)).standard_normal((img.height, img.width, 1), dtype=np.float32)
        noise = np.rint(noise * std).astype(np.int16)  # [H, W, 1]: luminance noise, so colours keep their hue
        img = Image.fromarray(np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8))
    if cfg.jpeg_p and rng.random() < cfg.jpeg_p:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=rng.randint(*cfg.jpeg_quality))
        buf.seek(0)
        img = Image.open(buf).convert("RGB")
    return img


def _lighting(img: Image.Image, rng: random.Random, cfg: AugmentConfig) -> Image.Image:
    gain = 1.0 + rng.uniform(-cfg.contrast, cfg.contrast)
    bias = 255.0 * rng.uniform(-cfg.brightness, cfg.brightness)
    img = img.point([min(255, max(0, round((v - 128.0) * gain + 128.0 + bias))) for v in range(256)] * 3)
    if cfg.shading:
        # a light source off to one side: brightness falls off linearly across the frame
        a = rng.uniform(0, 2 * math.pi)
        amp = 255.0 * rng.uniform(0, cfg.shading)
        xs = (np.linspace(-0.5, 0.5, img.width, dtype=np.float32) * (amp * math.cos(a)))[None, :]
        ys = (np.linspace(-0.5, 0.5, img.height, dtype=np.float32) * (amp * math.sin(a)))[:, None]
        ramp = np.rint(xs + ys).astype(np.int16)[..., None]  # [H, W, 1]
        img = Image.fromarray(np.clip(np.asarray(img, dtype=np.int16) + ramp, 0, 255).astype(np.uint8))
    return img


def augment(img: Image.Image, rng: random.Random, cfg: AugmentConfig, fill=(255, 255, 255)) -> Image.Image:
    """Geometry then photometry, for generators whose ground truth has no coordinates."""
    if cfg.is_identity:
        return img
    H = random_homography(rng, cfg, img.size)
    if H is not None:
        img = warp(img, H, fill)
    return photometric(img, rng, cfg)
