"""Time to first token, decode speed and peak memory: vlmkit's decode loop vs transformers' generate.

Both decode the same SmolLM2-135M from the same inputs_embeds (one 224 px image
through our default-size ViT + connector, plus a question). Each measurement
runs in a fresh subprocess so peak RSS belongs to one implementation alone.

    .venv/bin/python bench/generate/run.py            # writes bench/generate/results.md
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
N_NEW = 64


def build_inputs():
    import torch

    from vlmkit import ConnectorConfig, LMConfig, VisionConfig, VLMConfig
    from vlmkit.api import VLM
    from vlmkit.models.lm import load_tokenizer
    from vlmkit.models.vlm import VisionLanguageModel

    torch.manual_seed(0)
    cfg = VLMConfig(vision=VisionConfig(image_size=224, patch_size=16, hidden_size=192, num_layers=6, num_heads=3),
                    connector=ConnectorConfig(kind="mlp2x_gelu"), lm=LMConfig(source="smollm2"))
    model = VisionLanguageModel(cfg).eval()
    vlm = VLM(model, load_tokenizer(None, cfg.lm))
    image = Path(__file__).resolve().parents[2] / "vlmkit" / "assets" / "examples" / "coffee.jpg"
    t0 = time.perf_counter()
    prompt = vlm.prompt([{"role": "user", "content": [{"type": "image", "image": str(image)}, {"type": "text", "text": "What is in the cup?"}]}])
    with torch.no_grad():
        embeds, mask, _ = vlm._embed_batch([prompt])  # sequence positions: the default the benchmark counts itself
    return vlm, embeds, mask, time.perf_counter() - t0


def measure(impl: str) -> dict:
    import torch

    from vlmkit.generation import GenerationConfig, generate_from_embeds

    torch.set_num_threads(2)
    vlm, embeds, mask, vision_s = build_inputs()
    lm = vlm.model.lm

    def ours(n):
        return generate_from_embeds(lm, embeds, mask, vlm.tokenizer, GenerationConfig(max_new_tokens=n), eos_token_ids=set())[0]

    def theirs(n):
        with torch.no_grad():
            return lm.model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                     do_sample=False, pad_token_id=vlm.tokenizer.pad_token_id)

    run = ours if impl == "vlmkit" else theirs
    run(2)  # warm-up: first-call allocations and kernel selection
    t = time.perf_counter(); run(1); ttft = time.perf_counter() - t
    t = time.perf_counter(); run(N_NEW); total = time.perf_counter() - t
    decode_tps = (N_NEW - 1) / max(1e-9, total - ttft)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return dict(impl=impl, prompt_tokens=int(mask.sum()), vision_and_embed_s=vision_s, ttft_s=ttft, decode_tok_s=decode_tps, peak_rss_mb=peak_mb)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--impl", choices=["vlmkit", "transformers"])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if args.impl:
        print(json.dumps(measure(args.impl)))
        return
    rows = {"vlmkit": [], "transformers": []}
    for r in range(args.repeats):
        for impl in (("vlmkit", "transformers") if r % 2 == 0 else ("transformers", "vlmkit")):  # alternate order against drift
            out = subprocess.run([sys.executable, __file__, "--impl", impl], capture_output=True, text=True, check=True,
                                 env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"})
            rows[impl].append(json.loads(out.stdout.strip().splitlines()[-1]))
    med = {impl: {k: statistics.median(r[k] for r in rs) for k in ("ttft_s", "decode_tok_s", "peak_rss_mb", "vision_and_embed_s")}
           for impl, rs in rows.items()}
    v, t = med["vlmkit"], med["transformers"]
    lines = [
        "# Generation: vlmkit decode loop vs transformers `generate`",
        "",
        f"Command: `.venv/bin/python bench/generate/run.py --repeats {args.repeats}`  ",
        f"Setup: SmolLM2-135M-Instruct fp32, one 224 px image through our ViT (192 wide, 6 layers) + mlp2x_gelu "
        f"({rows['vlmkit'][0]['prompt_tokens']} prompt tokens), greedy, {N_NEW} new tokens, 2 threads, median of {args.repeats} "
        "fresh processes each. Peak memory is the process's max RSS (model load included).",
        "",
        "| | vlmkit | transformers generate | ratio (vlmkit / transformers) |",
        "|---|---|---|---|",
        f"| time to first token (s) | {v['ttft_s']:.3f} | {t['ttft_s']:.3f} | {v['ttft_s'] / t['ttft_s']:.2f} |",
        f"| decode (tokens/s) | {v['decode_tok_s']:.1f} | {t['decode_tok_s']:.1f} | {v['decode_tok_s'] / t['decode_tok_s']:.2f} |",
        f"| peak RSS (MB) | {v['peak_rss_mb']:.0f} | {t['peak_rss_mb']:.0f} | {v['peak_rss_mb'] / t['peak_rss_mb']:.2f} |",
        "",
        f"Image load + ViT + connector + embedding (not part of either decode): {v['vision_and_embed_s'] * 1000:.0f} ms.",
        "",
    ]
    (HERE / "results.md").write_text("\n".join(lines))
    (HERE / "results.json").write_text(json.dumps(rows, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
