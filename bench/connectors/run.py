"""The connector comparison, measured: same tower, same LM, every connector, three resolutions.

Tower: our ViT (192 wide, 6 layers, 3 heads, patch 14, random init) built at each resolution;
LM: SmolLM2-135M-Instruct fp32 (LanguageModel.from_source("smollm2")), frozen. For each
connector and resolution (one image plus a question):
  trainable parameters   connector (+ gated cross-attention blocks and marker for flamingo)
  visual tokens          positions the image takes in the LM sequence (and tokens read by cross-attention)
  prefill latency        image tensor -> tower -> connector -> embeddings -> LM prefill with a KV cache
                         (last-position logits only, as generation does);
                         all connectors of one resolution timed round-robin in one process, median of --repeats
  KV-cache bytes         per image: cache tensors after prefilling the image prompt minus after the same
                         prompt without the image; flamingo adds its memoised cross-attention K/V
  peak memory            a warm prefill's peak growth of live CPU tensor memory, from the torch
                         profiler's allocation events (not tracemalloc, which cannot see torch's
                         allocator; not RSS, which cannot see freed heap pages being reused)
Reference (ratio columns): the linear connector (LLaVA-1.0) at the same resolution, same run.

    .venv/bin/python bench/connectors/run.py --repeats 3     # writes results.md, results.json, plot.png here
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
KINDS = ("linear", "mlp2x_gelu", "pixel_shuffle", "qformer", "perceiver", "cabstractor", "flamingo")
SIZES = (224, 336, 672)
QUESTION = "What is in the cup? Answer in one word."
THREADS = 2


class AllocPeak:
    """Peak growth of live CPU tensor memory inside the block, from the torch profiler's allocation
    events (each alloc/free with its size), so exact at the allocator level. RSS cannot see a freed
    heap page being reused, and tracemalloc cannot see torch's allocator at all."""

    def __enter__(self):
        from torch.profiler import ProfilerActivity, profile

        gc.collect()  # garbage from earlier runs (reference cycles) would otherwise be freed inside the window
        self._prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self._prof.__enter__()
        return self

    def __exit__(self, *exc):
        self._prof.__exit__(*exc)
        with tempfile.TemporaryDirectory() as d:
            self._prof.export_chrome_trace(f"{d}/trace.json")
            events = json.loads(Path(f"{d}/trace.json").read_text())["traceEvents"]
        live = self.peak = 0
        for _, nbytes in sorted((e["ts"], e["args"]["Bytes"]) for e in events if e.get("name") == "[memory]"):
            live += nbytes  # negative for a free
            self.peak = max(self.peak, live)


def cache_bytes(cache) -> int:
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values) if t is not None)


