"""Data: generated visual worlds and adapters for fixed datasets, deterministic by seed, with disjoint splits.

    from vlmkit.data import make_source
    src = make_source("shapes", split="train", seed=0, n=1000)
    sample = src[0]          # Sample: .image (PIL), .caption, .qa [QA(question, answer, slice, metric)], .truth
    len(src)                 # map-style, so torch DataLoader takes it as it is
    RecordView(src, "conversation")[0]   # (PIL image, the LLaVA-style record the exporter would write)

Sources: shapes, text, charts, receipts, worlds (their mixture), unsure (abstentions), easy-vqa,
fashion-mnist, digits.
`export(src, DIR)` writes the shared on-disk formats (see writer.py).
"""
from __future__ import annotations

from .augment import PRESETS as AUGMENT_PRESETS
from .augment import AugmentConfig
from .sample import QA, DataError, Sample
from .seeding import SPLITS
from .views import RecordView

SYNTHETIC = ("shapes", "text", "charts", "receipts", "worlds", "unsure")
FIXED = ("easy-vqa", "fashion-mnist", "digits")
SOURCES = SYNTHETIC + FIXED
CLASSIFICATION = ("fashion-mnist", "digits")

# pass bars of the default model (issue "Default model"); slices without a bar are reported, not gated
PASS_BARS = {"counting": 0.90, "colour": 0.90, "spatial": 0.90, "grounding": 0.80, "chart": 0.80, "reading": 0.80,
             "easy-vqa": 0.95}


def make_source(name: str, split: str = "train", seed: int = 0, n: int | None = None, size: int | None = None,
                augment: str | AugmentConfig | None = None, wrong_total_rate: float = 0.0):
    """A map-style source of Samples. `n` defaults to 1000 for generators and to the whole split for fixed data.

    `size` is the square side for shapes/text/charts (default 224) and the page width for receipts (default 384).
    `augment` is a preset name ("none", "light", "photo") or an AugmentConfig; None keeps each generator's default.
    """
    if name not in SOURCES:
        raise DataError(f"unknown data source {name!r}; choose from {', '.join(SOURCES)}")
    if name in SYNTHETIC:
        from .worlds import single, worlds

        build = worlds if name == "worlds" else (lambda **kw: single(name, **kw))
        try:
            return build(split=split, seed=seed, n=1000 if n is None else n, size=size, augment=augment,
                         wrong_total_rate=wrong_total_rate)
        except ValueError as e:  # config checks (object counts, rates) speak for themselves
            raise DataError(f"{name}: {e}") from None
    if name == "easy-vqa":
        from .easyvqa import easy_vqa

        return easy_vqa(split, seed, n)
    from .classification import digits, fashion_mnist

    return (fashion_mnist if name == "fashion-mnist" else digits)(split, seed, n)


def export(source, out_dir, **kw):
    from .writer import export as _export

    return _export(source, out_dir, **kw)


__all__ = ["make_source", "export", "RecordView", "Sample", "QA", "DataError", "AugmentConfig", "AUGMENT_PRESETS", "SOURCES",
           "SPLITS", "PASS_BARS"]
