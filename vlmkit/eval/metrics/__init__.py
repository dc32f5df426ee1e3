"""Metrics, each equal to its reference implementation (named in its module's docstring).

Every metric has the same shape: `METRICS[name](predictions, references) -> MetricResult`,
where `references[i]` is sample i's list of answers. `score` is the slice's headline
(what pass bars compare against), `per_sample` one number per sample (to find the
failures), and `extras` the rest (precision, recall, BLEU, mean IoU, per-field F1).

| name     | headline                      | reference                                  |
|----------|-------------------------------|--------------------------------------------|
| vqa      | VQAv2 accuracy                | GT-Vision-Lab/VQA vqaEval.py               |
| exact    | exact match (normalised)      | ours (relaxed.py)                          |
| anls     | ANLS, threshold 0.5           | RRC DocVQA script                          |
| relaxed  | ChartQA relaxed accuracy      | pix2struct relaxed_correctness             |
| iou      | accuracy at IoU >= 0.5        | ours (boxes.py); extras: mean_iou, boxed, centre/size r per axis |
| cider    | CIDEr-D                       | pycocoevalcap CiderScorer; extras: BLEU-1..4 |
| json_f1  | field-level micro F1          | ours (fields.py); extras: per field, items |
| yesno    | POPE accuracy                 | AoiDragon/POPE evaluate.py; extras: P/R/F1/yes ratio |
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from . import anls as _anls
from . import bleu as _bleu
from . import boxes as _boxes
from . import cider as _cider
from . import fields as _fields
from . import pope as _pope
from . import relaxed as _relaxed
from . import vqa as _vqa


@dataclass
class MetricResult:
    score: float
    per_sample: list[float]
    extras: dict[str, float] = field(default_factory=dict)  # counts (tp, fp, ...) stay ints


Metric = Callable[[list[str], list[list[str]]], MetricResult]


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def _per_sample(fn) -> Metric:
    def metric(predictions: list[str], references: list[list[str]]) -> MetricResult:
        scores = [float(fn(p, refs)) for p, refs in zip(predictions, references)]
        return MetricResult(_mean(scores), scores)

    return metric


def _iou(predictions, references) -> MetricResult:
    ious = [_boxes.box_iou(p, refs) for p, refs in zip(predictions, references)]
    hits = [float(x >= 0.5) for x in ious]
    return MetricResult(_mean(hits), hits, {"mean_iou": _mean(ious), **_boxes.placement(predictions, references)})


def _cider_metric(predictions, references) -> MetricResult:
    cands = [_cider.tokenize_caption(p) for p in predictions]
    refs = [[_cider.tokenize_caption(r) for r in rs] for rs in references]
    score, per = _cider.cider_d(cands, refs)
    corpus_bleu, _ = _bleu.bleu(cands, refs)
    return MetricResult(score, per, {f"bleu_{k + 1}": b for k, b in enumerate(corpus_bleu)})


def _yesno(predictions, references) -> MetricResult:
    labels = [refs[0] for refs in references]
    stats = _pope.pope_metrics(predictions, labels)
    per = [float(_pope.yes_no(p) == _pope.pope_label(l)) for p, l in zip(predictions, labels)]
    return MetricResult(stats["accuracy"], per, {k: v for k, v in stats.items() if k != "accuracy"})


def _json_f1(predictions, references) -> MetricResult:
    total = _fields.FieldCounts()
    per = []
    for p, refs in zip(predictions, references):
        c = _fields.field_f1(p, refs)
        total.add(c)
        per.append(_fields.prf(*c.totals())[2])
    precision, recall, f1 = _fields.prf(*total.totals())
    extras = {"precision": precision, "recall": recall}
    for path, counts in sorted(total.fields.items()):
        extras[f"f1/{path}"] = _fields.prf(*counts)[2]
    for path, counts in sorted(total.items.items()):
        extras[f"item_f1/{path}"] = _fields.prf(*counts)[2]
    return MetricResult(f1, per, extras)


METRICS: dict[str, Metric] = {
    "vqa": _per_sample(_vqa.vqa_accuracy),
    "exact": _per_sample(_relaxed.exact_match),
    "anls": _per_sample(_anls.anls),
    "relaxed": _per_sample(_relaxed.relaxed_accuracy),
    "iou": _iou,
    "cider": _cider_metric,
    "json_f1": _json_f1,
    "yesno": _yesno,
}

# Answers are one label per sample here, so a confusion matrix means something.
CLASSIFICATION_METRICS = ("exact", "vqa", "yesno")


def evaluate(metric: str, predictions: list[str], references: list[list[str]]) -> MetricResult:
    if metric not in METRICS:
        raise KeyError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    return METRICS[metric](predictions, references)
