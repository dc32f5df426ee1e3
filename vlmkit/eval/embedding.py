"""Embedding tasks for a dual encoder: retrieval recall@k and zero-shot accuracy, by slice against bars.

Specs sit beside a samples JSONL, as generative ones do, with a "kind":
    {"name": "retrieval", "kind": "retrieval", "samples": "samples.jsonl", "pass_bars": {}}
    {"name": "zeroshot-fmnist", "kind": "zeroshot", "samples": "samples.jsonl", "classes": ["t-shirt", ...],
     "prompts": {"single-template": ["a photo of a {}."], "ensemble": ["a photo of a {}.", ...]},
     "pass_bars": {"ensemble": 0.75}}

Retrieval samples, one a line (paths relative to the JSONL's folder unless absolute):
    {"id": str, "slice": source, "image": path, "caption": str, "views": [path_a, path_b], "split": "test"}
  text-to-image: caption i searches every selected image; image i is its match (so is any image with the very
    same caption, which no caption can tell apart).
  image-to-image: view a of scene i searches every selected scene's view b; view b of scene i is its match.
  Rows: each direction over all its queries ("text-to-image"), then per source ("text-to-image/shapes"). The
  gallery is always the whole selection; a slice picks queries only. Headline: recall@1 ("recall"); extras
  recall@1/5/10 and the gallery size, which recall depends on.
Zero-shot samples: {"id": str, "image": path, "label": one of classes, "slice": str, "split": "test"}
  One row per prompt set: top-1 accuracy with no abstention, metric "exact" (predicted class name == label),
  so the report draws its confusion matrix.

Each image is embedded once per run. Nothing is resumed: a run recomputes and rewrites predictions.jsonl.
`--limit N` keeps the first N samples of each sample slice (N scenes per source, N images).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np

from ..files import write_text_atomic
from ..search.metrics import KS, match_ranks
from .harness import PREDICTIONS_FILE, EvalConfig, _row, missing_rows
from .tasks import DUAL_ENCODER, TaskError, _bar, image_path, read_samples

RETRIEVAL, ZEROSHOT = "retrieval", "zeroshot"
KINDS = (RETRIEVAL, ZEROSHOT)
TEXT_TO_IMAGE, IMAGE_TO_IMAGE = "text-to-image", "image-to-image"
SPEC_KEYS = {"name", "kind", "samples", "pass_bars", "classes", "prompts"}


@dataclass
class EmbeddingTaskSpec:
    model_kind: ClassVar[str] = DUAL_ENCODER

    name: str
    kind: str
    samples: Path
    pass_bars: dict[str, dict[str, float]] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)  # zeroshot: the label set, in order
    prompts: dict[str, list[str]] = field(default_factory=dict)  # zeroshot: prompt-set name (a row) -> templates
    spec_path: Path | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise TaskError(f"task {self.name!r}: unknown kind {self.kind!r} (known: generate, {', '.join(KINDS)})")
        self.samples = Path(self.samples)
        self.pass_bars = {str(k): _bar(self.name, k, v) for k, v in (self.pass_bars or {}).items()}
        if self.kind == ZEROSHOT:
            self.classes, self.prompts = _check_classes(self.name, self.classes), _check_prompts(self.name, self.prompts)
        elif self.classes or self.prompts:
            raise TaskError(f"task {self.name!r}: 'classes' and 'prompts' belong to zeroshot tasks")

    def fingerprint(self) -> dict:
        """What a resumed run must share with the run it continues."""
        digest = hashlib.sha256(self.samples.read_bytes()).hexdigest()
        return {"samples_sha256": digest, "kind": self.kind, "classes": self.classes, "prompts": self.prompts}


def _check_classes(task: str, classes) -> list[str]:
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) and c for c in classes):
        raise TaskError(f"task {task!r}: 'classes' must list at least two class names")
    if len(set(classes)) != len(classes):
        raise TaskError(f"task {task!r}: 'classes' must be distinct")
    return classes


def _check_prompts(task: str, prompts) -> dict[str, list[str]]:
    from ..errors import VlmkitError
    from ..search.classify import check_templates

    if not isinstance(prompts, dict) or not prompts:
        raise TaskError(f"task {task!r}: 'prompts' must map a name (one row each) to a list of templates")
    out = {}
    for name, templates in prompts.items():
        if not isinstance(templates, list) or not all(isinstance(t, str) for t in templates):
            raise TaskError(f"task {task!r}: prompts[{name!r}] must be a list of templates")
        try:
            out[str(name)] = check_templates(templates)
        except VlmkitError as e:
            raise TaskError(f"task {task!r}: prompts[{name!r}]: {e}") from None
    return out


def load_embedding_spec(path: Path, raw: dict) -> EmbeddingTaskSpec:
    unknown = set(raw) - SPEC_KEYS
    if unknown:
        raise TaskError(f"{path}: unknown keys {sorted(unknown)}")
    if "samples" not in raw:
        raise TaskError(f"{path}: needs 'samples' (the samples JSONL, relative to the spec)")
    samples = Path(raw["samples"])
    return EmbeddingTaskSpec(name=str(raw.get("name") or path.parent.name), kind=raw.get("kind"),
                             samples=samples if samples.is_absolute() else path.parent / samples,
                             pass_bars=raw.get("pass_bars") or {}, classes=raw.get("classes") or [],
                             prompts=raw.get("prompts") or {}, spec_path=path)


# ---- samples ----
@dataclass
class EmbedSample:
    id: str
    slice: str
    image: Path
    split: str | None = None  # the data split it came from ("test" for the built-ins: held out)
    caption: str | None = None  # retrieval
    views: list[Path] | None = None  # retrieval: two augmented views of the scene, for image-to-image
    label: str | None = None  # zeroshot


def load_embedding_samples(task: EmbeddingTaskSpec) -> list[EmbedSample]:
    return read_samples(task.name, task.samples, lambda raw, root, where: _embed_sample(task, raw, root, where))


def _embed_sample(task: EmbeddingTaskSpec, raw, root: Path, where: str) -> EmbedSample:
    if not isinstance(raw, dict):
        raise TaskError(f"{where}: each line must be a JSON object")
    for key in ("id", "image", "caption" if task.kind == RETRIEVAL else "label"):
        if not isinstance(raw.get(key), str):
            raise TaskError(f"{where}: missing {key!r} (a string)")
    views = raw.get("views")
    if views is not None and (not isinstance(views, list) or len(views) != 2 or not all(isinstance(v, str) for v in views)):
        raise TaskError(f"{where}: 'views' must be two image paths (two views of one scene)")
    if task.kind == ZEROSHOT and raw["label"] not in task.classes:
        raise TaskError(f"{where}: label {raw['label']!r} is not one of the task's classes")
    return EmbedSample(id=raw["id"], slice=str(raw.get("slice") or task.name), image=image_path(raw["image"], root, where),
                       split=raw.get("split"), caption=raw.get("caption"), label=raw.get("label"),
                       views=[image_path(v, root, where) for v in views] if views else None)


# ---- embedding ----
def _embed(fn: Callable, items: list, cfg: EvalConfig, desc: str) -> np.ndarray:
    """fn(batch of items) -> [b, D] L2-normalised embeddings; -> [N, D] float32, batch by batch."""
    import torch
    from tqdm.auto import tqdm

    out = []
    with torch.no_grad(), tqdm(total=len(items), desc=desc, unit="item", disable=not cfg.progress, dynamic_ncols=True) as bar:
        for i in range(0, len(items), cfg.batch_size):
            batch = items[i:i + cfg.batch_size]
            out.append(torch.as_tensor(fn(batch)).float().cpu())
            bar.update(len(batch))
    return torch.cat(out).numpy()


def _embed_images(model, paths: list[Path], cfg: EvalConfig, desc: str) -> np.ndarray:
    return _embed(lambda batch: model.encode_images([str(p) for p in batch], batch_size=len(batch)), paths, cfg, desc)


# ---- retrieval ----
def _retrieval(model, task: EmbeddingTaskSpec, samples: list[EmbedSample], cfg: EvalConfig) -> tuple[list, list]:
    captions = [s.caption for s in samples]
    texts = _embed(model.encode_text, captions, cfg, f"{task.name}: captions")  # [N, D]
    images = _embed_images(model, [s.image for s in samples], cfg, f"{task.name}: images")  # [N, D]
    by_caption: dict[str, set[int]] = {}
    for i, c in enumerate(captions):
        by_caption.setdefault(c, set()).add(i)
    rows, records = _direction(task, TEXT_TO_IMAGE, samples, texts @ images.T, [by_caption[c] for c in captions], captions)
    scenes = [s for s in samples if s.views]
    if scenes:
        a = _embed_images(model, [s.views[0] for s in scenes], cfg, f"{task.name}: views a")  # [M, D]
        b = _embed_images(model, [s.views[1] for s in scenes], cfg, f"{task.name}: views b")  # [M, D]
        more = _direction(task, IMAGE_TO_IMAGE, scenes, a @ b.T, [{i} for i in range(len(scenes))],
                          [str(s.views[0].name) for s in scenes])
        rows, records = rows + more[0], records + more[1]
    return rows, records


def _direction(task, direction: str, samples: list[EmbedSample], sim: np.ndarray, targets: list[set[int]],
               queries: list[str]) -> tuple[list, list]:
    """sim [Q, N] between queries and a gallery both in sample order -> (rows, records) for one direction."""
    ranks = match_ranks(sim, targets)  # [Q]
    top1 = sim.argmax(1)  # [Q], shown as the prediction
    records = [{"id": f"{direction}/{s.id}", "slice": f"{direction}/{s.slice}", "metric": "recall", "question": q,
                "answers": [samples[j].id for j in sorted(t)], "prediction": samples[int(p)].id, "rank": int(r),
                "score": float(r == 0), "error": None}
               for s, q, t, p, r in zip(samples, queries, targets, top1, ranks)]
    groups = {direction: list(range(len(samples)))}
    for i, s in enumerate(samples):
        groups.setdefault(f"{direction}/{s.slice}", []).append(i)
    rows = []
    for name, idx in groups.items():
        recall = {k: float((ranks[idx] < k).mean()) for k in KS}
        extras = {**{f"recall@{k}": v for k, v in recall.items()}, "gallery": sim.shape[1]}
        rows.append(_row(task, name, "recall", ["recall"], [(samples[i], records[i]) for i in idx], recall[1], extras))
    return rows, records


# ---- zero-shot ----
def _zeroshot(model, task: EmbeddingTaskSpec, samples: list[EmbedSample], cfg: EvalConfig) -> tuple[list, list]:
    from ..search.classify import class_embeddings

    images = _embed_images(model, [s.image for s in samples], cfg, f"{task.name}: images")  # [N, D]
    rows, records = [], []
    for name, templates in task.prompts.items():
        classes = class_embeddings(model, task.classes, templates).float().cpu().numpy()  # [C, D]
        predicted = (images @ classes.T).argmax(1)  # [N]: softmax(scale * cos) has the same argmax
        mine = [{"id": f"{name}/{s.id}", "slice": name, "metric": "exact",
                 "question": f"which of {len(task.classes)} classes? ({len(templates)} prompt template(s))",
                 "answers": [s.label], "prediction": task.classes[int(p)], "score": float(task.classes[int(p)] == s.label),
                 "error": None} for s, p in zip(samples, predicted)]
        accuracy = sum(r["score"] for r in mine) / len(mine)
        rows.append(_row(task, name, "exact", ["exact"], list(zip(samples, mine)), accuracy, {"templates": len(templates)}))
        records += mine
    return rows, records


# ---- the task ----
def run_embedding_task(model, task: EmbeddingTaskSpec, samples: list[EmbedSample], task_dir: Path, cfg: EvalConfig) -> dict:
    """Embed, score by slice and check bars; writes predictions.jsonl; -> score_task's shape (with per_sample)."""
    rows, records = (_retrieval if task.kind == RETRIEVAL else _zeroshot)(model, task, samples, cfg)
    rows += missing_rows(task, {r["name"] for r in rows})
    task_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(task_dir / PREDICTIONS_FILE, "".join(json.dumps(r) + "\n" for r in records))
    per_sample = [{"id": r["id"], "slice": r["slice"], "metric": r["metric"], "score": r["score"]} for r in records]
    return {"spec": str(task.spec_path or task.samples), "n": len(samples), "errors": 0, "slices": rows,
            "per_sample": per_sample}
