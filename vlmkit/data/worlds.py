"""The visual worlds: one mixture over the shape, text, chart and receipt generators.

Each generator keys its own content, so a shape scene that is in the test split
of `shapes` is in the test split of `worlds` too: the mixture cannot leak.
"""
from __future__ import annotations

from .augment import AugmentConfig
from .charts import ChartsConfig, ChartsGenerator
from .receipts import ReceiptsConfig, ReceiptsGenerator
from .shapes import ShapesConfig, ShapesGenerator
from .source import SyntheticSource
from .text import TextConfig, TextGenerator

# shapes carry four skills per image, so they get half the images
WEIGHTS = {"shapes": 0.5, "text": 0.2, "charts": 0.2, "receipts": 0.1}


def generator(name: str, size: int | None = None, augment: str | AugmentConfig | None = None,
              wrong_total_rate: float = 0.0):
    """One generator with its defaults, overriding only what is given."""
    kw = {} if augment is None else {"augment": augment}
    if size is not None:
        kw["size"] = size
    if name == "shapes":
        return ShapesGenerator(ShapesConfig(**kw))
    if name == "text":
        return TextGenerator(TextConfig(**kw))
    if name == "charts":
        return ChartsGenerator(ChartsConfig(**kw))
    if name == "unsure":
        from .unsure import UnsureConfig, UnsureGenerator

        return UnsureGenerator(UnsureConfig(**{k: v for k, v in kw.items() if k == "size"}))
    if name == "receipts":
        return ReceiptsGenerator(ReceiptsConfig(wrong_total_rate=wrong_total_rate, **kw))
    raise KeyError(name)


def worlds(split: str = "train", seed: int = 0, n: int = 1000, size: int | None = None,
           augment: str | AugmentConfig | None = None, wrong_total_rate: float = 0.0,
           weights: dict[str, float] | None = None) -> SyntheticSource:
    """The mixture; `size` sets the square generators (receipts keep their own page size)."""
    weights = weights or WEIGHTS
    gens = {name: (generator(name, None if name == "receipts" else size, augment, wrong_total_rate), w)
            for name, w in weights.items() if w > 0}
    return SyntheticSource("worlds", gens, split=split, seed=seed, n=n)


def single(name: str, split: str = "train", seed: int = 0, n: int = 1000, size: int | None = None,
           augment: str | AugmentConfig | None = None, wrong_total_rate: float = 0.0) -> SyntheticSource:
    return SyntheticSource(name, {name: (generator(name, size, augment, wrong_total_rate), 1.0)}, split=split, seed=seed, n=n)


# The built-in `vlmkit eval --tasks visual-world`: the test split of the skills behind the pass bars.
# Receipts are left out here (their JSON answers are long; the extraction work evaluates them on its own).
EVAL_WEIGHTS = {"shapes": 0.5, "text": 0.25, "charts": 0.25}
EVAL_N, EVAL_SEED = 400, 0


def build_eval_task(out_dir, n: int = EVAL_N, seed: int = EVAL_SEED, progress: bool = True):
    """Write the visual-world test task under out_dir once (later calls return it as it is); -> task.json path."""
    from pathlib import Path

    from .writer import export

    out = Path(out_dir)
    spec = out / "task.json"
    if spec.is_file():
        return spec
    out.parent.mkdir(parents=True, exist_ok=True)
    src = worlds(split="test", seed=seed, n=n, weights=EVAL_WEIGHTS)
    try:
        export(src, out, progress=progress)
    except Exception:
        if spec.is_file():  # another process built it first
            return spec
        raise
    return spec
