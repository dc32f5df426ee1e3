"""vlmkit eval --model DIR --tasks a,b,c [...]   and   vlmkit eval-compare RUN_A RUN_B

DIR is a generative VLM (tasks such as easy-vqa, visual-world) or a dual encoder (retrieval,
zeroshot-fmnist); the run refuses a task its model cannot run before building or loading anything.

Exit status of `eval`: 0 when every required slice passes its bar, 1 when one fails
(the launch check CI wires in), 2 on a usage or data error.
"""
from __future__ import annotations

import sys
from pathlib import Path

RECALL_SHOWN = ("recall@5", "recall@10")


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a model on tasks, by slice, against pass bars")
    p.add_argument("--model", default=None, help="model directory, a VLM or a dual encoder (default: the bundled VLM, "
                   "or the default dual encoder when every task is an embedding task)")
    p.add_argument("--tasks", default=None, help="comma-separated task names or spec paths (see --list-tasks)")
    p.add_argument("--limit", type=int, default=None, help="at most N samples per slice")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=None, help="override each task's own")
    p.add_argument("--out", default=None, help="run folder (default: runs/eval/<model name>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out, keeping its predictions")
    p.add_argument("--overwrite", action="store_true", help="replace the predictions already in --out")
    p.add_argument("--no-charts", action="store_true", help="skip the PNG charts")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--list-tasks", action="store_true", help="list the registered tasks and exit")
    p.set_defaults(func=run)

    c = sub.add_parser("eval-compare", help="compare two evaluation runs slice by slice")
    c.add_argument("run_a", metavar="RUN_A")
    c.add_argument("run_b", metavar="RUN_B")
    c.add_argument("--out", default=None, help="also write compare.md, compare.json and compare.png here")
    c.set_defaults(func=run_compare)


def run(args) -> int:
    from ..errors import VlmkitError
    from ..eval.tasks import check_model_kind, registered_model_kind, registered_tasks, resolve

    if args.list_tasks:
        for name, desc in registered_tasks().items():
            print(f"{name:16s} {desc}")
        return 0
    if not args.tasks:
        raise VlmkitError("give --tasks (names or spec paths, comma-separated); --list-tasks shows the built-ins")
    from ..eval.harness import EvalConfig, run_eval
    from ..eval.report import write_report

    cfg = EvalConfig(limit=args.limit, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                     resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    names = [name.strip() for name in args.tasks.split(",") if name.strip()]
    model_dir, kind = _model_dir(args.model, names)
    model_name = str(model_dir) if model_dir else "the default VLM"
    # a registered task says what it needs before its data is built; a spec path says so once read
    check_model_kind({n: k for n in names if (k := registered_model_kind(n))}, kind, model_name)
    tasks = [resolve(name, progress=not args.no_progress) for name in names]  # fail fast, before the model loads
    check_model_kind({t.name: t.model_kind for t in tasks}, kind, model_name)
    model = _load(model_dir, kind)
    model_dir = model_dir or getattr(model, "path", None)
    out = Path(args.out) if args.out else Path("runs") / "eval" / (model_dir.name if model_dir else "model")
    results = run_eval(model, tasks, out, cfg, model_path=model_dir)
    report = write_report(out, results, charts=not args.no_charts)
    rows = [(tname, r) for tname, t in results["tasks"].items() for r in t["slices"]]
    wt, ws, wm = (max(len(x) for x in col) for col in zip(*[(t, r["name"], r["metric"] or "-") for t, r in rows]))
    for tname, r in rows:
        score = "missing" if r["score"] is None else f"{r['score']:.4f}"
        status = {"pass": "PASS", "fail": "FAIL", "missing": "FAIL"}.get(r["status"], "")
        more = "".join(f"  {k} {r['extras'][k]:.4f}" for k in RECALL_SHOWN if k in r["extras"])  # the headline is recall@1
        print(f"{tname:{wt}s}  {r['name']:{ws}s}  {r['metric'] or '-':{wm}s}  n={r['n']:<6d} {score:>9s}  {status}{more}")
    print(f"report: {report}")
    if not results["passed"]:
        for f in results["failures"]:
            print(f"FAIL {f}", file=sys.stderr)
        return 1
    return 0


def _model_dir(arg: str | None, names: list[str]) -> tuple[Path | None, str]:
    """The model directory and the kind of model in it. With no --model: the default dual encoder when every
    task needs one, else None (the default VLM)."""
    from ..errors import VlmkitError
    from ..eval.tasks import DUAL_ENCODER, VLM, registered_model_kind
    from ..models.dual_encoder import default_dual_encoder_dir, is_dual_encoder_dir

    if arg:
        path = Path(arg)
        if not path.exists():
            raise VlmkitError(f"model directory not found: {path}")
        return path, DUAL_ENCODER if is_dual_encoder_dir(path) else VLM
    if names and all(registered_model_kind(n) == DUAL_ENCODER for n in names):
        return default_dual_encoder_dir(), DUAL_ENCODER
    return None, VLM


def _load(model_dir: Path | None, kind: str):
    from ..eval.tasks import DUAL_ENCODER

    if kind == DUAL_ENCODER:
        from ..models.dual_encoder import load_dual_encoder

        return load_dual_encoder(model_dir)
    from ..api import load

    return load(model_dir)


def run_compare(args) -> int:
    from ..eval.report import compare_runs, comparison_markdown, write_comparison

    rows = compare_runs(args.run_a, args.run_b)
    print(comparison_markdown(rows, Path(args.run_a).name, Path(args.run_b).name))
    if args.out:
        print(f"written: {write_comparison(args.run_a, args.run_b, args.out)}")
    return 0
