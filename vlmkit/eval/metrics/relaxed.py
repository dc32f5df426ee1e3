"""Relaxed accuracy (ChartQA) and exact match.

Relaxed correctness is pix2struct's `relaxed_correctness` (pix2struct/metrics.py),
which ChartQA evaluations copy: both strings go through `_to_float` (a trailing "%"
divides by 100; otherwise Python's float()). When the prediction parses and the
target parses to a non-zero number, it is correct if |pred - target| / |target| <=
0.05; otherwise (text, or a target of 0) the lowercased strings must be equal.
Over several answers a sample takes the best one.

Exact match has no single reference; ours lowercases, collapses whitespace and drops
trailing periods on both sides ("Red." == "red"), then compares.
"""
from __future__ import annotations


def _to_float(text: str) -> float | None:
    try:
        if text.endswith("%"):
            return float(text.rstrip("%")) / 100.0
        return float(text)
    except ValueError:
        return None


def relaxed_correctness(target: str, prediction: str, max_relative_change: float = 0.05) -> bool:
    pred_f, target_f = _to_float(prediction), _to_float(target)
    if pred_f is not None and target_f:
        return abs(pred_f - target_f) / abs(target_f) <= max_relative_change
    return prediction.lower() == target.lower()


def relaxed_accuracy(prediction: str, answers: list[str]) -> float:
    return float(any(relaxed_correctness(a, prediction) for a in answers))


def normalize_exact(text: str) -> str:
    return " ".join(text.lower().split()).rstrip(".").rstrip()


def exact_match(prediction: str, answers: list[str]) -> float:
    pred = normalize_exact(prediction)
    return float(any(normalize_exact(a) == pred for a in answers))