def build(kind: str, size: int, lm, pre_norm: bool = False):
    """(model, image prompt ids, text-only prompt ids, pixel values) for one connector at one resolution.
    pre_norm: a LayerNorm on each tower token before the linear / mlp2x_gelu / pixel_shuffle projections
    (the resamplers normalise inside already)."""
    import torch

    from vlmkit.api import VLM
    from vlmkit.config import ConnectorConfig, FusionConfig, VisionConfig, VLMConfig
    from vlmkit.models.lm import load_tokenizer
    from vlmkit.models.vlm import VisionLanguageModel

    torch.manual_seed(0)
    fused = kind == "flamingo"
    vision = VisionConfig(image_size=size, patch_size=14, hidden_size=192, num_layers=6, num_heads=3)
    extra = {}
    if kind == "cabstractor":  # pool to at most the patch grid (12x12 at 224 px and up, 8x8 at 112): never upsample
        extra["num_queries"] = min(ConnectorConfig(kind=kind).num_queries, (size // vision.patch_size) ** 2)
    cfg = VLMConfig(
        vision=vision,
        connector=ConnectorConfig(kind="perceiver" if fused else kind,
                                  pre_norm=pre_norm and kind in ("linear", "mlp2x_gelu", "pixel_shuffle"), **extra),
        lm=lm.cfg,
        fusion=FusionConfig(kind="flamingo" if fused else "none", every=4),
    )
    model = VisionLanguageModel(cfg, lm=lm).eval()
    model.vision.requires_grad_(False)
    model.lm.requires_grad_(False)  # LLaVA stage 1 / Flamingo: only the connector (and fusion blocks) train
    vlm = VLM(model, load_tokenizer(None, lm.cfg))
    image = ROOT / "vlmkit" / "assets" / "examples" / "coffee.jpg"
    with_image = vlm.prompt([{"role": "user", "content": [{"type": "image", "image": str(image)}, {"type": "text", "text": QUESTION}]}])
    text_only = vlm.prompt([{"role": "user", "content": QUESTION}])
    return model, with_image.input_ids, text_only.input_ids, vlm.image_processor([str(image)])  # pixels [1, 3, size, size]


def prefill(model, ids: list[int], pixels, keep: list | None = None) -> int:
    """Image -> tower -> connector -> embeddings -> LM prefill; returns the KV bytes held afterwards
    (the cache is appended to `keep` when given, so a memory probe can see it still alive)."""
    import torch
    from transformers import DynamicCache

    with torch.no_grad():
        feats = model.encode_images(pixels) if pixels is not None else None
        embeds = model.embed_inputs(torch.tensor([ids]), feats)
        cache = DynamicCache(config=model.lm.model.config)
        model.lm(embeds, past_key_values=cache, use_cache=True, logits_to_keep=1)  # as generate_from_embeds prefills
    if keep is not None:
        keep.append(cache)
    return cache_bytes(cache) + (model.fusion.context_bytes() if model.fusion is not None else 0)


def measure_size(size: int, kinds: list[str], repeats: int) -> list[dict]:
    """One process per resolution: every connector built, warmed up, its memory measured, then all timed round-robin."""
    import torch

    from vlmkit.models.lm import LanguageModel

    torch.set_num_threads(THREADS)
    shared = LanguageModel.from_source("smollm2")  # token-sequence connectors leave the LM untouched
    built = {k: build(k, size, LanguageModel.from_source("smollm2") if k == "flamingo" else shared) for k in kinds}
    rows = {}
    for k, (model, ids, text_ids, px) in built.items():
        kv_text = prefill(model, text_ids, None)  # also the warm-up: pages in the lazily mapped LM weights
        prefill(model, ids, px)
        alive = []  # holds the KV cache past the window, so it counts as the live memory it is
        with AllocPeak() as mem:
            kv_image = prefill(model, ids, px, keep=alive)
        alive.clear()
        cfg = model.cfg
        rows[k] = dict(
            kind=k, size=size,
            trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
            tower_tokens=cfg.vision.num_tokens,
            seq_tokens=ids.count(cfg.image_token_id),
            read_tokens=cfg.connector.num_output_tokens(cfg.vision.num_tokens),
            prompt_tokens=len(ids),
            kv_bytes_per_image=kv_image - kv_text,
            peak_alloc=mem.peak,
            prefill_all_s=[],
        )
    for r in range(repeats):
        order = kinds[r % len(kinds):] + kinds[: r % len(kinds)]  # rotate so no connector always runs first
        for k in order:
            model, ids, _, px = built[k]
            t = time.perf_counter()
            prefill(model, ids, px)
            rows[k]["prefill_all_s"].append(time.perf_counter() - t)
    for row in rows.values():
        row["prefill_s"] = statistics.median(row["prefill_all_s"])
        if "linear" in rows:  # per-round ratio, then the median: drift in machine load cancels
            row["vs_linear"] = statistics.median(a / b for a, b in zip(row["prefill_all_s"], rows["linear"]["prefill_all_s"]))
    return list(rows.values())


def mib(n: float) -> str:
    return f"{n / 2**20:,.2f}"


def write_results(rows: list[dict], args, loads: tuple[float, float]) -> str:
    by = {(r["kind"], r["size"]): r for r in rows}
    cmd = "`.venv/bin/python bench/connectors/run.py " + " ".join(
        [f"--repeats {args.repeats}"] + ([f"--kinds {' '.join(args.kinds)}"] if tuple(args.kinds) != KINDS else [])
        + ([f"--sizes {' '.join(map(str, args.sizes))}"] if tuple(args.sizes) != SIZES else [])) + "`"
    lines = [
        "# Connectors compared: same tower, same LM",
        "",
        f"Command: {cmd}  ",
        f"Setup: our ViT (192 wide, 6 layers, patch 14, random init) at each resolution + SmolLM2-135M-Instruct fp32, "
        f"frozen; one image (coffee.jpg) + a {len(QUESTION.split())}-word question, batch 1, {THREADS} threads on a 2-core CPU "
        f"shared with other work. Prefill = image tensor -> tower -> connector -> LM prefill with KV cache and last-position logits "
        f"(as generation does), median of "
        f"{args.repeats}. Defaults: qformer 32 queries x 6 blocks, perceiver 64 latents x 6 layers, "
        "cabstractor 12x12 = 144 cells, depth 3; flamingo = perceiver + gated cross-attention before every 4th of the "
        "30 decoder layers (7 blocks).  ",
        "KV bytes per image: measured cache tensors (fp32) after prefilling the image prompt minus the text-only prompt; "
        "flamingo's are its one marker position plus the cross-attention K/V of its 64 visual tokens in 7 blocks.  ",
        "Peak memory: a warm prefill's peak growth of live CPU tensor memory (activations and KV cache; weights excluded), "
        "summed from the torch profiler's per-allocation events: exact at the allocator level. Not tracemalloc (it cannot "
        "see torch's allocator) and not an RSS delta (freed heap pages are reused without growing RSS, so small prefills "
        "read as 0).  ",
        "Latency: one process per resolution builds every connector, warms each up, and times them round-robin, so "
        "machine load hits all alike; `prefill / linear` is the median of the per-round ratios. OMP_WAIT_POLICY=PASSIVE.  ",
        f"Machine load average (1 min) at start / end: {loads[0]:.1f} / {loads[1]:.1f} on 2 cores: absolute times are "
        "inflated by other work on the machine; the ratios are the comparable numbers. linear and mlp2x_gelu do the "
        "same LM work, so how far their ratio strays from 1.00 shows this run's noise.",
        "",
        "| connector | px | trainable params | tower tokens | visual tokens in LM sequence | visual tokens read | "
        "prefill ms | prefill / linear | KV MiB per image | peak memory MiB | accuracy after training |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for size in args.sizes:
        for kind in args.kinds:
            r = by.get((kind, size))
            if r is None:
                continue
            if "error" in r:
                lines.append(f"| {kind} | {size} | n/a: {r['error']} | | | | | | | | |")
                continue
            ratio = f"{r['vs_linear']:.2f}" if "vs_linear" in r else "-"
            ms = f"{r['prefill_s'] * 1000:,.0f}" if "prefill_s" in r else "-"
            lines.append(
                f"| {kind} | {size} | {r['trainable_params']:,} | {r['tower_tokens']:,} | {r['seq_tokens']:,} | {r['read_tokens']:,} | "
                f"{ms} | {ratio} | {mib(r['kv_bytes_per_image'])} | {mib(r['peak_alloc'])} | TODO |"
            )
    lines += [
        "",
        "TODO accuracy: each connector's accuracy after the same short training budget on the same task (fine detail such as "
        "counting and small text against coarse questions such as colour) is measured by bench/connectors/accuracy.py "
        "(section \"Accuracy after the same training budget\" below); the column stays TODO until its full run is made.",
        "",
        "![prefill latency, KV cache and peak memory per connector](plot.png)",
        "",
    ]
    return "\n".join(lines)


def plot(rows: list[dict], args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if "error" not in r and "prefill_s" in r]
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.6))
    panels = [
        ("visual tokens in the LM sequence", lambda r: r["seq_tokens"], "log"),
        ("prefill latency (ms)", lambda r: r["prefill_s"] * 1000, "log"),
        ("KV cache per image (MiB, fp32)", lambda r: r["kv_bytes_per_image"] / 2**20, "log"),
        ("peak prefill memory (MiB, allocator)", lambda r: r["peak_alloc"] / 2**20, "log"),
    ]
    for ax, (title, f, scale) in zip(axes, panels):
        for kind in args.kinds:
            pts = sorted((r["size"], f(r)) for r in ok if r["kind"] == kind)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=kind)
        ax.set_title(title)
        ax.set_xlabel("image size (px)")
        ax.set_xticks(list(args.sizes))
        ax.set_yscale(scale)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Connectors on our ViT (192 wide, patch 14) + SmolLM2-135M, CPU fp32, batch 1")
    fig.tight_layout()
    fig.savefig(HERE / "plot.png", dpi=110)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, help="(internal) measure every connector at one resolution")
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    ap.add_argument("--sizes", nargs="+", type=int, default=list(SIZES))
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if args.size:
        print(json.dumps(measure_size(args.size, args.kinds, args.repeats)))
        return
    from tqdm import tqdm

    # PASSIVE: on a shared, oversubscribed CPU, spinning OpenMP threads made a 2-thread prefill 7x slower than 1 thread
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "OMP_NUM_THREADS": str(THREADS),
           "OMP_WAIT_POLICY": "PASSIVE"}
    load_start = os.getloadavg()[0]
    rows = []
    for size in tqdm(args.sizes, desc="resolutions", unit="size"):
        cmd = [sys.executable, __file__, "--size", str(size), "--repeats", str(args.repeats), "--kinds", *args.kinds]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if out.returncode:
            err = (out.stderr.strip().splitlines() or ["failed"])[-1][:160]
            rows += [dict(kind=k, size=size, error=err) for k in args.kinds]
            continue
        rows += json.loads(out.stdout.strip().splitlines()[-1])
    loads = (load_start, os.getloadavg()[0])
    (HERE / "results.json").write_text(json.dumps(dict(rows=rows, load_avg_start_end=loads), indent=1) + "\n")
    md = write_results(rows, args, loads)
    old = (HERE / "results.md").read_text() if (HERE / "results.md").is_file() else ""
    kept = old[old.find("\n## "):] if "\n## " in old else ""  # later sections belong to other scripts (accuracy.py)
    (HERE / "results.md").write_text(md + kept)
    plot(rows, args)
    print(md)


if __name__ == "__main__":
    main()
