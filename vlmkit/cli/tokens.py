"""vlmkit tokens: visual tokens, connector size and KV-cache bytes for a tower, connector and image size."""
from __future__ import annotations


def register(sub) -> None:
    from ..processing.budget import LM_PRESETS, VISION_PRESETS

    p = sub.add_parser("tokens", help="count visual tokens, connector parameters and KV-cache bytes")
    p.add_argument("--vision", default="clip-vit-l-14-336", help=f"tower preset: {', '.join(VISION_PRESETS)}")
    p.add_argument("--model", default=None, help="read the tower, connector and LM from a vlmkit model directory instead")
    p.add_argument("--image-size", type=int, default=None, help="input resolution (default: the tower's)")
    p.add_argument("--patch-size", type=int, default=None)
    p.add_argument("--vision-hidden", type=int, default=None, help="tower width D_vision")
    p.add_argument("--keep-cls", action="store_true", help="hand the CLS token to the connector too")
    p.add_argument("--connector", default="mlp2x_gelu", help="linear | mlp2x_gelu | pixel_shuffle | ...")
    p.add_argument("--scale-factor", type=int, default=2, help="pixel_shuffle factor r")
    p.add_argument("--lm", default="vicuna-7b", help=f"LM preset: {', '.join(LM_PRESETS)}")
    p.add_argument("--lm-hidden", type=int, default=None, help="LM width D_lm (overrides the preset)")
    p.add_argument("--dtype-bytes", type=int, default=2, help="bytes per KV element (2 for fp16/bf16, 4 for fp32)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..config import ConnectorConfig, LMConfig, VisionConfig
    from ..errors import VlmkitError
    from ..processing.budget import LM_PRESETS, VISION_PRESETS, plan

    if args.model:
        from ..models.vlm import read_config
        from pathlib import Path

        cfg = read_config(Path(args.model))
        vision, connector, lm = cfg.vision, cfg.connector, cfg.lm
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
        connector = ConnectorConfig(kind=args.connector, scale_factor=args.scale_factor)
    try:
        p = plan(vision, connector, lm, args.image_size, args.dtype_bytes)
    except ValueError as e:
        raise VlmkitError(str(e)) from None
    print(f"vision {args.vision if not args.model else vision.kind} | connector {connector.kind} | LM {args.lm if not args.model else lm.source}")
    width = max(len(k) for k, _ in p.rows())
    for k, v in p.rows():
        print(f"  {k:<{width}}  {v}")
    return 0
