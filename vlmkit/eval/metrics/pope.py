"""POPE-style yes/no hallucination probes (Li et al., EMNLP 2023).

Reference: AoiDragon/POPE evaluate.py. A free-form answer becomes "no" when its
first sentence (text before the first ".", commas removed, split on single spaces)
contains the word "No", "no" or "not"; anything else is "yes". A label of "no" is
negative and any other label positive (we also strip and lowercase labels).
Reported: accuracy, precision, recall, F1 and the "yes" ratio; where the reference
would divide by zero (no positive predictions, say) we report 0.0.
"""
from __future__ import annotations


def yes_no(text: str) -> str:
    if text.find(".") != -1:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def pope_label(answer: str) -> str:
    return "no" if answer.strip().lower() == "no" else "yes"


def pope_metrics(predictions: list[str], labels: list[str]) -> dict[str, float]:
    pred = [yes_no(p) == "yes" for p in predictions]
    gold = [pope_label(a) == "yes" for a in labels]
    tp = sum(p and g for p, g in zip(pred, gold))
    fp = sum(p and not g for p, g in zip(pred, gold))
    tn = sum(not p and not g for p, g in zip(pred, gold))
    fn = sum(not p and g for p, g in zip(pred, gold))
    n = len(pred)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "accuracy": (tp + tn) / n if n else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "yes_ratio": sum(pred) / n if n else 0.0,
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
    }
