"""Curves of a run from its metrics.jsonl: loss.png, lr.png and (when evaluated) eval.png."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import VlmkitError


def read_metrics(path: Path) -> tuple[list[dict], list[dict]]:
    """-> (training records, evaluation records); a half-written last line is ignored."""
    train, evals = [], []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        (evals if any(k.startswith("eval/") for k in rec) else train).append(rec)
    return train, evals


def moving_mean(values: list[float], k: int) -> list[float]:
    """Each value averaged with the up to k - 1 before it (the first points average fewer)."""
    return [sum(values[max(0, i - k + 1):i + 1]) / len(values[max(0, i - k + 1):i + 1]) for i in range(len(values))]


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise VlmkitError(f"no metrics.jsonl in {run_dir} (is it a training run directory?)")
    train, evals = read_metrics(path)
    if not train:
        raise VlmkitError(f"{path} holds no training steps yet")
    out = Path(out_dir) if out_dir else run_dir
    out.mkdir(parents=True, exist_ok=True)
    steps = [r["step"] for r in train]
    written = []

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [r["loss"] for r in train], lw=1, alpha=0.5, label="loss")
    if len(train) >= 10:
        k = max(2, len(train) // 20)
        smooth = moving_mean([r["loss"] for r in train], k)
        ax.plot(steps, smooth, lw=2, label=f"loss (mean of {k})")
    ax.set(xlabel="step", ylabel="loss", title=f"{run_dir.name}: training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    written.append(_save(fig, out / "loss.png"))

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for key in sorted({k for r in train for k in r if k.startswith("lr/")}):
        ax.plot(steps, [r.get(key, float("nan")) for r in train], label=key[3:])
    ax.set(xlabel="step", ylabel="learning rate", title=f"{run_dir.name}: learning rate per param group")
    ax.grid(alpha=0.3)
    ax.legend()
    written.append(_save(fig, out / "lr.png"))

    keys = sorted({k for r in evals for k, v in r.items() if k.startswith("eval/") and k != "eval/n" and k != "eval/classes"
                   and isinstance(v, (int, float))})
    if keys:
        fig, ax = plt.subplots(figsize=(7, 4))
        for key in keys:
            pts = [(r["step"], r[key]) for r in evals if key in r]
            ax.plot(*zip(*pts), marker="o", label=key[5:])
        ax.set(xlabel="step", ylabel="score", title=f"{run_dir.name}: evaluation", ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        ax.legend()
        written.append(_save(fig, out / "eval.png"))
    return written


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
