"""Batched, resumable evaluation: predictions saved as they come, then scored by slice against bars.

A run folder holds:
    run.json                what was run (model fingerprint, tasks, settings)
    TASK/predictions.jsonl  one record per sample, appended and fsynced after each batch
    TASK/scores.jsonl       each sample's score (rewritten at scoring time)
    results.json            per task and slice: metric, n, score, extras, bars, pass/fail, and the score of the
                            best constant answer (`prior`: what answering without the image can reach), and
                            `by_kind` where the samples name a finer group ("kind": "relation: left / right")
A resumed run keeps every prediction without an error and runs the rest in the same
batches a fresh run would use, so with the same settings it reproduces a fresh run
exactly. A sample whose inference fails (a broken image, say) is recorded with its
error, scored as a wrong answer, and retried on resume; it does not stop the run.

Embedding tasks (retrieval, zero-shot; embedding.py) run through the same folder,
slices and bars with a dual encoder in place of the VLM; they are recomputed, not
resumed. A run refuses a task its model cannot run before doing any work.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import VlmkitError
from ..files import write_text_atomic
from .metrics import evaluate
from .tasks import DUAL_ENCODER, GENERATE, VLM, Sample, TaskSpec, check_model_kind, load_samples, select

log = logging.getLogger(__name__)

RUN_FILE, RESULTS_FILE = "run.json", "results.json"
PREDICTIONS_FILE, SCORES_FILE = "predictions.jsonl", "scores.jsonl"
PRIOR_CANDIDATES = 20  # a slice's constant-answer baseline tries its 20 most common reference answers
_EPS = 1e-12  # float noise: a mean that should be 0.95 but sums to 0.9499999999999 still meets a bar of 0.95


@dataclass
class EvalConfig:
    limit: int | None = None  # at most this many samples per slice
    batch_size: int = 8
    max_new_tokens: int | None = None  # overrides every task's own
    resume: bool = False
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self):
        if self.batch_size < 1:
            raise VlmkitError("--batch-size must be at least 1")
        if self.limit is not None and self.limit < 1:
            raise VlmkitError("--limit must be at least 1")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise VlmkitError("--max-new-tokens must be at least 1")


# ---- the run folder ----
def model_fingerprint(path: Path | None) -> dict:
    """The model's config and weights, hashed, so a resume cannot mix two models."""
    if path is None:
        return {"path": None, "sha256": None}
    path = Path(path)
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file() and p.suffix in (".json", ".safetensors"))
    for p in files:
        h.update(p.name.encode())
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return {"path": str(path.resolve()), "sha256": h.hexdigest()}


def _manifest(model_info: dict, tasks: list[TaskSpec], cfg: EvalConfig) -> dict:
    return {
        "model": model_info,
        "tasks": {t.name: {"spec": str(t.spec_path or t.samples), **t.fingerprint()} for t in tasks},
        "settings": {"limit": cfg.limit, "batch_size": cfg.batch_size, "max_new_tokens": cfg.max_new_tokens},
    }


