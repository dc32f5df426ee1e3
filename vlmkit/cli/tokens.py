"""vlmkit tokens: visual tokens, connector size and KV-cache bytes for a tower, connector and image size.

`--connector all` compares every connector (and the Flamingo fusion mode) side by side.
"""
from __future__ import annotations

# "flamingo" = a Perceiver resampler read by gated cross-attention (models/fusion.py), not a connector kind
ZOO = ("linear", "mlp2x_gelu", "pixel_shuffle", "qformer", "perceiver", "cabstractor", "flamingo")


def register(sub) -> None:
    from ..processing.budget import LM_PRESETS, VISION_PRESETS

    p = sub.add_parser("tokens", help="count visual tokens, connector parameters and KV-cache bytes")
    p.add_argument("--vision", default="clip-vit-l-14-336", help=f"tower preset: {', '.join(VISION_PRESETS)}")
    p.add_argument("--model", default=None, help="read the tower, connector and LM from a vlmkit model directory instead")
    p.add_argument("--image-size", type=int, default=None, help="input resolution (default: the tower's)")
    p.add_argument("--patch-size", type=int, default=None)
    p.add_argument("--vision-hidden", type=int, default=None, help="tower width D_vision")
    p.add_argument("--keep-cls", action="store_true", help="hand the CLS token to the connector too")
    p.add_argument("--connector", default="mlp2x_gelu", help=f"{' | '.join(ZOO)}, or 'all' for a comparison table")
    p.add_argument("--scale-factor", type=int, default=2, help="pixel_shuffle factor r")
    p.add_argument("--num-queries", type=int, default=0, help="qformer/perceiver/cabstractor output tokens (0 = 32/64/144)")
    p.add_argument("--fusion-every", type=int, default=4, help="flamingo: a gated cross-attention block every k-th LM layer")
    p.add_argument("--lm", default="vicuna-7b", help=f"LM preset: {', '.join(LM_PRESETS)}")
    p.add_argument("--lm-hidden", type=int, default=None, help="LM width D_lm (overrides the preset)")
    p.add_argument("--dtype-bytes", type=int, default=2, help="bytes per KV element (2 for fp16/bf16, 4 for fp32)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..config import LMConfig, VisionConfig
    from ..errors import VlmkitError
    from ..processing.budget import LM_PRESETS, VISION_PRESETS

    if args.model:
        from ..models.vlm import read_config
        from pathlib import Path

        cfg = read_config(Path(args.model))
        vision, connector, lm, fusion = cfg.vision, cfg.connector, cfg.lm, cfg.fusion
    else:
        if args.vision not in VISION_PRESETS:
            raise VlmkitError(f"unknown --vision preset {args.vision!r}; choose from {', '.join(VISION_PRESETS)}")
        if args.lm not in LM_PRESETS:
            raise VlmkitError(f"unknown --lm preset {args.lm!r}; choose from {', '.join(LM_PRESETS)}")
        v = dict(VISION_PRESETS[args.vision])
        if args.patch_size:
            v["patch_size"] = args.patch_size
        if args.vision_hidden:
            v["hidden_size"] = args.vision_hidden
        if args.image_size:
            v["image_size"] = args.image_size
        try:
            vision = VisionConfig(keep_cls=args.keep_cls, **v)
        except ValueError as e:
            raise VlmkitError(str(e)) from None
        l = dict(LM_PRESETS[args.lm])
        if args.lm_hidden:
            l["hidden_size"] = args.lm_hidden
        lm = LMConfig(source=args.lm, hf_config=l)
        if args.connector not in ZOO + ("all",):
            raise VlmkitError(f"unknown --connector {args.connector!r}; choose from {', '.join(ZOO)}, all")
        if args.connector == "all":
            return _compare(args, vision, lm)
    try:
        if not args.model:
            connector, fusion = _zoo_configs(args.connector, args)
        p, read = plan_fused(vision, connector, lm, fusion, args.image_size, args.dtype_bytes)
    except ValueError as e:
        raise VlmkitError(str(e)) from None
    name = "flamingo (perceiver + gated cross-attention)" if fusion.kind == "flamingo" else connector.kind
    print(f"vision {args.vision if not args.model else vision.kind} | connector {name} | LM {args.lm if not args.model else lm.source}")
    rows = p.rows()
    if fusion.kind != "none":
        rows.insert(3, ("visual tokens read by cross-attention", f"{read:,}"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    return 0


def _zoo_configs(kind: str, args):
    """(ConnectorConfig, FusionConfig) for a ZOO name."""
    from ..config import ConnectorConfig, FusionConfig

    fused = kind == "flamingo"
    connector = ConnectorConfig(kind="perceiver" if fused else kind, scale_factor=args.scale_factor, num_queries=args.num_queries)
    return connector, FusionConfig(kind="flamingo" if fused else "none", every=args.fusion_every)


def plan_fused(vision, connector, lm, fusion, image_size, dtype_bytes):
    """(budget.plan, visual tokens the LM reads per image). In the fusion mode the sequence holds one
    marker per image, the cross-attention blocks count as trainable, and their cached visual
    keys/values count as KV bytes."""
    import dataclasses

    import torch

    from ..models.fusion import FlamingoFusion
    from ..processing.budget import plan

    p = plan(vision, connector, lm, image_size, dtype_bytes)
    read = p.visual_tokens
    if fusion.kind == "none":
        return p, read
    with torch.device("meta"):  # exact counts without allocating
        blocks = FlamingoFusion(fusion, lm.hidden_size, lm.num_layers)
    n_blocks = len(blocks.layer_ids)
    xattn_kv = n_blocks * 2 * read * lm.hidden_size * dtype_bytes  # K and V of each image's tokens, per block
    p = dataclasses.replace(
        p,
        visual_tokens=1,
        connector_params=p.connector_params + sum(t.numel() for t in blocks.parameters()),
        kv_bytes_per_image=lm.kv_bytes_per_token(dtype_bytes) + xattn_kv,
    )
    return p, read


def _compare(args, vision, lm) -> int:
    from ..errors import VlmkitError
    from ..processing.budget import human_bytes

    rows = []
    for kind in ZOO:
        try:
            connector, fusion = _zoo_configs(kind, args)
            p, read = plan_fused(vision, connector, lm, fusion, args.image_size, args.dtype_bytes)
        except ValueError as e:
            rows.append((kind, "-", "-", "-", f"n/a: {e}"))
            continue
        kv = human_bytes(p.kv_bytes_per_image).split(" (")[0]
        rows.append((kind, f"{p.visual_tokens:,}", f"{read:,}", f"{p.connector_params:,}", kv))
    if all(r[1] == "-" for r in rows):
        raise VlmkitError(rows[0][4])
    size = args.image_size or vision.image_size
    print(f"vision {args.vision} at {size} px ({vision.tokens_at(size):,} tower tokens) | LM {args.lm} | KV at {args.dtype_bytes} B/element")
    head = ("connector", "tokens in LM sequence", "visual tokens read", "trainable params", "KV cache per image")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    for r in rows:
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
    print("flamingo: one <image> marker per image in the sequence; gated cross-attention reads the perceiver's tokens.")
    return 0
