"""vlmkit-smol with *oracle* visual tokens: is the connector or the LM the bottleneck, and can the LM bind at all?

The oracle tokens of a world image are the closed-form fit's targets (scripts/fit_connector.py): SmolLM2's
embeddings of the words naming what covers each visual token's region, from the generator's ground truth.

- `eval`: VQA accuracy by slice on a world folder's eval.jsonl, with the model's own tokens and then with the oracle
  tokens in their place. If the oracle scores no better, the region-to-word map is not what limits the model.
- `train` (vlmkit-smol's stage 2b): wraps `vlmkit train` (same recipe, --set, --out, --resume), with every image of
  the given world folders encoded as its oracle tokens; any other image (easy-vqa, the ablation's blank image)
  keeps the model's own. Adapters that had only read real tokens scored 0.56 on colour with oracle tokens; 150
  steps on them brought it to 0.78 (EXPERIMENTS.md, session 8): the LM can learn to bind.
- `text`: the bare SmolLM2, given the scene as text, on the colour questions (what the LM brings by itself).

Images are recognised by a fingerprint of their processed pixels, since the trainer hands the model pixels,
not file names; the processing is deterministic (no augmentation at training time).

    .venv/bin/python scripts/oracle_stage.py train recipes/vlmkit-smol-oracle.toml --worlds data/shapes/train data/shapes/val
    .venv/bin/python scripts/oracle_stage.py eval runs/vlmkit-smol-oracle/final --worlds data/shapes/val --n 200
    .venv/bin/python scripts/oracle_stage.py text --worlds data/shapes/test --n 100
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import types
from collections import Counter
from pathlib import Path

import torch
from tqdm import tqdm

from vlmkit.models.lm import load_tokenizer
from vlmkit.models.vlm import VisionLanguageModel, read_config
from vlmkit.processing.images import ImageProcessor


def _fit_module():
    spec = importlib.util.spec_from_file_location("fit_connector", Path(__file__).with_name("fit_connector.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def fingerprint(pixels: torch.Tensor) -> str:  # pixels [3, S, S]
    return hashlib.sha1(pixels.contiguous().numpy().tobytes()).hexdigest()


def world_truths(folders: list[Path], vision_cfg) -> dict[str, dict]:
    """fingerprint of the processed image -> its generator ground truth, for every image of the folders."""
    proc = ImageProcessor.from_vision_config(vision_cfg)
    rows = [(f, json.loads(line)) for f in folders for line in (f / "truth.jsonl").read_text().splitlines() if line.strip()]
    table = {}
    for folder, r in tqdm(rows, desc="fingerprinting world images"):
        table[fingerprint(proc([folder / r["image"]])[0])] = r["truth"]
    return table


def oracle_encoder(folders: list[Path], vision_cfg, tokenizer, targets: str = "cover"):
    """An encode_images(self, pixel_values) for VisionLanguageModel that puts the oracle tokens of every image of
    `folders` in place of the connector's output, and keeps the model's own tokens for any other image. Its
    `.counts` tallies both. `targets`: which of the fit's targets (fit_connector.TARGETS) the oracle gives."""
    fit = _fit_module()
    table = world_truths(folders, vision_cfg)
    own = VisionLanguageModel.encode_images
    state: dict = {}

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:  # [N, 3, S, S] -> [N, N_tokens, D_lm]
        if "phrase_vec" not in state:
            state["phrase_vec"] = fit.phrase_embedder(self, tokenizer)
            state["regions"] = fit.token_regions(self.cfg.vision, self.connector)
        k = self.cfg.connector.tokens_per_cell
        truths = [table.get(fingerprint(px.detach().cpu())) for px in pixel_values]
        misses = [i for i, t in enumerate(truths) if t is None]
        # the tower and connector run only on images without an oracle: in the oracle stage that is none of them
        own_tokens = iter(own(self, pixel_values[misses]) if misses else [])
        ref = next(self.connector.parameters())  # dtype and device of the model's own tokens
        encode_images.counts.update(oracle=len(truths) - len(misses), own=len(misses))
        return torch.stack([next(own_tokens) if t is None else
                            fit.region_targets(t, state["regions"], state["phrase_vec"], k, targets).to(ref) for t in truths])

    encode_images.counts = Counter()
    return encode_images


