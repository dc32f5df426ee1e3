"""PNG charts for evaluation reports (matplotlib, Agg backend, imported only when drawing)."""
from __future__ import annotations

from pathlib import Path

COLOURS = {"pass": "#2e7d32", "fail": "#c62828", "none": "#78909c", "missing": "#ef9a9a"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def slice_chart(title: str, rows: list[dict], path: Path) -> Path:
    """One horizontal bar per slice, coloured by status, with its bar drawn as a black tick."""
    plt = _plt()
    names = [f"{r['name']} ({r['metric'] or '-'}, n={r['n']})" for r in rows]
    scores = [r["score"] or 0.0 for r in rows]
    top = max([1.0] + [s * 1.1 for s in scores] + [r["bars"].get("score", 0) * 1.1 for r in rows])
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(rows) + 1.4))
    y = list(range(len(rows)))[::-1]
    ax.barh(y, scores, color=[COLOURS[r["status"]] for r in rows], height=0.6)
    for yi, r, s in zip(y, rows, scores):
        if "score" in r["bars"]:
            ax.plot([r["bars"]["score"]] * 2, [yi - 0.4, yi + 0.4], color="black", linewidth=2.5)
        label = "missing" if r["status"] == "missing" else f"{s:.3f}"
        ax.text(min(s, top) + top * 0.01, yi, label, va="center", fontsize=8)
    ax.set_yticks(y)
    ax.set_yticklabels(names, fontsize=8)
    ax.set_xlim(0, top * 1.12)
    ax.set_xlabel("score (black tick: pass bar; green pass, red fail, grey no bar)")
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def confusion_chart(title: str, truth: list[str], predicted: list[str], classes: list[str], path: Path) -> Path:
    """Rows: true label; columns: predicted label, plus "(other)" for answers outside the label set."""
    import numpy as np

    plt = _plt()
    cols = classes + (["(other)"] if any(p not in classes for p in predicted) else [])
    idx = {c: i for i, c in enumerate(cols)}
    m = np.zeros((len(classes), len(cols)), dtype=int)
    for t, p in zip(truth, predicted):
        m[classes.index(t), idx.get(p, len(cols) - 1)] += 1
    row_frac = m / np.maximum(m.sum(1, keepdims=True), 1)
    side = 0.45 * max(len(cols), 4) + 2
    fig, ax = plt.subplots(figsize=(side, 0.45 * max(len(classes), 4) + 1.8))
    ax.imshow(row_frac, cmap="Blues", vmin=0, vmax=1)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            if m[i, j]:
                ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if row_frac[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels(cols, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)))
    ax.set_yticklabels(classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def compare_chart(rows: list[dict], label_a: str, label_b: str, path: Path) -> Path:
    """Grouped bars per task/slice: run A against run B."""
    plt = _plt()
    names = [f"{r['task']}/{r['slice']}" for r in rows]
    a = [r["a"] or 0.0 for r in rows]
    b = [r["b"] or 0.0 for r in rows]
    y = list(range(len(rows)))[::-1]
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(rows) + 1.4))
    ax.barh([v + 0.18 for v in y], a, height=0.36, label=label_a, color="#90a4ae")
    ax.barh([v - 0.18 for v in y], b, height=0.36, label=label_b, color="#1565c0")
    for yi, r in zip(y, rows):
        if r.get("bar") is not None:
            ax.plot([r["bar"]] * 2, [yi - 0.45, yi + 0.45], color="black", linewidth=2)
    ax.set_yticks(y)
    ax.set_yticklabels(names, fontsize=8)
    ax.set_xlim(0, max([1.0] + [v * 1.1 for v in a + b]))
    ax.set_xlabel("score (black tick: pass bar)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
