"""Loading real image files safely, and turning them into normalised tensors.

Guards come before decoding: the header gives the size, so a decompression
bomb is refused without allocating its pixels.
"""
from __future__ import annotations

import io
import math
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


def load_image(src: ImageInput, limits: ImageLimits | None = None, max_side: int | None = None) -> Image.Image:
    """Open, check and decode an image: EXIF orientation applied, converted to RGB.

    max_side: the working resolution. A larger photo is shrunk while it is decoded
    (JPEG: libjpeg's 1/2, 1/4, 1/8 DCT scaling via Image.draft; others: Image.reduce),
    keeping its longer side >= max_side, so nothing downstream touches the full size.
    The size before shrinking (after EXIF rotation) is kept in img.info["original_size"] as (w, h).
    """
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
    original = (h, w) if _exif_swaps_sides(img) else (w, h)
    try:
        if max_side and img.format == "JPEG" and max(w, h) >= 2 * max_side:
            s = max_side / max(w, h)
            img.draft(None, (math.ceil(w * s), math.ceil(h * s)))  # decode at 1/k scale, never at full size
        img = to_rgb(ImageOps.exif_transpose(img))  # phones store rotation in EXIF, not in the pixels
        if max_side and max(img.size) >= 2 * max_side:
            img = img.reduce(max(img.size) // max_side)  # integer box filter: fast, and sides stay >= max_side
    except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt data surfaces at decode time
        raise ImageError(f"{name}: corrupt or truncated image ({e})") from None
    img.info["original_size"] = original
    return img


def _exif_swaps_sides(img: Image.Image) -> bool:
    """EXIF orientations 5-8 are rotations by 90 degrees: width and height trade places."""
    try:
        return img.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    except Exception:  # a malformed EXIF block is not worth refusing the image for
        return False


def image_size(src: ImageInput, limits: ImageLimits | None = None) -> tuple[int, int]:
    """(w, h) as the model will see it (EXIF rotation applied), from the header alone: no pixels decoded."""
    if isinstance(src, Image.Image):
        return src.info.get("original_size", src.size)
    limits = limits or ImageLimits()
    data, name = _read_bytes(src, limits)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise ImageError(f"{name}: not a readable image ({type(e).__name__})") from None
    w, h = img.size
    return (h, w) if _exif_swaps_sides(img) else (w, h)


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
    """`resize` stretches to size x size; `letterbox` keeps the aspect ratio and centres it on `fill`;
    `pad` keeps the aspect ratio at the top-left and pads right and bottom (Idefics / Pix2Struct), so
    the patch grid starts at the image's own corner."""
    if mode == "resize":
        return img.resize((size, size), Image.BICUBIC)
    if mode in ("letterbox", "pad"):
        scale = size / max(img.size)
        w, h = max(1, round(img.width * scale)), max(1, round(img.height * scale))
        canvas = Image.new("RGB", (size, size), tuple(fill))
        at = ((size - w) // 2, (size - h) // 2) if mode == "letterbox" else (0, 0)
        canvas.paste(img.resize((w, h), Image.BICUBIC), at)
        return canvas
    raise ValueError(f"resize mode must be 'resize', 'letterbox' or 'pad', got {mode!r}")


def mean_fill(mean) -> tuple[int, int, int]:
    """The tower's mean colour as 8-bit RGB: padding with it normalises to exactly 0 (LLaVA-1.5's expand2square)."""
    return tuple(int(round(m * 255)) for m in mean)


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
        fill = mean_fill(self.mean)
        tensors = [
            to_tensor(resize_square(load_image(im, self.limits, max_side=self.size), self.size, self.mode, fill), self.mean, self.std)
            for im in images
        ]
        if not tensors:
            return torch.empty(0, 3, self.size, self.size)
        return torch.stack(tensors)