def _prepare_run_dir(out: Path, manifest: dict, cfg: EvalConfig, task_names: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    run_file = out / RUN_FILE
    has_predictions = any((out / t / PREDICTIONS_FILE).is_file() for t in task_names)
    if run_file.is_file() and cfg.resume:
        old = json.loads(run_file.read_text())
        for key in ("model", "settings"):
            if old.get(key) != manifest[key]:
                raise VlmkitError(f"--resume: {out} was run with a different {key} ({old.get(key)} vs {manifest[key]}); "
                                  f"use a new --out")
        for name, fp in manifest["tasks"].items():
            if name in old.get("tasks", {}) and old["tasks"][name] != fp:
                raise VlmkitError(f"--resume: task {name!r} changed since {out} was run (samples, prompt or length); use a new --out")
        manifest = {**old, "tasks": {**old.get("tasks", {}), **manifest["tasks"]}}
    elif has_predictions and not cfg.overwrite:
        if cfg.resume:
            raise VlmkitError(f"{out} holds predictions but no {RUN_FILE} to check them against: "
                              f"pass --overwrite to replace them, or --out NEW")
        raise VlmkitError(f"{out} already holds predictions: pass --resume to continue that run, "
                          f"--overwrite to replace it, or --out NEW")
    elif cfg.overwrite:
        for t in task_names:
            for name in (PREDICTIONS_FILE, SCORES_FILE):
                (out / t / name).unlink(missing_ok=True)
    _write_json(run_file, manifest)


def _write_json(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def read_scores(path: Path) -> list[dict]:
    """TASK/scores.jsonl's rows (empty when the task was never scored)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_predictions(path: Path) -> dict[str, dict]:
    """id -> last record; a torn last line (a crash mid-write) is skipped."""
    out: dict[str, dict] = {}
    if not path.is_file():
        return out
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s:%d: skipping an unreadable line", path, lineno)
                continue
            out[rec["id"]] = rec
    return out


# ---- inference ----
def _conversation(task: TaskSpec, s: Sample) -> list[dict]:
    parts = [{"type": "image", "image": str(p)} for p in s.images] + [{"type": "text", "text": task.render(s.question)}]
    return [{"role": "user", "content": parts}]


def _record(s: Sample, prediction: str, error: str | None, finish: str | None, seconds: float) -> dict:
    return {"id": s.id, "slice": s.slice, "metric": s.metric, "question": s.question, "answers": s.answers,
            "prediction": prediction, "error": error, "finish_reason": finish, "seconds": round(seconds, 4)}


def _generate(model, task: TaskSpec, batch: list[Sample], gen_cfg) -> list[dict]:
    t0 = time.perf_counter()
    try:
        outs = model.generate([_conversation(task, s) for s in batch], config=gen_cfg)
    except Exception as e:  # isolate the bad sample: one by one
        if len(batch) > 1:
            return [r for s in batch for r in _generate(model, task, [s], gen_cfg)]
        return [_record(batch[0], "", f"{type(e).__name__}: {e}", None, time.perf_counter() - t0)]
    dt = (time.perf_counter() - t0) / len(batch)
    return [_record(s, o.text.strip(), None, o.finish_reason, dt) for s, o in zip(batch, outs)]


def predict_task(model, task: TaskSpec, samples: list[Sample], task_dir: Path, cfg: EvalConfig) -> list[dict]:
    """One record per sample, in sample order, running only what is not yet saved."""
    from tqdm.auto import tqdm

    from ..generation import GenerationConfig

    task_dir.mkdir(parents=True, exist_ok=True)
    path = task_dir / PREDICTIONS_FILE
    done = {k: r for k, r in read_predictions(path).items() if not r.get("error")} if cfg.resume else {}
    gen_cfg = GenerationConfig(max_new_tokens=cfg.max_new_tokens or task.max_new_tokens, temperature=0.0)
    # Fixed batch boundaries over the full sample list: a resume batches the rest as a fresh run would.
    batches = [samples[i:i + cfg.batch_size] for i in range(0, len(samples), cfg.batch_size)]
    n_done = sum(1 for s in samples if s.id in done)
    with open(path, "a") as f, tqdm(total=len(samples), initial=n_done, desc=task.name, unit="sample",
                                    disable=not cfg.progress, dynamic_ncols=True) as bar:
        for batch in batches:
            pending = [s for s in batch if s.id not in done]
            if not pending:
                continue
            for rec in _generate(model, task, pending, gen_cfg):
                f.write(json.dumps(rec) + "\n")
                done[rec["id"]] = rec
            f.flush()
            os.fsync(f.fileno())
            bar.update(len(pending))
    records = [done[s.id] for s in samples]
    if all(r.get("error") for r in records):
        raise VlmkitError(f"task {task.name!r}: every sample failed; the first error: {records[0]['error']}")
    return records


# ---- scoring ----
def score_task(task: TaskSpec, samples: list[Sample], records: list[dict]) -> dict:
    """One row per slice (in order of appearance), its bars checked.

    A slice whose samples use several metrics (spatial: yes/no and which-shape
    questions, say) scores the mean of its per-sample scores, each by its own
    metric; each metric's own numbers sit in the extras as "METRIC/score",
    "METRIC/n" and "METRIC/<extra>", where bars can name them too.
    """
    by_slice: dict[str, dict[str, list[tuple[Sample, dict]]]] = {}
    for s, r in zip(samples, records):
        by_slice.setdefault(s.slice, {}).setdefault(s.metric, []).append((s, r))
    rows, per_sample = [], []
    for sl, groups in by_slice.items():
        results, scores, prior = {}, {}, {}
        for metric, items in groups.items():
            preds = [r["prediction"] if not r.get("error") else _failed_answer(metric, s.answers) for s, r in items]
            results[metric] = res = evaluate(metric, preds, [s.answers for s, _ in items])
            prior[metric] = constant_baseline(metric, [s.answers for s, _ in items])
            for (s, _), v in zip(items, res.per_sample):
                scores[s.id] = v
                per_sample.append({"id": s.id, "slice": sl, "metric": metric, "score": v})
        if len(results) == 1:
            (metric, res), = results.items()
            score, extras = res.score, res.extras
        else:
            metric = "+".join(results)
            score = sum(scores.values()) / len(scores)
            extras = {}
            for m, res in results.items():
                extras.update({f"{m}/score": res.score, f"{m}/n": len(res.per_sample)})
                extras.update({f"{m}/{k}": v for k, v in res.extras.items()})
        items = [it for g in groups.values() for it in g]
        row = _row(task, sl, metric, list(results), items, score, extras)
        row["prior"] = sum(prior[m][0] * len(g) for m, g in groups.items()) / len(items)  # per-sample mean, as the score
        row["prior_answers"] = {m: a for m, (_, a) in prior.items()}
        by_kind: dict[str, list[tuple[str, float]]] = {}
        for s, _ in items:  # a slice's finer groups ("relation: left / right"), where the samples name them
            if s.kind:
                by_kind.setdefault(s.kind, []).append((s.metric, scores[s.id]))
        if by_kind:
            row["by_kind"] = {k: {"n": len(v), "score": sum(x for _, x in v) / len(v),
                                  "metric": "+".join(dict.fromkeys(m for m, _ in v))} for k, v in sorted(by_kind.items())}
        rows.append(row)
    rows += missing_rows(task, set(by_slice))
    return {"spec": str(task.spec_path or task.samples), "n": len(samples), "errors": sum(1 for r in records if r.get("error")),
            "slices": rows, "per_sample": per_sample}


def constant_baseline(metric: str, references: list[list[str]]) -> tuple[float, str]:
    """(score, answer): the best that one fixed answer scores on these references, trying their most common first
    answers. A model that ignores the image can reach it from its answer prior alone ("1" to every counting
    question, "yes" to every yes/no), so a slice's score means little until it beats this."""
    best = (0.0, "")
    for answer, _ in Counter(r[0] for r in references if r).most_common(PRIOR_CANDIDATES):
        score = evaluate(metric, [answer] * len(references), references).score
        if score > best[0]:
            best = (score, answer)
    return best


def missing_rows(task, present: set[str]) -> list[dict]:
    """A row for each slice that has a bar but no samples: a required slice cannot pass by being absent."""
    return [{"name": sl, "slice": sl, "metric": None, "metrics": [], "n": 0, "errors": 0, "score": None,
             "extras": {}, "bars": bars, "checks": [], "status": "missing", "prior": None, "prior_answers": {}}
            for sl, bars in task.pass_bars.items() if sl not in present]


def _failed_answer(metric: str, answers: list[str]) -> str:
    """What a sample whose inference failed is scored as: a wrong answer."""
    if metric == "yesno":  # POPE reads "" as "yes", which would be right half the time
        return "yes" if answers[0].strip().lower() == "no" else "no"
    return ""


def _row(task: TaskSpec, sl: str, metric: str, metrics: list[str], items, score: float, extras: dict) -> dict:
    bars = task.pass_bars.get(sl, {})
    checks = []
    for key, minimum in bars.items():
        value = score if key == "score" else extras.get(key)
        checks.append({"key": key, "value": value, "min": minimum, "passed": value is not None and value >= minimum - _EPS})
    status = "none" if not checks else ("pass" if all(c["passed"] for c in checks) else "fail")
    return {"name": sl, "slice": sl, "metric": metric, "metrics": metrics, "n": len(items),
            "errors": sum(1 for _, r in items if r.get("error")), "score": score, "extras": extras, "bars": bars,
            "checks": checks, "status": status}


def failures(results: dict) -> list[str]:
    out = []
    for tname, t in results["tasks"].items():
        for row in t["slices"]:
            if row["status"] == "missing":
                out.append(f"{tname}/{row['name']}: required slice has no samples")
            elif row["status"] == "fail":
                bad = [c for c in row["checks"] if not c["passed"]]
                out.append(f"{tname}/{row['name']}: " + ", ".join(
                    f"{c['key']} {'missing' if c['value'] is None else format(c['value'], '.4f')} < {c['min']:g}" for c in bad))
    return out


# ---- the whole run ----
def model_kind(model) -> str:
    """A dual encoder embeds text (and images); anything else is asked to generate."""
    return DUAL_ENCODER if callable(getattr(model, "encode_text", None)) else VLM


def _run_task(model, task, task_dir: Path, cfg: EvalConfig) -> dict:
    """score_task's result (with per_sample) for one task of either kind."""
    if task.kind != GENERATE:
        from .embedding import load_embedding_samples, run_embedding_task

        return run_embedding_task(model, task, select(load_embedding_samples(task), cfg.limit), task_dir, cfg)
    samples = select(load_samples(task), cfg.limit)
    return score_task(task, samples, predict_task(model, task, samples, task_dir, cfg))


def run_eval(model, tasks: list[TaskSpec], out_dir: str | Path, cfg: EvalConfig | None = None, model_path: Path | None = None) -> dict:
    """Predict, score and check bars for each task; writes the run folder and returns results.json's content."""
    cfg = cfg or EvalConfig()
    out = Path(out_dir)
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise VlmkitError(f"two tasks share a name: {names}")
    check_model_kind({t.name: t.model_kind for t in tasks}, model_kind(model))
    model_info = model_fingerprint(model_path if model_path is not None else getattr(model, "path", None))
    _prepare_run_dir(out, _manifest(model_info, tasks, cfg), cfg, names)
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    results = {"model": model_info, "started": started, "settings": asdict(cfg), "tasks": {}}
    for task in tasks:
        scored = _run_task(model, task, out / task.name, cfg)
        per_sample = scored.pop("per_sample")
        write_text_atomic(out / task.name / SCORES_FILE, "".join(json.dumps(r) + "\n" for r in per_sample))
        results["tasks"][task.name] = scored
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    results["failures"] = failures(results)
    results["passed"] = not results["failures"]
    _write_json(out / RESULTS_FILE, results)
    return results
