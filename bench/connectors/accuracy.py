"""Connector accuracy after the same training budget: same tower, same LM, same data, same steps.

Every connector of run.py (and the Flamingo fusion mode) is built as run.py builds it, at 112 px, then
trained through the real entry point (vlmkit.train.loop.train) with stage "align": the trained
vlmkit-clip ViT (model.vision_init) and SmolLM2-135M-Instruct stay frozen, only the connector (plus
the gated cross-attention blocks and image marker for flamingo) learns. All share one recipe: the
same generated data (shapes + text at 112 px, the same order: seed 0), steps, batch, learning rate
and schedule. Each is then scored by the evaluation harness (vlmkit.eval.harness.run_eval, what
`vlmkit eval` runs) on held-out test splits, per slice:
  fine detail   counting (how many shapes), reading (small words; at 112 px the letters are 8-22 px)
  coarse        colour (which colour is the named shape)
  also          spatial (left/right, top/bottom), grounding (box at IoU >= 0.5)

    .venv/bin/python bench/connectors/accuracy.py                  # 300 steps x 16, 100 questions per slice
    .venv/bin/python bench/connectors/accuracy.py --decoder small  # the CPU-sized proxy (below)
    .venv/bin/python bench/connectors/accuracy.py --steps 2 --batch-size 2 --n-train 16 --n-test 8 \
        --connectors linear,qformer --out /tmp/acc --md /tmp/acc/results.md        # a smoke run

--decoder small: SmolLM2 in the loop costs ~1 s per sample on a CPU core (hours per connector at the
default budget), so the proxy replaces it with a fresh 4-layer, 256-wide decoder of SmolLM2's family
and tokenizer (vlmkit.train.stages.small_lm) that trains together with the connector (stage instruct,
the tower still frozen). Every row still shares tower, decoder init, data and budget; what it ranks is
how much each connector passes on from the tower, not how well SmolLM2 reads it.

The linear, mlp2x_gelu and pixel_shuffle rows get `pre_norm` (a LayerNorm per tower token): the
resamplers normalise their input inside, and without it the projections see vlmkit's ViT residual
stream at its raw scale (see EXPERIMENTS.md, sessions 2 and 3).

Writes OUT/results.json and OUT/plot.png, and merges the section "Accuracy after the same training
budget" into --md (bench/connectors/results.md). Data, initial weights, runs and eval folders go to
--work (outside the repository). One process per connector, as run.py does per resolution.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
KINDS = ("linear", "mlp2x_gelu", "pixel_shuffle", "qformer", "perceiver", "cabstractor", "flamingo")
SIZE = 112  # the resolution vlmkit-clip's tower was trained at: no position-grid resampling
SOURCES = ("shapes", "text")
FINE, COARSE = ("counting", "reading"), ("colour",)
SLICES = ("counting", "reading", "colour", "spatial", "grounding")  # table column order
PLOTTED = ("counting", "colour", "reading")
SECTION = "## Accuracy after the same training budget"
DEFAULTS = dict(steps=300, batch_size=16, lr=1e-3, n_train=2400, n_test=100, eval_batch_size=16,
                vision_init="weights/vlmkit-clip", out="bench/connectors/accuracy", md="bench/connectors/results.md",
                work="/tmp/vlmkit-connector-accuracy", decoder="smollm2")
DECODERS = ("smollm2", "small")
# --decoder small: the decoder of recipes/vlmkit-smol-tower.toml
SMALL_DECODER = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                     num_key_value_heads=4, head_dim=64)


def zoo():
    """bench/connectors/run.py as a module: its build() is the one definition of each variant."""
    spec = importlib.util.spec_from_file_location("connectors_run", HERE / "run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ---- data ----
def data_dir(work: Path, name: str, split: str, n: int) -> Path:
    return work / "data" / f"{name}-{split}-{n}-{SIZE}px"


def make_data(work: Path, n_train: int, n_test: int) -> dict[str, list[Path]]:
    """Generated shapes and text at 112 px (`vlmkit data make NAME --split S --n N --size 112`), reused when
    already written. The test split never shares content with train (vlmkit.data's split rule)."""
    from vlmkit.data import export, make_source

    dirs = {"train": [], "test": []}
    for split, n in (("train", n_train), ("test", n_test)):
        for name in SOURCES:
            d = data_dir(work, name, split, n)
            if not (d / "manifest.json").is_file():
                cmd = f"vlmkit data make {name} --split {split} --n {n} --size {SIZE} --out {d}"
                export(make_source(name, split=split, n=n, size=SIZE), d, overwrite=True, progress=False, meta={"command": cmd})
            dirs[split].append(d)
    return dirs


# ---- one connector: build, train, evaluate ----
def make_init(kind: str, path: Path, decoder: str) -> Path:
    """run.py's variant at 112 px, untrained, saved as a model dir for model.init: the training config has no
    fusion setting, so a starting directory is how the flamingo variant (and, alike, every other) gets in."""
    from vlmkit.models.lm import LanguageModel, load_tokenizer
    from vlmkit.train.stages import small_lm

    import torch

    torch.manual_seed(0)  # the small decoder starts from the same random weights in every row
    lm = LanguageModel.from_source("smollm2") if decoder == "smollm2" else small_lm("smollm2", SMALL_DECODER)
    model = zoo().build(kind, SIZE, lm, pre_norm=True)[0]
    # SmolLM2 stays "source" (only tower, connector and fusion weights are written); the small decoder's
    # weights live in the directory
    model.save_pretrained(path, tokenizer=load_tokenizer(None, lm.cfg))
    return path


def train_config(kind: str, init: Path, train_files: list[Path], run_dir: Path, args):
    from vlmkit.train.config import from_dict

    small = args.decoder == "small"
    return from_dict({
        # align: vision and LM frozen; connector.* and fusion.* train (vlmkit/train/stages.py).
        # The small decoder starts random, so it trains too (instruct, no LoRA); the tower stays frozen.
        "stage": "instruct" if small else "align",
        **({"vision": {"freeze": True}, "lm": {"freeze": False}} if small else {}),
        "out_dir": str(run_dir),
        "model": {"init": str(init), "vision_init": str(ROOT / args.vision_init), "name": f"connector-{kind}",
                  "chat_template": "chatml"},  # no 20-token default system prompt per sample
        "data": {"train": [str(d / "conversations.jsonl") for d in train_files], "max_length": 512},
        "train": {"batch_size": args.batch_size, "lr": args.lr, "max_steps": args.steps,
                  "warmup_steps": max(1, args.steps // 10), "seed": 0, "log_every": 1},
    })


def step_seconds(metrics: Path) -> float | None:
    """Median seconds per optimizer step from the loop's own log (eval and checkpoint time excluded)."""
    recs = [r for r in map(json.loads, filter(str.strip, metrics.read_text().splitlines())) if r.get("samples_per_s")]
    # log_every = 1: each record's samples are cumulative, samples_per_s that one step's
    dts = [(r["samples"] - prev) / r["samples_per_s"] for prev, r in zip([0] + [q["samples"] for q in recs], recs)]
    return statistics.median(dts[1:] or dts) if dts else None  # the first step also warms up


def slice_scores(results: dict) -> dict[str, dict]:
    """slice -> {score, n, metric} over every task of a harness results.json."""
    return {row["slice"]: {"score": row["score"], "n": row["n"], "metric": row["metric"]}
            for task in results["tasks"].values() for row in task["slices"] if row["n"]}


def evaluate(final: Path, test_dirs: list[Path], out: Path, args) -> tuple[dict, object]:
    """What `vlmkit eval --model FINAL --tasks .../task.json --limit N` runs, through its Python API."""
    from vlmkit.api import load
    from vlmkit.eval.harness import EvalConfig, run_eval
    from vlmkit.eval.tasks import load_spec

    vlm = load(final)
    cfg = EvalConfig(limit=args.n_test, batch_size=args.eval_batch_size, overwrite=True, progress=False)
    results = run_eval(vlm, [load_spec(d / "task.json") for d in test_dirs], out, cfg, model_path=final)
    return slice_scores(results), vlm


def measure_kind(kind: str, args) -> dict:
    from vlmkit.train.distributed import pick_device
    from vlmkit.train.loop import train

    work = ROOT / args.work  # every path flag is relative to the repository root (the child's cwd)
    dirs = {split: [data_dir(work, n, split, getattr(args, f"n_{split}")) for n in SOURCES] for split in ("train", "test")}
    run_dir = work / "runs" / f"{kind}-{args.decoder}-{args.steps}x{args.batch_size}"
    shutil.rmtree(run_dir, ignore_errors=True)  # a stale metrics.jsonl (appended to) would mix into step_s
    init = make_init(kind, work / "init" / f"{kind}-{args.decoder}", args.decoder)
    t0 = time.perf_counter()
    result = train(train_config(kind, init, dirs["train"], run_dir, args), progress=False)
    train_s = time.perf_counter() - t0
    scores, vlm = evaluate(result.final_dir, dirs["test"], work / "eval" / run_dir.name, args)
    model = vlm.model
    return dict(
        kind=kind, steps=result.state.step, batch_size=args.batch_size,
        trainable_params=sum(p.numel() for n, p in model.named_parameters() if n.startswith(("connector.", "fusion."))),
        seq_tokens=model.cfg.image_seq_len,
        train_s=train_s, step_s=step_seconds(run_dir / "metrics.jsonl"), final_loss=result.state.last_loss,
        # training runs where train.device "auto" puts it; the harness generates on the CPU (vlmkit's inference API
        # places nothing on an accelerator), so evaluation time grows with --n-test whatever the machine
        train_device=str(pick_device("auto")), eval_device=str(next(model.parameters()).device), slices=scores,
    )


# ---- the report ----
def mean_of(slices: dict, names) -> float | None:
    vals = [slices[n]["score"] for n in names if n in slices and slices[n]["score"] is not None]
    return sum(vals) / len(vals) if vals else None


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def command(args) -> str:
    """The exact command, with only the flags that differ from the defaults."""
    flags = [f"--{k.replace('_', '-')} {getattr(args, k)}" for k, v in DEFAULTS.items() if getattr(args, k) != v]
    if tuple(args.connectors) != KINDS:
        flags.append(f"--connectors {','.join(args.connectors)}")
    return "`.venv/bin/python bench/connectors/accuracy.py" + "".join(" " + f for f in flags) + "`"


def table(rows: list[dict]) -> list[str]:
    lines = ["| connector | visual tokens in LM sequence | trainable params | "
             + " | ".join(SLICES) + " | fine (counting, reading) | coarse (colour) | s / step | final loss |",
             "|---|---|---|" + "---|" * len(SLICES) + "---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['kind']} | n/a: {r['error']} |" + " |" * (len(SLICES) + 5))  # the 12 columns of the header
            continue
        s = r["slices"]
        cells = [pct(s[n]["score"]) if n in s else "-" for n in SLICES]
        step = f"{r['step_s']:.2f}" if r.get("step_s") else "-"
        lines.append(f"| {r['kind']} | {r['seq_tokens']:,} | {r['trainable_params']:,} | " + " | ".join(cells)
                     + f" | {pct(mean_of(s, FINE))} | {pct(mean_of(s, COARSE))} | {step} | {r['final_loss']:.3f} |")
    return lines


def section(rows: list[dict], args, plot_rel: str) -> str:
    ns = sorted({v["n"] for r in rows if "slices" in r for v in r["slices"].values()})
    if args.decoder == "small":
        lm_text = ("a fresh 4-layer, 256-wide decoder of SmolLM2's family and tokenizer (the CPU-sized proxy, see "
                   "the script's docstring), trained with the connector (stage instruct); the tower frozen")
        learns = "where the connector, flamingo's blocks and marker, and the decoder learn"
    else:
        lm_text = "SmolLM2-135M-Instruct, both frozen"
        learns = "stage align (only the connector, and flamingo's blocks and marker, learn)"
    devices = sorted({f"training on {r['train_device']}, evaluation on {r['eval_device']}" for r in rows if "train_device" in r})
    lines = [
        SECTION,
        "",
        f"Command: {command(args)}  ",
        f"Setup: the trained vlmkit-clip ViT ({args.vision_init}: {SIZE} px, patch 14, 64 tower tokens) and "
        f"{lm_text}; each connector built as in the table above (flamingo = perceiver + gated cross-attention every 4th "
        f"layer; linear, mlp2x_gelu and pixel_shuffle with pre_norm) and trained through `vlmkit.train.loop.train`, "
        f"{learns}. Same recipe for all: "
        f"{args.steps} steps x batch {args.batch_size}, AdamW lr {args.lr:g}, warmup {max(1, args.steps // 10)}, cosine, "
        f"seed 0; data: generated shapes + text conversations at {SIZE} px, {args.n_train:,} images each (every QA turn "
        f"supervised). Device: {', '.join(devices) or '-'}.  ",
        f"Evaluation: the harness (`vlmkit eval`'s run_eval) on held-out test splits, the first {args.n_test} questions per "
        f"slice (n = {', '.join(map(str, ns)) or '-'}), greedy. Scores in %: exact match (counting, reading, colour), "
        "yes/no and exact (spatial), accuracy at IoU >= 0.5 (grounding). Fine = mean of counting and reading; "
        "coarse = colour. s / step: median optimizer step from the run's metrics.jsonl.",
        "",
        *table(rows),
        "",
        *verdict(rows),
        f"![accuracy per connector: counting, colour, reading]({plot_rel})",
        "",
    ]
    return "\n".join(lines)


def verdict(rows: list[dict]) -> list[str]:
    """A line that says so when the budget separated nothing: identical scores on every slice mean every
    connector answered with the same priors, and the table ranks no connector."""
    ok = [r for r in rows if "slices" in r]
    sig = {tuple(sorted((k, v["score"]) for k, v in r["slices"].items())) for r in ok}
    if len(ok) > 1 and len(sig) == 1:
        return ["**Every connector scored the same on every slice**: at this budget each answered from the question "
                "priors alone (no row reads the image), so this table ranks no connector. The ranking needs a larger "
                "budget: the default run (SmolLM2 in the loop, 300 steps x 16) on a GPU.", ""]
    return []


def merge_section(md: str, new: str) -> str:
    """Replace the section that starts with new's heading (up to the next heading of level 1 or 2),
    or append it; the rest of the file (run.py's table) is left as it was."""
    heading = new.splitlines()[0]
    lines = md.splitlines()
    if heading not in lines:
        return md.rstrip("\n") + "\n\n" + new.rstrip("\n") + "\n"
    start = lines.index(heading)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith(("# ", "## "))), len(lines))
    rest = lines[end:]
    return "\n".join(lines[:start] + new.rstrip("\n").splitlines() + ([""] + rest if rest else [])) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if "slices" in r]
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(ok) + 2), 4.2))
    width = 0.8 / len(PLOTTED)
    for j, name in enumerate(PLOTTED):
        xs = [i + (j - (len(PLOTTED) - 1) / 2) * width for i in range(len(ok))]
        ys = [100 * (r["slices"].get(name, {}).get("score") or 0) for r in ok]
        bars = ax.bar(xs, ys, width, label=name + (" (fine)" if name in FINE else " (coarse)"))
        ax.bar_label(bars, fmt="%.0f", fontsize=7)  # a 0 stays readable as a 0, not as a missing bar
    ax.set_xticks(range(len(ok)), [r["kind"] for r in ok])
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    steps = ok[0]["steps"] if ok else 0
    ax.set_title(f"Held-out accuracy after {steps} steps x {ok[0]['batch_size'] if ok else 0} ({SIZE} px)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


# ---- driver ----
def run_one(kind: str, args) -> dict:
    """One connector in its own process: a crash or an out-of-memory in one leaves the others' rows."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    cmd = [sys.executable, __file__, "--kind", kind] + [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in DEFAULTS]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if out.returncode:
        err = (out.stderr.strip().splitlines() or ["failed"])[-1][:160]
        return dict(kind=kind, error=err)
    return json.loads(out.stdout.strip().splitlines()[-1])


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kind", help="(internal) train and evaluate one connector, print its row as JSON")
    ap.add_argument("--connectors", type=lambda s: [k for k in s.split(",") if k], default=list(KINDS),
                    help=f"comma-separated subset of {','.join(KINDS)}")
    ap.add_argument("--steps", type=int, default=DEFAULTS["steps"])
    ap.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    ap.add_argument("--lr", type=float, default=DEFAULTS["lr"])
    ap.add_argument("--n-train", type=int, default=DEFAULTS["n_train"], help="training images per source (shapes, text)")
    ap.add_argument("--n-test", type=int, default=DEFAULTS["n_test"], help="test questions per slice")
    ap.add_argument("--eval-batch-size", type=int, default=DEFAULTS["eval_batch_size"])
    ap.add_argument("--vision-init", default=DEFAULTS["vision_init"], help="the trained tower (a dual-encoder dir)")
    ap.add_argument("--out", default=DEFAULTS["out"], help="results.json and plot.png go here")
    ap.add_argument("--md", default=DEFAULTS["md"], help="the markdown file the section is merged into")
    ap.add_argument("--work", default=DEFAULTS["work"], help="data, initial weights, runs and eval folders")
    ap.add_argument("--decoder", choices=DECODERS, default=DEFAULTS["decoder"],
                    help="smollm2 (frozen) or small (a fresh 4-layer decoder trained alongside: the CPU-sized proxy)")
    args = ap.parse_args(argv)
    bad = [k for k in args.connectors if k not in KINDS]
    if bad:
        ap.error(f"unknown connector(s) {bad}; choose from {', '.join(KINDS)}")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.kind:
        print(json.dumps(measure_kind(args.kind, args)))
        return
    from tqdm import tqdm

    make_data(ROOT / args.work, args.n_train, args.n_test)  # once, before the per-connector processes read it
    rows = [run_one(k, args) for k in tqdm(args.connectors, desc="connectors", unit="connector")]
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(dict(command=command(args), rows=rows), indent=1) + "\n")
    plot(rows, out / "plot.png")
    md = ROOT / args.md
    new = section(rows, args, os.path.relpath(out / "plot.png", md.parent))
    md.write_text(merge_section(md.read_text() if md.is_file() else "", new))
    print(new)


if __name__ == "__main__":
    main()
