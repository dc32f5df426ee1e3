"""vlmkit budget: price a request (images, tiling policy, connector, LM) before running it."""
from __future__ import annotations

import re

_SIZE = re.compile(r"^(\d+)[xX](\d+)$")


def register(sub) -> None:
    from ..processing.budget import LM_PRESETS, ON_OVER, VISION_PRESETS
    from ..processing.tiling import POLICIES

    p = sub.add_parser(
        "budget",
        help="visual tokens per image, total, KV-cache bytes and whether a request fits the context",
        description="Images are files (only their headers are read) or sizes such as 1344x672.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image file or WIDTHxHEIGHT")
    p.add_argument("--policy", default="resize", choices=POLICIES, help="tiling policy (default: resize)")
    p.add_argument("--model", default=None, help="read the tower, connector and LM from a vlmkit model directory")
    p.add_argument("--vision", default="clip-vit-l-14-336", help=f"tower preset: {', '.join(VISION_PRESETS)}")
    p.add_argument("--connector", default="mlp2x_gelu", help="linear | mlp2x_gelu | pixel_shuffle | ...")
    p.add_argument("--scale-factor", type=int, default=2, help="pixel_shuffle factor r")
    p.add_argument("--lm", default="vicuna-7b", help=f"LM preset: {', '.join(LM_PRESETS)}")
    p.add_argument("--tile-size", type=int, default=None, help="tile side in px (default: the tower's image size)")
    p.add_argument("--grid", type=int, default=None, metavar="N",
                   help="anyres: every rows x cols grid with at most N tiles as pinpoints (default: LLaVA-NeXT's five)")
    p.add_argument("--max-tiles", type=int, default=0, help="anyres / split: at most this many tiles per image")
    p.add_argument("--longest-edge", type=int, default=0, help="split: resize the longest edge to this first (default 4 tiles)")
    p.add_argument("--max-patches", type=int, default=0, help="native: at most this many patches per image")
    p.add_argument("--no-thumbnail", action="store_true", help="anyres / split: leave out the global image")
    p.add_argument("--text-tokens", type=int, default=0, help="tokens of the prompt's text")
    p.add_argument("--max-new-tokens", type=int, default=0, help="tokens to generate (their KV cache counts too)")
    p.add_argument("--context", type=int, default=None, help="LM context (default: the LM's)")
    p.add_argument("--dtype-bytes", type=int, default=2, help="bytes per KV element (2 for fp16/bf16, 4 for fp32)")
    p.add_argument("--on-over", default="error", choices=ON_OVER,
                   help="over the context: fail, or degrade (fewer tiles, then a plain resize)")
    p.set_defaults(func=run)


def _size(spec: str) -> tuple[tuple[int, int], str]:
    from ..processing.images import image_size

    m = _SIZE.match(spec)
    if m:
        return (int(m.group(1)), int(m.group(2))), spec
    return image_size(spec), spec  # header only; ImageError for missing or unreadable files


def run(args) -> int:
    from ..errors import VlmkitError
    from ..processing.budget import human_bytes, plan_request, preset_configs
    from ..processing.tiling import TilingConfig, grid_pinpoints

    if args.model:
        from pathlib import Path

        from ..models.vlm import read_config

        cfg = read_config(Path(args.model))
        vision, connector, lm = cfg.vision, cfg.connector, cfg.lm
        if not lm.max_position_embeddings:
            raise VlmkitError(f"{args.model}: config.json has no LM shape (lm.hf_config); pass --lm PRESET instead")
    else:
        vision, connector, lm = preset_configs(args.vision, args.lm, args.connector, args.scale_factor)
    tile = args.tile_size or vision.image_size
    try:
        tiling = TilingConfig(
            policy=args.policy, tile_size=tile, patch_size=vision.patch_size, max_tiles=args.max_tiles,
            longest_edge=args.longest_edge, max_patches=args.max_patches, thumbnail=not args.no_thumbnail,
            pinpoints=grid_pinpoints(tile, args.grid) if args.grid else None,
        )
        sized = [_size(s) for s in args.images]
        plan = plan_request([s for s, _ in sized], tiling, vision, connector, lm, args.text_tokens, args.max_new_tokens,
                            args.dtype_bytes, args.on_over, args.context, names=[n for _, n in sized])
    except ValueError as e:
        raise VlmkitError(str(e)) from None
    print(f"{args.policy} tiling | tower {args.vision if not args.model else vision.kind} | connector {connector.kind} | "
          f"LM {args.lm if not args.model else lm.source}")
    name_w = max(len("image"), *(len(c.name) for c in plan.images))
    print(f"  {'image':<{name_w}}  {'size':>11}  {'tiles':>5}  {'visual tokens':>13}  layout")
    for c in plan.images:
        size = f"{c.size[0]}x{c.size[1]}"
        print(f"  {c.name:<{name_w}}  {size:>11}  {c.grid.num_tiles:>5}  {c.visual_tokens:>13,}  {c.grid_text}")
    rows = plan.summary_rows()
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    print(f"  {'KV cache per token':<{width}}  {human_bytes(plan.kv_bytes_per_token)}")
    return 0
