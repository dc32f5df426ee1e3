"""A contact sheet: one row of examples per source, each with one question and its answer under it."""
from __future__ import annotations

import textwrap
from pathlib import Path

from PIL import Image, ImageDraw

from .fonts import get_font
from .sample import DataError

ROWS = ("shapes", "text", "charts", "receipts", "easy-vqa", "fashion-mnist", "digits")


def contact_sheet(sources=ROWS, per_row: int = 6, tile: int = 168, split: str = "train", seed: int = 0) -> Image.Image:
    from . import make_source

    label_w, text_h, pad = 110, 44, 6
    font, bold = get_font("sans", 11), get_font("sans-bold", 13)
    rows = []
    for name in sources:
        try:
            src = make_source(name, split=split, seed=seed, n=per_row)
            rows.append((name, [src[i] for i in range(min(per_row, len(src)))], None))
        except DataError as e:  # a missing optional dataset is shown as such, not fatal
            rows.append((name, [], str(e)))
    w = label_w + per_row * (tile + pad) + pad
    h = len(rows) * (tile + text_h + pad) + pad
    sheet = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for r, (name, samples, err) in enumerate(rows):
        y = pad + r * (tile + text_h + pad)
        draw.text((pad, y + tile // 2), name, font=bold, fill=(0, 0, 0), anchor="lm")
        if err:
            draw.multiline_text((label_w, y + 10), "\n".join(textwrap.wrap(err, 110)), font=font, fill=(160, 0, 0))
            continue
        for c, s in enumerate(samples):
            x = label_w + c * (tile + pad)
            sheet.paste(_fit(s.image, tile), (x, y))
            qa = s.qa[c % len(s.qa)] if s.qa else None
            line = f"{qa.question} -> {qa.answer}" if qa else s.caption
            wrapped = textwrap.wrap(line, 30)[:3]
            if len(textwrap.wrap(line, 30)) > 3:
                wrapped[-1] = wrapped[-1][:27] + "..."
            draw.multiline_text((x, y + tile + 2), "\n".join(wrapped), font=font, fill=(40, 40, 40), spacing=1)
    return sheet


def _fit(img: Image.Image, tile: int) -> Image.Image:
    """Letterbox into a square tile; tiny images (digits, Fashion-MNIST) scale up with hard pixel edges."""
    scale = tile / max(img.size)
    new = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    resample = Image.Resampling.NEAREST if max(img.size) < 64 else Image.Resampling.LANCZOS
    out = Image.new("RGB", (tile, tile), (235, 235, 235))
    out.paste(img.resize(new, resample), ((tile - new[0]) // 2, (tile - new[1]) // 2))
    return out


def save_contact_sheet(path: str | Path, **kw) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    contact_sheet(**kw).save(path, optimize=True)
    return path
