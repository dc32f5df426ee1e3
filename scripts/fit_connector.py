"""Closed-form connector alignment from the generator's ground truth (vlmkit-smol's stage 1).

Two stage-1 runs of vlmkit-smol trained the connector by backpropagating the caption loss through the
frozen SmolLM2 and both learned a constant soft prompt: the LM's loss did not depend on the image
(EXPERIMENTS.md, sessions 2 and 3). Yet a linear probe reads the colour of the shape under a patch from our
tower's features with 98% accuracy. The information is there; gradient descent through the LM did not find the map
within a few thousand samples.

This script fits that map directly. The generated worlds record what lies where (shapes: colour,
kind and box of every object; text: the word and its box), so every visual token (a pixel-shuffled
block of patches) gets a target in SmolLM2's own input space: the mean embedding of the words naming
what covers it ("orange circle", the word's tokens, or "blank"). Ridge regression from the connector's
input (the LayerNorm'd, pixel-shuffled tower features) to those targets gives the connector's linear
layer in closed form. The LM then reads visual tokens that sit where words about the region sit
(Merullo et al. 2022, "Linearly mapping from image to text space", fit by least squares instead of
SGD), and stage 2 starts from a connector that already carries the image.

    .venv/bin/python scripts/fit_connector.py recipes/vlmkit-smol-stage1.toml --out runs/vlmkit-smol-align/final

Refit for another token grid and keep a trained model's LoRA adapters (EXPERIMENTS.md, session 6):

    .venv/bin/python scripts/fit_connector.py recipes/vlmkit-smol-stage1.toml --set model.connector.scale_factor=2 \
        --adapters-from runs/vlmkit-smol-stage2/final --out runs/vlmkit-smol-r2-warm

Two tokens per cell, a colour word then a shape word instead of their blend (EXPERIMENTS.md, session 7):

    .venv/bin/python scripts/fit_connector.py recipes/vlmkit-smol-stage1.toml --set model.connector.tokens_per_cell=2 \
        --adapters-from runs/vlmkit-smol-stage2/final --out runs/vlmkit-smol-k2-warm

An MLP projection (connector.hidden_dim > 0) is fitted by regression to the same targets instead of ridge
(EXPERIMENTS.md, session 8: closer to the targets than the linear map at 16 tokens):

    .venv/bin/python scripts/fit_connector.py recipes/vlmkit-smol-stage1.toml --set model.connector.hidden_dim=1024 \
        --truth data/shapes/train/truth.jsonl --images 5000 --adapters-from runs/smol-oracle/final --out runs/smol-mlp

64 tokens (pixel shuffle r = 2), and instance targets: a shape named in full only in the cell holding its centre,
by its colour in the other cells it covers, so that each object is one shape word (EXPERIMENTS.md, session 9):

    .venv/bin/python scripts/fit_connector.py recipes/vlmkit-smol-stage1.toml --set model.connector.scale_factor=2 \
        --set model.connector.hidden_dim=1024 --targets instance --truth data/shapes/train/truth.jsonl --images 4000 \
        --adapters-from runs/vlmkit-smol-64/final --out runs/vlmkit-smol-inst

Only the training splits are read. The model is built exactly as the recipe's stage would build it
(tower from model.vision_init, SmolLM2 from the package, a fresh connector, the recipe's chat template).
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch
from tqdm import tqdm

log = logging.getLogger("fit_connector")
BLANK = "blank"
TARGETS = ("cover", "instance")  # what a cell's target names: see region_words


def token_regions(vcfg, connector) -> list[list[tuple[float, float, float, float]]]:
    """For each visual token, the pixel boxes of the patches it merges (read off the connector's own
    pixel shuffle applied to patch indices, so no layout is assumed)."""
    from vlmkit.models.connectors import pixel_shuffle

    g, p = vcfg.grid_size, vcfg.patch_size
    idx = torch.arange(g * g, dtype=torch.float32).reshape(1, g * g, 1)  # [1, N_patches, 1]
    merged = pixel_shuffle(idx, connector.cfg.scale_factor)[0].long()  # [N_tokens, r*r] patch indices
    return [[((k % g) * p, (k // g) * p, (k % g + 1) * p, (k // g + 1) * p) for k in row.tolist()] for row in merged]


def overlap(a, b) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(0.0, w) * max(0.0, h)


def area(b) -> float:
    return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


def region_words(truth: dict, patches: list[tuple], targets: str = "cover") -> list[tuple[str, ...]]:
    """What covers one visual token's patches, each thing as its words: ("orange", "circle") for a shape, (word,)
    for rendered text. Empty: nothing does.

    targets = "instance": a shape is named in full only in the cell that holds its centre, and by its colour alone
    in the other cells it covers, so that each object is one "circle" token however many cells it spans (counting
    becomes counting shape words; with "cover" a large circle is four of them)."""
    if targets not in TARGETS:
        raise ValueError(f"targets must be one of {TARGETS}, not {targets!r}")
    out = []
    if truth.get("generator") == "shapes":
        for o in truth["objects"]:
            if targets == "instance" and any(q[0] <= o["center"][0] < q[2] and q[1] <= o["center"][1] < q[3]
                                             for q in patches):
                out.append((o["colour"], o["shape"]))
                continue
            cover = sum(overlap(o["box_px"], q) for q in patches)
            if cover >= 0.3 * area(o["box_px"]) or cover >= 0.3 * sum(area(q) for q in patches):
                out.append((o["colour"], o["shape"]) if targets == "cover" else (o["colour"],))
    elif truth.get("generator") == "text":
        box = truth["box_px"]
        if sum(overlap(box, q) for q in patches) >= 0.15 * area(box):
            out.append((truth["text"],))
    return out


def collect(model, tokenizer, files: list[Path], limit: int, batch: int = 32, targets: str = "cover"):
    """(connector inputs [M, D_in], targets [M, k * D_lm]) over every merged cell of up to `limit` images per file."""
    from PIL import Image

    from vlmkit.processing.images import ImageProcessor

    proc = ImageProcessor.from_vision_config(model.cfg.vision)
    regions = token_regions(model.cfg.vision, model.connector)
    phrase_vec = phrase_embedder(model, tokenizer)
    k = model.cfg.connector.tokens_per_cell
    xs, ys = [], []
    for path in files:
        rows = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
        rows = [r for r in rows if not r["truth"].get("warped")][:limit]  # a warped scene's boxes are approximate
        for i in tqdm(range(0, len(rows), batch), desc=path.parent.parent.name, unit="batch"):
            chunk = rows[i:i + batch]
            px = proc([Image.open(path.parent / r["image"]).convert("RGB") for r in chunk])
            with torch.no_grad():
                feats = model.vision.forward_features(px)  # [B, N_patches, D_v]
                x = model.connector.merge(feats)  # [B, N_tokens, D_v * r^2]: the projection's input
            for r, xi in zip(chunk, x):
                ys.append(region_targets(r["truth"], regions, phrase_vec, k, targets).reshape(len(regions), -1))  # [N_cells, k*D_lm]
                xs.append(xi)
    return torch.cat(xs), torch.cat(ys)


def phrase_embedder(model, tokenizer):
    """words -> the mean of SmolLM2's input embeddings of their tokens (with a leading space), cached."""
    from vlmkit.train.stages import word_vectors

    cache: dict[str, torch.Tensor] = {}

    def phrase_vec(words: str) -> torch.Tensor:
        if words not in cache:
            cache[words] = word_vectors(model, tokenizer, [words])[0]
        return cache[words]

    return phrase_vec


