"""vlmkit eval --model DIR --tasks a,b,c [...]   and   vlmkit eval-compare RUN_A RUN_B

Exit status of `eval`: 0 when every required slice passes its bar, 1 when one fails
(the launch check CI wires in), 2 on a usage or data error.
"""
from __future__ import annotations

import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a model on tasks, by slice, against pass bars")
    p.add_argument("--model", default=None, help="model directory (default: the bundled vlmkit model)")
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
    from ..eval.tasks import registered_tasks, resolve

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
    tasks = [resolve(name.strip()) for name in args.tasks.split(",") if name.strip()]  # fail fast, before the model loads
    from ..api import load

    model = load(args.model)
    out = Path(args.out) if args.out else Path("runs") / "eval" / (model.path.name if model.path else "model")
    results = run_eval(model, tasks, out, cfg)
    report = write_report(out, results, charts=not args.no_charts)
    rows = [(tname, r) for tname, t in results["tasks"].items() for r in t["slices"]]
    wt, ws, wm = (max(len(x) for x in col) for col in zip(*[(t, r["name"], r["metric"] or "-") for t, r in rows]))
    for tname, r in rows:
        score = "missing" if r["score"] is None else f"{r['score']:.4f}"
        status = {"pass": "PASS", "fail": "FAIL", "missing": "FAIL"}.get(r["status"], "")
        print(f"{tname:{wt}s}  {r['name']:{ws}s}  {r['metric'] or '-':{wm}s}  n={r['n']:<6d} {score:>9s}  {status}")
    print(f"report: {report}")
    if not results["passed"]:
        for f in results["failures"]:
            print(f"FAIL {f}", file=sys.stderr)
        return 1
    return 0


def run_compare(args) -> int:
    from ..eval.report import compare_runs, comparison_markdown, write_comparison

    rows = compare_runs(args.run_a, args.run_b)
    print(comparison_markdown(rows, Path(args.run_a).name, Path(args.run_b).name))
    if args.out:
        print(f"written: {write_comparison(args.run_a, args.run_b, args.out)}")
    return 0
