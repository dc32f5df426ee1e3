"""Abstention thresholds for a target precision, picked on labelled validation data.

A grid over (min_score, min_margin) at quantiles of the observed values; among the
pairs whose precision on accepted predictions reaches the target, take the one that
accepts the most (highest coverage). If none does, take the most precise pair and
say so. Numbers are measured on the calibration data itself: hold out a separate
folder to know how they generalise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass
class Calibration:
    min_score: float
    min_margin: float
    precision: float  # on accepted predictions
    coverage: float  # fraction accepted (not sent to review)
    reached: bool  # whether the target precision was reached
    target_precision: float
    n: int
    accuracy_no_abstention: float

    def summary(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def top2(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """probs [N, C] -> (argmax [N], top-1 prob [N], top-1 minus top-2 [N])."""
    probs = np.asarray(probs, dtype=np.float64)
    part = np.sort(probs, axis=1)
    score = part[:, -1]
    margin = score - (part[:, -2] if probs.shape[1] > 1 else 0.0)
    return probs.argmax(1), score, margin


def calibrate(probs: np.ndarray, labels: Sequence[int], target_precision: float = 0.9, grid: int = 50) -> Calibration:
    if not 0.0 < target_precision <= 1.0:
        raise ValueError(f"target precision must be in (0, 1], got {target_precision}")
    pred, score, margin = top2(probs)
    correct = pred == np.asarray(labels)
    n = len(correct)
    qs = np.linspace(0, 1, grid + 1)
    s_grid = np.unique(np.concatenate([[0.0], np.quantile(score, qs)]))  # [S]
    m_grid = np.unique(np.concatenate([[0.0], np.quantile(margin, qs)]))  # [M]
    n_acc = np.zeros((len(s_grid), len(m_grid)), dtype=np.int64)
    n_ok = np.zeros_like(n_acc)
    for si, s in enumerate(s_grid):  # one [M, N] slab at a time keeps memory flat for large N
        acc = (score >= s)[None, :] & (margin[None, :] >= m_grid[:, None])  # [M, N]
        n_acc[si] = acc.sum(1)
        n_ok[si] = (acc & correct[None, :]).sum(1)
    precision = np.where(n_acc > 0, n_ok / np.maximum(n_acc, 1), 0.0)
    coverage = n_acc / max(n, 1)
    ok = (precision >= target_precision - 1e-12) & (n_acc > 0)
    reached = bool(ok.any())
    # best coverage among pairs that reach the target; ties -> higher precision, then the lowest thresholds
    key = np.where(ok, coverage, -1.0) if reached else precision
    tie = precision if reached else coverage
    flat = np.lexsort((-tie.ravel(), -key.ravel()))[0]  # lexsort: the last key is primary
    si, mi = np.unravel_index(flat, key.shape)
    return Calibration(
        min_score=float(s_grid[si]), min_margin=float(m_grid[mi]), precision=float(precision[si, mi]), coverage=float(coverage[si, mi]),
        reached=reached, target_precision=float(target_precision), n=int(n), accuracy_no_abstention=float(correct.mean()) if n else 0.0,
    )


def precision_coverage_curve(probs: np.ndarray, labels: Sequence[int], points: int = 101) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sweep min_score alone: -> (thresholds, precision, coverage), for a plot."""
    pred, score, _ = top2(probs)
    correct = pred == np.asarray(labels)
    th = np.linspace(0, 1, points)
    acc = score[None, :] >= th[:, None]
    n_acc = acc.sum(1)
    prec = np.where(n_acc > 0, (acc & correct[None]).sum(1) / np.maximum(n_acc, 1), np.nan)
    return th, prec, n_acc / max(len(correct), 1)


def plot_curve(probs: np.ndarray, labels: Sequence[int], cal: Calibration, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    th, prec, cov = precision_coverage_curve(probs, labels)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot(cov, prec, marker=".", label="min_score sweep (margin 0)")
    ax.scatter([cal.coverage], [cal.precision], color="red", zorder=3, label=f"chosen: score>={cal.min_score:.3f}, margin>={cal.min_margin:.3f}")
    ax.axhline(cal.target_precision, color="gray", ls="--", lw=1, label=f"target precision {cal.target_precision:g}")
    ax.set_xlabel("coverage (fraction not sent to review)")
    ax.set_ylabel("precision of accepted labels")
    ax.set_title(f"abstention calibration, n={cal.n}")
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