def region_targets(truth: dict, regions, phrase_vec, k: int = 1, targets: str = "cover") -> torch.Tensor:
    """[N_cells * k, D_lm]: the targets of each merged cell's k visual tokens, in sequence order.

    k = 1: the mean embedding of the phrases naming what covers the cell ("orange circle"). k = 2: a colour token
    then a shape token, each the mean over the things in the cell, so the LM reads "orange", "circle" as two words
    the way text puts them rather than one blend (a rendered word fills both). "blank" where nothing covers it."""
    if k > 2:
        raise ValueError(f"targets are defined for 1 or 2 tokens per cell (the phrase, or colour and shape), not {k}")
    out = []
    for patches in regions:
        things = region_words(truth, patches, targets) or [(BLANK,)]
        if k == 1:
            out.append(torch.stack([phrase_vec(" ".join(t)) for t in things]).mean(0))
        else:
            out += [torch.stack([phrase_vec(t[min(j, len(t) - 1)]) for t in things]).mean(0) for j in range(k)]
    return torch.stack(out)


def ridge(x: torch.Tensor, y: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """W [D_out, D_in], b [D_out] minimising |x W^T + b - y|^2 + lam |W|^2 (in float64)."""
    x, y = x.double(), y.double()
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    gram = xc.T @ xc
    gram += lam * len(x) * torch.eye(gram.shape[0], dtype=gram.dtype)  # lam per sample: the same at any M
    w = torch.linalg.solve(gram, xc.T @ yc).T  # [D_out, D_in]
    return w.float(), (my - mx @ w.T).float()


def fit_mlp(x: torch.Tensor, y: torch.Tensor, proj: torch.nn.Sequential, epochs: int, lr: float = 1e-3,
            batch: int = 256, seed: int = 0) -> None:
    """Fit the MLP projection (Linear, GELU, Linear) to the targets by regression: MSE plus 0.1 x cosine distance,
    AdamW with a one-cycle schedule. Gradient descent here never sees the LM, so it cannot learn the constant soft
    prompt that training through the LM did (EXPERIMENTS.md, sessions 2 and 3). The inputs are standardised per
    feature for the fit; that scaling is folded into the first layer afterwards, so the connector takes its usual inputs."""
    g = torch.Generator().manual_seed(seed)
    first = proj[0]
    with torch.no_grad():  # a fresh init of the same shapes, from this seed
        for m in (proj[0], proj[2]):
            torch.nn.init.normal_(m.weight, std=m.in_features ** -0.5, generator=g)
            if m.bias is not None:
                m.bias.zero_()
    mu, sd = x.mean(0), x.std(0) + 1e-5
    xn = (x - mu) / sd
    opt = torch.optim.AdamW(proj.parameters(), lr=lr, weight_decay=1e-2)
    per_epoch = len(x) // batch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * per_epoch)
    for _ in tqdm(range(epochs), desc="MLP fit", unit="epoch"):
        perm = torch.randperm(len(x), generator=g)
        for i in range(per_epoch):
            idx = perm[i * batch:(i + 1) * batch]
            pred = proj(xn[idx])
            loss = torch.nn.functional.mse_loss(pred, y[idx])
            loss = loss + 0.1 * (1 - torch.nn.functional.cosine_similarity(pred, y[idx], dim=-1)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():  # W (x - mu) / sd + b  ==  (W / sd) x + (b - W (mu / sd))
        w = first.weight.clone()
        first.weight.copy_(w / sd)
        if first.bias is not None:
            first.bias.copy_(first.bias - w @ (mu / sd))


def copy_adapters(model, src: Path) -> None:
    """Give `model` the LoRA adapters of the model at `src`. The adapters learnt to read visual tokens in
    SmolLM2's word space; a refitted connector lands in the same space, so they carry over. They were
    trained on `src`'s tower, so a different tower is an error, as is any adapter left over or missing."""
    from vlmkit.models.vlm import WEIGHTS_NAME, read_config
    from vlmkit.models.weights import load_strict, read_safetensors

    lora = read_config(src).lm.lora
    if lora is None:
        raise SystemExit(f"{src} has no LoRA adapters")
    state = read_safetensors(src / WEIGHTS_NAME)
    for k, v in model.vision.state_dict().items():
        theirs_v = state[f"vision.{k}"]  # compared at their precision: an fp16 export of the same tower matches
        if not torch.equal(v.to(theirs_v.dtype), theirs_v):
            raise SystemExit(f"{src} was trained on another tower (vision.{k} differs)")
    model.add_lora(lora)
    adapters = {k: v for k, v in state.items() if ".lora_" in k}
    # every tensor but the adapters is skipped (as VisionLanguageModel._skip_prefixes does for LoRA on a source
    # LM), so a missing, extra or misshapen adapter is the loader's error
    load_strict(model, adapters, tuple(k for k in model.state_dict() if ".lora_" not in k), source=str(src / WEIGHTS_NAME))
    log.info("copied %d LoRA tensors from %s", len(adapters), src)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe", help="the stage-1 recipe whose model (tower, connector kind, LM) is built")
    ap.add_argument("--out", required=True, help="model folder to write")
    ap.add_argument("--truth", nargs="+", default=["data/shapes/train/truth.jsonl", "data/text/train/truth.jsonl"])
    ap.add_argument("--images", type=int, default=2000, help="images per truth file")
    ap.add_argument("--val", type=float, default=0.1, help="share of images held out to report the fit")
    ap.add_argument("--lam", type=float, default=1e-3, help="ridge penalty (linear projection)")
    ap.add_argument("--epochs", type=int, default=12, help="regression epochs (MLP projection: connector.hidden_dim > 0)")
    ap.add_argument("--seed", type=int, default=0, help="MLP init and data order")
    ap.add_argument("--targets", choices=TARGETS, default="cover", help="cover: every cell an object covers names it "
                    "in full; instance: only the cell holding its centre does, the others its colour")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override")
    ap.add_argument("--adapters-from", metavar="MODEL", help="copy this model's LoRA adapters onto the fitted model, "
                    "so that stage 2 goes on from them (its tower must be the recipe's, tensor for tensor)")
    a = ap.parse_args()

    from vlmkit.train.config import load_config
    from vlmkit.train.stages import build_vlm

    stage = build_vlm(load_config(a.recipe, a.set))
    model, tok = stage.model.eval(), stage.tokenizer
    proj = getattr(model.connector, "proj", None)
    if model.cfg.connector.kind != "pixel_shuffle":
        raise SystemExit("fit_connector fits the pixel_shuffle connector's projection; this recipe builds "
                         f"{model.cfg.connector.kind}")
    x, y = collect(model, tok, [Path(p) for p in a.truth], a.images, targets=a.targets)
    n_tok = len(token_regions(model.cfg.vision, model.connector))  # merged cells per image
    n_img = len(x) // n_tok
    cut = int(n_img * (1 - a.val)) * n_tok  # hold out whole images, not tokens of seen images
    if isinstance(proj, torch.nn.Linear):
        w, b = ridge(x[:cut], y[:cut], a.lam)
        with torch.no_grad():
            proj.weight.copy_(w)
            proj.bias.copy_(b)
    else:  # connector.hidden_dim > 0
        fit_mlp(x[:cut], y[:cut], proj, a.epochs, seed=a.seed)
    with torch.no_grad():
        d_lm = model.cfg.connector.out_dim
        pred, y = proj(x[cut:]).reshape(-1, d_lm), y[cut:].reshape(-1, d_lm)  # [M_val * k, D_lm]
        emb = model.lm.model.get_input_embeddings().weight  # [V, D_lm]
        # does the nearest vocabulary entry of each held-out prediction match its target's?
        top = lambda v: (torch.nn.functional.normalize(v, dim=-1) @ torch.nn.functional.normalize(emb, dim=-1).T).argmax(-1)
        agree = (top(pred) == top(y)).float().mean().item()
        cos = torch.nn.functional.cosine_similarity(pred, y, dim=-1).mean().item()
    log.info("fit on %d merged cells (%d images), held out %d images: cosine to target %.3f, nearest-token "
             "agreement %.3f, prediction norm %.2f vs target %.2f", cut, cut // n_tok, n_img - cut // n_tok, cos,
             agree, pred.norm(dim=-1).mean(), y.norm(dim=-1).mean())
    if a.adapters_from:
        copy_adapters(model, Path(a.adapters_from))
    out = Path(a.out)
    model.save_pretrained(out, tokenizer=tok)
    (out / "fit_connector.json").write_text(json.dumps(dict(recipe=a.recipe, overrides=a.set, truth=a.truth,
                                                            images=a.images, lam=a.lam, epochs=a.epochs, targets=a.targets,
                                                            held_out_cosine=cos, held_out_token_agreement=agree), indent=1))
    log.info("wrote %s", out)


if __name__ == "__main__":
    main()
