"""Oracle check for vlmkit-smol: is the connector or the LM the bottleneck?

Scores a model on the first 48 shapes-val questions (the training eval's set) twice: with its own visual
tokens, and with the closed-form fit's *targets* in their place (SmolLM2's mean embedding of the words naming
what covers each token's region, from the generator's ground truth; scripts/fit_connector.py). If the oracle
scores no better, the region-to-word map is not what limits the model; the LM's reading of such tokens is.

    .venv/bin/python scripts/oracle_tokens.py runs/vlmkit-smol-stage2/final
"""
import importlib.util
import json
import sys
from pathlib import Path

import torch

from vlmkit.models.lm import load_tokenizer
from vlmkit.models.vlm import VisionLanguageModel
from vlmkit.train.evaluate import eval_vqa

VAL, N = Path("data/shapes/val"), 48


def main(path: Path) -> None:
    spec = importlib.util.spec_from_file_location("fit_connector", Path(__file__).with_name("fit_connector.py"))
    fit = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fit)
    model = VisionLanguageModel.from_pretrained(path)
    tok = load_tokenizer(path, model.cfg.lm)
    truth = {r["image"]: r["truth"] for r in map(json.loads, (VAL / "truth.jsonl").read_text().splitlines())}
    rows = [json.loads(l) for l in (VAL / "eval.jsonl").read_text().splitlines() if l.strip()][:N]
    regions = fit.token_regions(model.cfg.vision, model.connector)
    phrase_vec = fit.phrase_embedder(model, tok)
    k = model.cfg.connector.tokens_per_cell
    targets = [fit.region_targets(truth[r["image"]], regions, phrase_vec, k) for r in rows]  # each [N_tokens, D_lm]
    print("own tokens   ", eval_vqa(model, tok, VAL / "eval.jsonl", N, 24, 16, "cpu"))
    queue = list(targets)  # eval_vqa encodes the images batch by batch in row order

    def oracle(pixel_values):
        out = torch.stack(queue[:len(pixel_values)])
        del queue[:len(pixel_values)]
        return out

    model.encode_images = oracle
    print("oracle tokens", eval_vqa(model, tok, VAL / "eval.jsonl", N, 24, 16, "cpu"))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
