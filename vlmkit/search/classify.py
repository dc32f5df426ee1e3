"""Zero-shot classification with a dual encoder: prompt ensembles, softmax, and abstention.

Each class becomes the mean of its normalised text embeddings over a set of prompt
templates (the CLIP paper's ensembling, Radford et al. 2021, sec. 3.1.4), renormalised.
Probabilities are softmax(scale * cos) with the model's learned scale. A prediction
whose top probability is below `min_score`, or whose lead over the runner-up is below
`min_margin`, is labelled "review" instead: calibrate.py picks both on labelled data.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import VlmkitError
from ..files import write_text_atomic

REVIEW = "review"
SINGLE_TEMPLATE = ("a photo of a {}.",)
# CLIP's hand-picked subset of its ImageNet ensemble, plus the plain prompt and a few generic ones
DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
    "a close-up photo of a {}.",
    "a low resolution photo of a {}.",
    "a black and white photo of a {}.",
    "a picture of a {}.",
)


@dataclass
class Thresholds:
    min_score: float = 0.0  # top-1 probability below this -> review
    min_margin: float = 0.0  # top-1 minus top-2 probability below this -> review
    labels: list[str] | None = None  # classes the thresholds were calibrated for
    templates: list[str] | None = None
    model_id: str | None = None
    extra: dict = field(default_factory=dict)  # what calibration measured (precision, coverage, ...)

    def save(self, path: str | os.PathLike) -> None:
        write_text_atomic(path, json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Thresholds":
        try:
            raw = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise VlmkitError(f"thresholds file not found: {path}") from None
        except json.JSONDecodeError as e:
            raise VlmkitError(f"{path} is not valid JSON: {e}") from None
        if not isinstance(raw, dict) or not {"min_score", "min_margin"} <= set(raw):
            raise VlmkitError(f"{path} is not a thresholds file (needs min_score and min_margin; write one with vlmkit classify-calibrate)")
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in raw.items() if k in known})


@dataclass
class Prediction:
    label: str  # a class name, or "review"
    best: str  # the top class, even when abstaining
    score: float  # its probability
    margin: float  # top-1 minus top-2 probability
    probs: dict[str, float]

    def to_dict(self, top: int = 3) -> dict:
        ranked = sorted(self.probs.items(), key=lambda kv: -kv[1])[:top]
        return {"label": self.label, "best": self.best, "score": round(self.score, 6), "margin": round(self.margin, 6),
                "top": [{"label": k, "prob": round(v, 6)} for k, v in ranked]}


# ---------------------------------------------------------------- text side
def check_templates(templates: Sequence[str]) -> list[str]:
    templates = [t for t in (t.strip() for t in templates) if t]
    if not templates:
        raise VlmkitError("no prompt templates given")
    bad = [t for t in templates if t.count("{}") != 1]
    if bad:
        raise VlmkitError(f"each template needs exactly one {{}} for the class name: {bad[0]!r}")
    return templates


def class_embeddings(encoder, classnames: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES):
    """-> [C, D]: per class, the renormalised mean of its L2-normalised template embeddings."""
    import torch
    import torch.nn.functional as F

    templates = check_templates(templates)
    texts = [t.format(c) for c in classnames for t in templates]
    with torch.no_grad():
        emb = F.normalize(encoder.encode_text(texts).float(), dim=-1)  # [C * T, D]
        emb = emb.view(len(classnames), len(templates), -1).mean(1)  # [C, D]
    return F.normalize(emb, dim=-1)


def logit_scale(encoder) -> float:
    scale = getattr(encoder, "scale", None)
    return float(scale()) if callable(scale) else 100.0


# ---------------------------------------------------------------- image side
def zero_shot_probs(encoder, images, classnames: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES, batch_size: int = 64) -> np.ndarray:
    """images: [N, 3, H, W] tensor, or paths / PIL images -> probabilities [N, C]."""
    import torch

    classes = class_embeddings(encoder, classnames, templates)  # [C, D]
    with torch.no_grad():
        if isinstance(images, torch.Tensor):
            img = torch.cat([encoder.encode_image(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])
        else:
            img = encoder.encode_images(list(images), batch_size=batch_size)
        logits = logit_scale(encoder) * img.float() @ classes.to(img.device).t()  # [N, C]
    return torch.softmax(logits, -1).cpu().numpy()


def decide(probs: np.ndarray, classnames: Sequence[str], thresholds: Thresholds | None = None) -> list[Prediction]:
    """Apply abstention to probabilities [N, C]."""
    th = thresholds or Thresholds()
    out = []
    for p in np.asarray(probs):
        order = np.argsort(-p)
        score = float(p[order[0]])
        margin = score - float(p[order[1]]) if len(p) > 1 else score
        best = classnames[order[0]]
        label = REVIEW if score < th.min_score or margin < th.min_margin else best
        out.append(Prediction(label, best, score, margin, {c: float(v) for c, v in zip(classnames, p)}))
    return out


def classify(encoder, images, classnames: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES, thresholds: Thresholds | None = None) -> list[Prediction]:
    if len(classnames) < 2:
        raise VlmkitError("give at least two labels to choose between")
    if len(set(classnames)) != len(classnames):
        raise VlmkitError("labels must be distinct")
    return decide(zero_shot_probs(encoder, images, classnames, templates), classnames, thresholds)


def zero_shot_accuracy(encoder, images, labels: Sequence, classnames: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES) -> float:
    """Top-1 accuracy, no abstention. labels: class indices or class names, one per image.

    Pass templates=SINGLE_TEMPLATE for the no-ensemble baseline."""
    probs = zero_shot_probs(encoder, images, classnames, templates)
    target = np.array([classnames.index(l) if isinstance(l, str) else int(l) for l in labels])
    return float((probs.argmax(1) == target).mean())


# ---------------------------------------------------------------- inputs
def parse_labels(labels: str | None = None, labels_file: str | None = None) -> list[str]:
    if labels and labels_file:
        raise VlmkitError("give --labels or --labels-file, not both")
    if labels_file:
        try:
            text = Path(labels_file).read_text()
        except OSError as e:
            raise VlmkitError(f"cannot read labels file {labels_file}: {e.strerror or e}") from None
        names = [l.strip() for l in text.splitlines() if l.strip() and not l.lstrip().startswith("#")]
    elif labels:
        names = [l.strip() for l in labels.split(",") if l.strip()]
    else:
        return []
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise VlmkitError(f"duplicate labels: {', '.join(dup)}")
    return names


def read_templates(path: str) -> list[str]:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise VlmkitError(f"cannot read templates file {path}: {e.strerror or e}") from None
    return check_templates([l for l in lines if not l.lstrip().startswith("#")])


def labelled_folder(root: str | os.PathLike) -> tuple[list[Path], list[int], list[str]]:
    """DIR/<class>/<image> -> (paths, label indices, class names). Underscores in folder names become spaces."""
    from .index import IMAGE_EXTENSIONS

    root = Path(root)
    if not root.is_dir():
        raise VlmkitError(f"{root}: not a folder (expected one subfolder of images per class)")
    classes = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    paths, labels = [], []
    for ci, d in enumerate(classes):
        for f in sorted(d.rglob("*")):
            if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith("."):
                paths.append(f)
                labels.append(ci)
    names = [d.name.replace("_", " ") for d in classes]
    if len(names) < 2 or not paths:
        raise VlmkitError(f"{root}: needs at least two class subfolders with images (found {len(names)} classes, {len(paths)} images)")
    return paths, labels, names
