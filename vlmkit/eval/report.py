"""Reports from a run folder: report.md (with PNG charts) beside results.json, and run comparison.

Everything here reads the run folder only, so a report can be redrawn, or two runs
compared, without the models.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from ..errors import VlmkitError
from ..files import write_text_atomic
from .harness import PREDICTIONS_FILE, RESULTS_FILE, SCORES_FILE, read_predictions, read_scores
from .metrics import CLASSIFICATION_METRICS
from .metrics.pope import pope_label, yes_no
from .metrics.relaxed import normalize_exact
from .metrics.vqa import normalize_answer

REPORT_FILE, CHARTS_DIR = "report.md", "charts"
MAX_CLASSES = 20  # beyond this a confusion matrix stops being readable
N_FAILURES = 5


def load_results(run_dir: str | Path) -> dict:
    path = Path(run_dir) / RESULTS_FILE
    if not path.is_file():
        raise VlmkitError(f"{run_dir} is not an evaluation run folder (no {RESULTS_FILE})")
    return json.loads(path.read_text())


def _cell(text, width: int = 80) -> str:
    s = " ".join(str(text).split()).replace("|", "\\|")
    return s if len(s) <= width else s[: width - 1] + "…"


def _fmt(v) -> str:
    return "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))


def _prior_text(row: dict) -> str:
    """The slice's constant-answer baseline and the answer(s) that reach it (results.json from before it existed: -)."""
    if row.get("prior") is None:
        return "-"
    answers = "; ".join(_cell(a, 24) for a in row.get("prior_answers", {}).values())
    return f"{row['prior']:.4f} ({answers})"


def _bar_text(bars: dict) -> str:
    return ", ".join(f"{k} ≥ {v:g}" if k != "score" else f"≥ {v:g}" for k, v in bars.items()) or "-"


# ---- labels for confusion matrices ----
def _label_fn(metric: str):
    return {"yesno": (yes_no, pope_label), "vqa": (normalize_answer, normalize_answer)}.get(metric, (normalize_exact, normalize_exact))


def confusion_data(records: list[dict], metric: str) -> tuple[list[str], list[str], list[str]] | None:
    """(truth, predicted, classes) when the slice is classification-like, else None."""
    if metric not in CLASSIFICATION_METRICS or not records:
        return None
    pred_fn, gold_fn = _label_fn(metric)
    truth = [Counter(gold_fn(a) for a in r["answers"]).most_common(1)[0][0] for r in records]
    classes = sorted(set(truth))
    if not 2 <= len(classes) <= MAX_CLASSES:
        return None
    predicted = [pred_fn(r["prediction"]) if not r.get("error") else "(error)" for r in records]
    return truth, predicted, classes


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


def write_report(run_dir: str | Path, results: dict | None = None, charts: bool = True) -> Path:
    """report.md plus charts/*.png; returns the report's path."""
    from . import charts as ch

    run_dir = Path(run_dir)
    results = results or load_results(run_dir)
    model = results.get("model", {}).get("path") or "(in-memory model)"
    verdict = "PASS" if results.get("passed") else f"FAIL ({len(results.get('failures', []))} required slice(s) failed)"
    lines = [f"# Evaluation: {Path(model).name}", "", f"- model: `{model}`",
             f"- run: {results.get('started')} → {results.get('finished')}",
             f"- settings: {json.dumps({k: v for k, v in results.get('settings', {}).items() if k in ('limit', 'batch_size', 'max_new_tokens')})}",
             f"- verdict: **{verdict}**", ""]
    for f in results.get("failures", []):
        lines.append(f"  - {f}")
    for tname, t in results["tasks"].items():
        rows = t["slices"]
        lines += ["", f"## {tname}", "", f"{t['n']} samples, {t['errors']} inference errors. Spec: `{t['spec']}`", "",
                  "| slice | metric | n | score | best constant answer | bar | status |", "|---|---|---:|---:|---|---|---|"]
        for r in rows:
            lines.append(f"| {_cell(r['name'])} | {r['metric'] or '-'} | {r['n']} | {_fmt(r['score'])} | {_prior_text(r)} | "
                         f"{_bar_text(r['bars'])} | {r['status'].upper() if r['status'] in ('pass', 'fail', 'missing') else '-'} |")
        extras = [r for r in rows if r["extras"]]
        if extras:
            lines += ["", "Other numbers:", ""]
            for r in extras:
                shown = ", ".join(f"{k} {_fmt(v)}" for k, v in list(r["extras"].items())[:16])
                lines.append(f"- {_cell(r['name'])}: {shown}")
        kinds = [r for r in rows if r.get("by_kind")]
        if kinds:
            lines += ["", "By kind of question:", "", "| slice | kind | metric | n | score |", "|---|---|---|---:|---:|"]
            lines += [f"| {_cell(r['name'])} | {_cell(k)} | {v.get('metric') or '-'} | {v['n']} | {_fmt(v['score'])} |"
                      for r in kinds for k, v in r["by_kind"].items()]
            if charts:  # the kinds as bars, in the slice chart's form (no bars of their own: grey)
                kind_rows = [{"name": f"{r['name']} [{k}]", "metric": v.get("metric"), "n": v["n"], "score": v["score"],
                              "bars": {}, "status": "none"} for r in kinds for k, v in r["by_kind"].items()]
                png = ch.slice_chart(f"{tname}: score by kind of question", kind_rows,
                                     run_dir / CHARTS_DIR / f"{_slug(tname)}-kinds.png")
                lines += ["", f"![{tname} kinds]({png.relative_to(run_dir)})"]
        if charts and rows:
            png = ch.slice_chart(f"{tname}: score by slice", rows, run_dir / CHARTS_DIR / f"{_slug(tname)}-slices.png")
            lines += ["", f"![{tname} slices]({png.relative_to(run_dir)})"]
        preds = read_predictions(run_dir / tname / PREDICTIONS_FILE)
        scores = read_scores(run_dir / tname / SCORES_FILE)
        for r in rows:
            if not r["metric"]:
                continue
            mine = [s for s in scores if s["slice"] == r["slice"] and s["id"] in preds]
            for metric in r["metrics"] if charts else []:
                data = confusion_data([preds[s["id"]] for s in mine if s["metric"] == metric], metric)
                if data:
                    title = r["name"] if len(r["metrics"]) == 1 else f"{r['name']}-{metric}"
                    png = ch.confusion_chart(f"{tname} / {title}", *data,
                                             run_dir / CHARTS_DIR / f"{_slug(tname)}-{_slug(title)}-confusion.png")
                    lines += ["", f"![{title} confusion]({png.relative_to(run_dir)})"]
            worst = sorted((s for s in mine if s["score"] < 1.0), key=lambda s: s["score"])[:N_FAILURES]
            if worst:
                lines += ["", f"### {tname} / {_cell(r['name'])}: lowest scores", "",
                          "| id | score | question | answers | prediction |", "|---|---:|---|---|---|"]
                for s in worst:
                    p = preds[s["id"]]
                    shown = f"ERROR {p['error']}" if p.get("error") else p["prediction"]
                    lines.append(f"| {_cell(s['id'], 40)} | {s['score']:.3f} | {_cell(p['question'])} | "
                                 f"{_cell(' / '.join(p['answers'][:3]), 60)} | {_cell(shown)} |")
    path = run_dir / REPORT_FILE
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path


