"""`vlmkit ask` and `vlmkit tokens` from the command line: figures, and one-line errors for bad input."""
import io
import zlib
import struct

import numpy as np
import pytest
from PIL import Image

from tiny import tiny_vlm
from vlmkit.cli import main


def run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def photo(tmp_path):
    p = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(p)
    return p


def _huge_png(path, w, h):
    """A valid PNG header claiming w x h, with a tiny body: the guard must refuse it before decoding."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    raw += chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b"")
    path.write_bytes(raw)
    return path


def test_ask_answers_with_a_model_dir(model_dir, photo, capsys):
    code, out, err = run(["ask", str(photo), "What is this?", "--model", str(model_dir), "--max-tokens", "5"], capsys)
    assert code == 0, err
    expected = tiny_vlm().ask(str(photo), "What is this?", max_new_tokens=5)
    assert out.strip() == expected.strip()


@pytest.mark.parametrize("case,pattern", [
    ("missing", "no such file"),
    ("not_image", "not a readable image"),
    ("bomb", "over the limit"),
    ("truncated", "corrupt or truncated"),
])
def test_ask_bad_images(case, pattern, tmp_path, model_dir, capsys):
    p = tmp_path / "x.png"
    if case == "not_image":
        p.write_text("hello, I am text")
    elif case == "bomb":
        _huge_png(p, 20000, 20000)
    elif case == "truncated":
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
        p = tmp_path / "x.jpg"
        p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    code, out, err = run(["ask", str(p), "What?", "--model", str(model_dir)], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("vlmkit: error:") and pattern in err
    assert out == ""


def test_ask_bad_model_dir(tmp_path, photo, capsys):
    code, _, err = run(["ask", str(photo), "What?", "--model", str(tmp_path)], capsys)
    assert code == 2 and "not a vlmkit model directory" in err and err.count("\n") == 1
    code, _, err = run(["ask", str(photo), "What?", "--model", str(tmp_path / "absent")], capsys)
    assert code == 2 and "model directory not found" in err


def test_ask_needs_a_question(photo, capsys):
    code, _, err = run(["ask", str(photo)], capsys)
    assert code == 2 and "at least one image and a question" in err


@pytest.mark.parametrize("argv,expect", [
    (["--vision", "clip-vit-l-14-336"], {"tower tokens": "576", "visual tokens to the LM (per image)": "576"}),
    (["--vision", "clip-vit-b-16"], {"tower tokens": "196"}),
    (["--vision", "clip-vit-b-16", "--keep-cls"], {"tower tokens": "197"}),
    (["--vision", "clip-vit-l-14-336", "--image-size", "672"], {"visual tokens to the LM (per image)": "2,304"}),
    (["--vision", "clip-vit-l-14-336", "--connector", "mlp2x_gelu", "--lm", "vicuna-7b"], {"connector parameters": "20,979,712"}),
    (["--vision", "clip-vit-l-14-336", "--connector", "pixel_shuffle", "--scale-factor", "2"], {"visual tokens to the LM (per image)": "144"}),
    # 576 tokens x 2 (K,V) x 32 layers x 32 heads x 128 dims x 2 bytes
    (["--vision", "clip-vit-l-14-336", "--lm", "vicuna-7b"], {"KV cache for the visual tokens": "288.00 MiB (301,989,888 B)"}),
])
def test_tokens_figures(argv, expect, capsys):
    code, out, _ = run(["tokens", *argv], capsys)
    assert code == 0
    rows = {line.strip().split("  ")[0]: line.strip().split("  ")[-1].strip() for line in out.splitlines()[1:]}
    for k, v in expect.items():
        assert rows[k] == v, (k, rows)


def test_tokens_rejects_bad_size(capsys):
    code, _, err = run(["tokens", "--vision", "clip-vit-l-14-336", "--image-size", "300"], capsys)
    assert code == 2 and "not a multiple" in err
