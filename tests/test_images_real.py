"""Real files: EXIF rotation, CMYK, 16-bit, transparency, truncation, bombs, limits, shrink-on-decode."""
import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from vlmkit.errors import ImageError
from vlmkit.processing.images import ImageLimits, ImageProcessor, image_size, load_image, mean_fill, resize_square


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png(width: int, height: int, depth: int, color_type: int, raw: bytes) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(raw)) + _png_chunk(b"IEND", b"")


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95, **kw)
    return buf.getvalue()


def test_exif_rotation_applied(tmp_path):
    # stored 40 wide x 20 high, red on the left half; orientation 6 = the camera was turned 90 degrees clockwise
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    path.write_bytes(_jpeg(Image.fromarray(arr), exif=exif))
    img = load_image(path)
    assert img.size == (20, 40)  # shown upright: 20 wide, 40 high
    out = np.asarray(img).astype(int)
    assert out[5, 10, 0] > 200 and out[5, 10, 1] < 60  # the stored left half is now on top
    assert out[35, 10, 0] < 60
    assert image_size(path) == (20, 40)  # from the header, no decode
    assert img.info["original_size"] == (20, 40)


def test_cmyk_jpeg_to_rgb():
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # no cyan, full magenta and yellow: red
    img = load_image(_jpeg(cmyk))
    assert img.mode == "RGB"
    r, g, b = np.asarray(img)[8, 8].astype(int)
    assert r > 230 and g < 30 and b < 30


def test_16bit_grayscale_png():
    vals = np.full((8, 8), 32768, dtype=">u2")  # half of 16-bit full scale
    data = _png(8, 8, 16, 0, b"".join(b"\x00" + row.tobytes() for row in vals))
    img = load_image(data)
    assert img.mode == "RGB"
    assert np.asarray(img)[0, 0].tolist() == [127, 127, 127]


def test_16bit_rgb_png():
    arr = np.zeros((4, 6, 3), dtype=">u2")
    arr[..., 0], arr[..., 2] = 65535, 16384  # full red, a quarter blue
    data = _png(6, 4, 16, 2, b"".join(b"\x00" + row.tobytes() for row in arr))
    img = load_image(data)
    assert img.mode == "RGB" and img.size == (6, 4)
    assert np.asarray(img)[2, 3].tolist() == [255, 0, 64]


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparency_becomes_white(mode):
    base = Image.new("RGBA", (10, 10), (0, 0, 255, 0))  # fully transparent blue
    base.paste((0, 0, 255, 255), (0, 0, 5, 10))  # opaque blue on the left half
    img = base if mode == "RGBA" else base.convert("LA") if mode == "LA" else base.convert("P")
    if mode == "P":
        img.info["transparency"] = img.getpixel((9, 9))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    out = np.asarray(load_image(buf.getvalue())).astype(int)
    assert out[5, 8].tolist() == [255, 255, 255]  # transparent -> paper white, not black
    assert out[5, 2].max() - out[5, 2].min() > 0 or out[5, 2].tolist() != [255, 255, 255]


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file_is_a_clear_error(fmt):
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, fmt)
    data = buf.getvalue()[: len(buf.getvalue()) // 2]
    with pytest.raises(ImageError, match="truncated|corrupt|not a readable"):
        load_image(data)


def test_decompression_bomb_refused_before_decoding():
    # a valid header claiming 100,000 x 100,000 pixels with almost no data behind it
    data = _png(100_000, 100_000, 8, 2, b"\x00")
    with pytest.raises(ImageError, match="not a readable image|over the limit"):
        load_image(data)
    small_bomb = _png(9000, 9000, 8, 0, b"\x00")  # 81 Mpx: under PIL's bomb check, over ours
    with pytest.raises(ImageError, match="81,000,000 pixels is over the limit of 64,000,000"):
        load_image(small_bomb)


def test_byte_limit_and_missing_file(tmp_path):
    data = _jpeg(Image.new("RGB", (32, 32), "white"))
    with pytest.raises(ImageError, match="over the limit of 100"):
        load_image(data, ImageLimits(max_bytes=100))
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="not a readable image"):
        load_image(b"definitely not an image")


def test_oversize_jpeg_shrunk_while_decoding():
    photo = Image.new("RGB", (4000, 3000), (200, 100, 50))
    img = load_image(_jpeg(photo), max_side=336)
    # libjpeg DCT scaling by 1/8: 500 x 375, never decoded at 4000 x 3000; still >= the working side
    assert img.size == (500, 375)
    assert img.info["original_size"] == (4000, 3000)
    assert np.abs(np.asarray(img)[100, 100].astype(int) - [200, 100, 50]).max() <= 3


def test_oversize_png_reduced():
    buf = io.BytesIO()
    Image.new("RGB", (2000, 1000), "white").save(buf, "PNG")
    img = load_image(buf.getvalue(), max_side=336)
    assert img.size == (400, 200)  # box-reduced by 5: the longer side stays >= 336
    assert img.info["original_size"] == (2000, 1000)
    assert load_image(buf.getvalue(), max_side=1500).size == (2000, 1000)  # not oversize: untouched


def test_letterbox_and_pad_keep_aspect():
    red = Image.new("RGB", (40, 20), (255, 0, 0))
    box = np.asarray(resize_square(red, 32, "letterbox", fill=(0, 0, 255)))
    assert box[16, 16].tolist() == [255, 0, 0] and box[2, 16].tolist() == [0, 0, 255] and box[30, 16].tolist() == [0, 0, 255]
    pad = np.asarray(resize_square(red, 32, "pad", fill=(0, 0, 255)))
    assert pad[2, 16].tolist() == [255, 0, 0] and pad[20, 16].tolist() == [0, 0, 255]
    with pytest.raises(ValueError, match="resize mode"):
        resize_square(red, 32, "crop")


def test_processor_normalises_with_tower_stats():
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)  # CLIP's
    proc = ImageProcessor(16, mean, std, mode="letterbox")
    x = proc([Image.new("RGB", (32, 16), (255, 255, 255))])
    assert x.shape == (1, 3, 16, 16)
    white = (1 - torch.tensor(mean)) / torch.tensor(std)
    assert torch.allclose(x[0, :, 8, 8], white, atol=1e-5)
    # the letterbox bars are the mean colour, which normalises to (almost exactly) zero
    assert x[0, :, 0, 8].abs().max() < 0.01
    assert mean_fill(mean) == (123, 117, 104)