# ---- comparison ----
def compare_runs(run_a: str | Path, run_b: str | Path) -> list[dict]:
    """One row per task/slice present in either run: A, B, B - A, the bar, and each status."""
    a, b = load_results(run_a), load_results(run_b)
    rows = []
    for tname in list(a["tasks"]) + [t for t in b["tasks"] if t not in a["tasks"]]:
        sa = {r["name"]: r for r in a["tasks"].get(tname, {}).get("slices", [])}
        sb = {r["name"]: r for r in b["tasks"].get(tname, {}).get("slices", [])}
        for name in list(sa) + [n for n in sb if n not in sa]:
            ra, rb = sa.get(name), sb.get(name)
            va = ra["score"] if ra else None
            vb = rb["score"] if rb else None
            bars = (rb or ra)["bars"]
            rows.append({"task": tname, "slice": name, "metric": (rb or ra)["metric"], "a": va, "b": vb,
                         "delta": None if va is None or vb is None else vb - va, "bar": bars.get("score"),
                         "status_a": ra["status"] if ra else "absent", "status_b": rb["status"] if rb else "absent",
                         "n_a": ra["n"] if ra else 0, "n_b": rb["n"] if rb else 0})
            rows += _kind_rows(tname, name, (ra or {}).get("by_kind", {}), (rb or {}).get("by_kind", {}))
    return rows


def _kind_rows(task: str, slice_name: str, ka: dict, kb: dict) -> list[dict]:
    """A row per kind of question either run scored in this slice ("spatial [relation: left / right]"); no bars."""
    rows = []
    for kind in list(ka) + [k for k in kb if k not in ka]:
        a, b = ka.get(kind, {}), kb.get(kind, {})
        va, vb = a.get("score"), b.get("score")
        rows.append({"task": task, "slice": f"{slice_name} [{kind}]", "metric": (b or a).get("metric"), "a": va, "b": vb,
                     "delta": None if va is None or vb is None else vb - va, "bar": None,
                     "status_a": "none" if a else "absent", "status_b": "none" if b else "absent",
                     "n_a": a.get("n", 0), "n_b": b.get("n", 0)})
    return rows


def comparison_markdown(rows: list[dict], label_a: str, label_b: str) -> str:
    lines = [f"| task | slice | metric | A: {_cell(label_a, 30)} | B: {_cell(label_b, 30)} | B − A | bar | A | B |",
             "|---|---|---|---:|---:|---:|---|---|---|"]
    for r in rows:
        delta = "-" if r["delta"] is None else f"{r['delta']:+.4f}"
        lines.append(f"| {r['task']} | {_cell(r['slice'])} | {r['metric'] or '-'} | {_fmt(r['a'])} | {_fmt(r['b'])} | {delta} | "
                     f"{'-' if r['bar'] is None else format(r['bar'], 'g')} | {r['status_a']} | {r['status_b']} |")
    return "\n".join(lines)


def write_comparison(run_a: str | Path, run_b: str | Path, out_dir: str | Path) -> Path:
    from .charts import compare_chart

    rows = compare_runs(run_a, run_b)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    label_a, label_b = Path(run_a).name, Path(run_b).name
    png = compare_chart(rows, label_a, label_b, out / "compare.png")
    write_text_atomic(out / "compare.json", json.dumps({"a": str(run_a), "b": str(run_b), "rows": rows}, indent=2) + "\n")
    md = [f"# {label_a} (A) against {label_b} (B)", "", comparison_markdown(rows, label_a, label_b), "", f"![comparison]({png.name})", ""]
    path = out / "compare.md"
    write_text_atomic(path, "\n".join(md))
    return path
