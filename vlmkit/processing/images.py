"""Loading real image files safely, and turning them into normalised tensors.

Guards come before decoding: the header gives the size, so a decompression
bomb is refused without allocating its pixels.
"""
from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageError

ImageInput = Union[str, os.PathLike, bytes, Image.Image]

MAX_PIXELS = 64_000_000  # larger than any camera photo, far below a decompression bomb
MAX_BYTES = 50 * 1024 * 1024


@dataclass
class ImageLimits:
    max_pixels: int = MAX_PIXELS
    max_bytes: int = MAX_BYTES


def load_image(src: ImageInput, limits: ImageLimits | None = None) -> Image.Image:
    """Open, check and decode an image: EXIF orientation applied, converted to RGB."""
    limits = limits or ImageLimits()
    if isinstance(src, Image.Image):
        img, name = src, "image"
    else:
        data, name = _read_bytes(src, limits)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
            raise ImageError(f"{name}: image is over the limit of {limits.max_pixels:,} pixels ({e})") from None
        except UnidentifiedImageError as e:
            raise ImageError(f"{name}: not a readable image ({type(e).__name__})") from None
    w, h = img.size
    if w * h > limits.max_pixels:
        raise ImageError(f"{name}: {w}x{h} = {w * h:,} pixels is over the limit of {limits.max_pixels:,}")
    if w == 0 or h == 0:
        raise ImageError(f"{name}: empty image ({w}x{h})")
    try:
        img = ImageOps.exif_transpose(img)  # phones store rotation in EXIF, not in the pixels
        return to_rgb(img)
    except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt data surfaces at decode time
        raise ImageError(f"{name}: corrupt or truncated image ({e})") from None


def _read_bytes(src, limits: ImageLimits) -> tuple[bytes, str]:
    if isinstance(src, (bytes, bytearray)):
        if len(src) > limits.max_bytes:
            raise ImageError(f"image is {len(src):,} bytes, over the limit of {limits.max_bytes:,}")
        return bytes(src), "image"
    path = Path(src)
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if not path.is_file():
        raise ImageError(f"{path}: not a file")
    size = path.stat().st_size
    if size > limits.max_bytes:
        raise ImageError(f"{path}: {size:,} bytes is over the limit of {limits.max_bytes:,}")
    return path.read_bytes(), str(path)


def to_rgb(img: Image.Image) -> Image.Image:
    """RGBA/LA/P composite on white (transparent areas are paper, not black); 16-bit and CMYK convert."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (255, 255, 255))
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        return Image.fromarray((arr / hi * 255).clip(0, 255).astype(np.uint8)).convert("RGB")
    return img.convert("RGB")


def resize_square(img: Image.Image, size: int, mode: str = "resize", fill=(255, 255, 255)) -> Image.Image:
    """`resize` stretches to size x size; `letterbox` keeps the aspect ratio and pads."""
    if mode == "resize":
        return img.resize((size, size), Image.BICUBIC)
    if mode == "letterbox":
        scale = size / max(img.size)
        w, h = max(1, round(img.width * scale)), max(1, round(img.height * scale))
        canvas = Image.new("RGB", (size, size), fill)
        canvas.paste(img.resize((w, h), Image.BICUBIC), ((size - w) // 2, (size - h) // 2))
        return canvas
    raise ValueError(f"resize mode must be 'resize' or 'letterbox', got {mode!r}")


def to_tensor(img: Image.Image, mean, std) -> torch.Tensor:
    """RGB PIL image -> [3, H, W] float32, normalised."""
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


class ImageProcessor:
    """One image -> one [3, S, S] tensor at the tower's resolution (tiling policies live in tiling.py)."""

    def __init__(self, size: int, mean, std, mode: str = "resize", limits: ImageLimits | None = None):
        self.size, self.mean, self.std, self.mode = size, tuple(mean), tuple(std), mode
        self.limits = limits or ImageLimits()

    @classmethod
    def from_vision_config(cls, vcfg, **kw) -> "ImageProcessor":
        return cls(vcfg.image_size, vcfg.image_mean, vcfg.image_std, **kw)

    def __call__(self, images: list[ImageInput]) -> torch.Tensor:
        """-> [N, 3, S, S]."""
        tensors = [to_tensor(resize_square(load_image(im, self.limits), self.size, self.mode), self.mean, self.std) for im in images]
        if not tensors:
            return torch.empty(0, 3, self.size, self.size)
        return torch.stack(tensors)
