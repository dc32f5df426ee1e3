"""TrueType fonts for rendered text, found the same way on every machine.

matplotlib bundles the DejaVu family, so its copy is the first choice: the
same files, hence the same pixels, wherever matplotlib is installed. System
DejaVu comes next. Pillow's built-in scalable font is the last resort (it
renders differently, so determinism across machines then needs matplotlib).
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

from PIL import ImageFont

# family -> file name in the DejaVu set
FAMILIES = {
    "sans": "DejaVuSans.ttf",
    "sans-bold": "DejaVuSans-Bold.ttf",
    "serif": "DejaVuSerif.ttf",
    "serif-bold": "DejaVuSerif-Bold.ttf",
    "mono": "DejaVuSansMono.ttf",
    "mono-bold": "DejaVuSansMono-Bold.ttf",
}

_SYSTEM_DIRS = ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/TTF", "/usr/share/fonts/dejavu")


@functools.lru_cache(maxsize=None)
def font_path(family: str = "sans") -> str | None:
    name = FAMILIES.get(family, FAMILIES["sans"])
    try:
        import matplotlib

        p = Path(matplotlib.__file__).parent / "mpl-data" / "fonts" / "ttf" / name
        if p.is_file():
            return str(p)
    except ImportError:
        pass
    for d in _SYSTEM_DIRS:
        p = os.path.join(d, name)
        if os.path.isfile(p):
            return p
    return None


@functools.lru_cache(maxsize=512)
def get_font(family: str = "sans", size: int = 16) -> ImageFont.FreeTypeFont:
    size = max(6, int(size))
    path = font_path(family)
    if path is None:
        return ImageFont.load_default(size=size)
    return ImageFont.truetype(path, size=size)


def available_families() -> list[str]:
    """Families that resolve to a distinct file here (all of them where DejaVu is found)."""
    return [f for f in FAMILIES if font_path(f) is not None] or ["sans"]