def text_baseline(folder: Path, n: int, lm=None, tok=None) -> dict:
    """The LM's own binding, with no vision in the way: each colour question of `folder`'s eval.jsonl is asked of
    the bare SmolLM2-135M-Instruct after the scene written out ("The image shows: a large brown star, a small
    yellow star, ..."). Scored by the first colour word of its answer. lm / tok: another causal LM (a test's)."""
    import re

    from vlmkit.config import LMConfig
    from vlmkit.data.shapes import COLOURS
    from vlmkit.models.lm import LanguageModel

    if lm is None:
        lm = LanguageModel.from_source("smollm2").model.eval()
        tok = load_tokenizer(None, LMConfig(source="smollm2"))
    truth = {r["image"]: r["truth"] for r in map(json.loads, (folder / "truth.jsonl").read_text().splitlines())}
    rows = [r for r in map(json.loads, (folder / "eval.jsonl").read_text().splitlines()) if r["slice"] == "colour"][:n]
    right: Counter = Counter()
    total: Counter = Counter()
    for r in tqdm(rows, desc="text-only colour questions"):
        objs = truth[r["image"]]["objects"]
        scene = ", ".join(f"a {o['size']} {o['colour']} {o['shape']}" for o in objs)
        msgs = [{"role": "user", "content": f"The image shows: {scene}.\n{r['question']} Answer with one word."}]
        ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
        with torch.no_grad():
            out = lm.generate(ids, max_new_tokens=20, do_sample=False)
        said = [w for w in re.findall(r"[a-z]+", tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).lower())
                if w in COLOURS]
        # the fit's targets name colour and shape, not size: "the small triangle" beside a large one is ambiguous there
        kind = "shape_unique" if sum(o["shape"] in r["question"] for o in objs) == 1 else "needs_size"
        total[kind] += 1
        right[kind] += said[:1] == r["answers"][:1]
    acc = {f"colour_text_only/{k}": right[k] / total[k] for k in sorted(total)}
    return {"colour_text_only": sum(right.values()) / max(len(rows), 1), **acc, **{f"n/{k}": v for k, v in total.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("config")
    t.add_argument("--worlds", nargs="+", type=Path, required=True, help="generated-world folders (with truth.jsonl)")
    t.add_argument("--set", dest="overrides", action="append", default=[])
    t.add_argument("--out")
    t.add_argument("--resume", action="store_true")
    targets = _fit_module().TARGETS
    t.add_argument("--targets", choices=targets, default="cover", help="as fit_connector.py's")
    e = sub.add_parser("eval", help="VQA accuracy by slice on a world folder's eval.jsonl, own tokens then oracle")
    e.add_argument("model", type=Path)
    e.add_argument("--worlds", nargs="+", type=Path, required=True)
    e.add_argument("--n", type=int, default=200)
    e.add_argument("--targets", choices=targets, default="cover", help="as fit_connector.py's")
    x = sub.add_parser("text", help="zero-shot SmolLM2 (no image, no adapters) on colour questions, the scene as text")
    x.add_argument("--worlds", type=Path, required=True)
    x.add_argument("--n", type=int, default=80)
    args = ap.parse_args()

    if args.cmd == "text":
        print(text_baseline(args.worlds, args.n))
        return

    if args.cmd == "train":
        from vlmkit.cli.train import run
        from vlmkit.train.config import load_config

        cfg = load_config(args.config, list(args.overrides))
        if not cfg.model.init:
            raise SystemExit("set model.init: the oracle replaces a trained model's visual tokens")
        init = Path(cfg.model.init)
        start = read_config(init)  # the trainer loads the model itself: the config is all that is needed here
        encode = oracle_encoder(args.worlds, start.vision, load_tokenizer(init, start.lm), args.targets)
        VisionLanguageModel.encode_images = encode  # the trainer builds its own model: patch the class
        run(argparse.Namespace(config=args.config, overrides=args.overrides, out=args.out, resume=args.resume, progress=True))
        print("images encoded:", dict(encode.counts))
        return

    from vlmkit.train.evaluate import eval_vqa

    model = VisionLanguageModel.from_pretrained(args.model).eval()
    tok = load_tokenizer(args.model, model.cfg.lm)
    data = args.worlds[0] / "eval.jsonl"
    print("own tokens   ", eval_vqa(model, tok, data, args.n, 24, 16, "cpu"))
    encode = oracle_encoder(args.worlds, model.cfg.vision, tok, args.targets)
    model.encode_images = types.MethodType(encode, model)
    print("oracle tokens", eval_vqa(model, tok, data, args.n, 24, 16, "cpu"))
    print("images encoded:", dict(encode.counts))


if __name__ == "__main__":
    main()
