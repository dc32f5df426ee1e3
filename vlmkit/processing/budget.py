"""Visual token arithmetic: what an image costs the LM before anyone pays for it."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import ConnectorConfig, LMConfig, VisionConfig

# Towers as the field quotes them (image size, patch, width, class token).
VISION_PRESETS = {
    "clip-vit-b-16": dict(image_size=224, patch_size=16, hidden_size=768, num_layers=12, num_heads=12, use_cls=True),
    "clip-vit-l-14": dict(image_size=224, patch_size=14, hidden_size=1024, num_layers=24, num_heads=16, use_cls=True),
    "clip-vit-l-14-336": dict(image_size=336, patch_size=14, hidden_size=1024, num_layers=24, num_heads=16, use_cls=True),
    "siglip-so400m-14-384": dict(image_size=384, patch_size=14, hidden_size=1152, num_layers=27, num_heads=16, use_cls=False),
    "siglip-b-16-512": dict(image_size=512, patch_size=16, hidden_size=768, num_layers=12, num_heads=12, use_cls=False),
    "vlmkit-vit": dict(image_size=224, patch_size=16, hidden_size=192, num_layers=6, num_heads=3, use_cls=True),
}

# Decoder shapes that set KV-cache size (hidden, layers, heads, kv heads, head dim, context).
LM_PRESETS = {
    "smollm2-135m": dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, head_dim=64, vocab_size=49152, max_position_embeddings=8192),
    "smollm2-360m": dict(hidden_size=960, num_hidden_layers=32, num_attention_heads=15, num_key_value_heads=5, head_dim=64, vocab_size=49152, max_position_embeddings=8192),
    "vicuna-7b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32, head_dim=128, vocab_size=32000, max_position_embeddings=4096),
    "llama3-8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=128256, max_position_embeddings=8192),
}


@dataclass
class TokenPlan:
    image_size: int
    tower_tokens: int  # out of the vision tower (patches, plus CLS if kept)
    visual_tokens: int  # handed to the LM per image, after the connector
    connector_params: int
    kv_bytes_per_image: int
    context: int

    def rows(self) -> list[tuple[str, str]]:
        return [
            ("image size", f"{self.image_size} px"),
            ("tower tokens", f"{self.tower_tokens:,}"),
            ("visual tokens to the LM (per image)", f"{self.visual_tokens:,}"),
            ("connector parameters", f"{self.connector_params:,}"),
            ("KV cache for the visual tokens", human_bytes(self.kv_bytes_per_image)),
            ("LM context", f"{self.context:,}"),
            ("images that fit the context", f"{self.context // max(1, self.visual_tokens):,}"),
        ]


def connector_param_count(cfg: ConnectorConfig) -> int:
    """Built on the meta device: exact counts, no memory, even for 7B-sized projectors."""
    from ..models.connectors import build_connector

    with torch.device("meta"):
        module = build_connector(cfg)
    return sum(p.numel() for p in module.parameters())


def plan(vision: VisionConfig, connector: ConnectorConfig, lm: LMConfig, image_size: int | None = None, dtype_bytes: int = 2) -> TokenPlan:
    size = image_size or vision.image_size
    if size % vision.patch_size:
        raise ValueError(f"image size {size} is not a multiple of the patch size {vision.patch_size}")
    connector.in_dim, connector.out_dim = vision.hidden_size, lm.hidden_size
    connector.__post_init__()
    tower = vision.tokens_at(size)
    visual = connector.num_output_tokens(tower)
    return TokenPlan(size, tower, visual, connector_param_count(connector), visual * lm.kv_bytes_per_token(dtype_bytes), lm.max_position_embeddings)


def human_bytes(n: int) -> str:
    if n < 1024:
        return f"{n:,} B"
    x, unit = float(n), "B"
    for unit in ("KiB", "MiB", "GiB"):
        x /= 1024
        if x < 1024:
            break
    return f"{x:,.2f} {unit} ({n:,} B)"
