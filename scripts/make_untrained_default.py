"""Write weights/vlmkit-smol-untrained: a tiny random ViT + pixel-shuffle connector on SmolLM2.

This is the placeholder the main job runs until the trained default (vlmkit-smol)
exists. Its answers are not conditioned on anything meaningful in the image.
"""
import sys
from pathlib import Path

import torch

from vlmkit import ConnectorConfig, LMConfig, VisionConfig, VisionLanguageModel, VLMConfig

out = Path(sys.argv[1] if len(sys.argv) > 1 else "weights/vlmkit-smol-untrained")
torch.manual_seed(0)
cfg = VLMConfig(
    vision=VisionConfig(image_size=224, patch_size=16, hidden_size=96, num_layers=2, num_heads=2),
    connector=ConnectorConfig(kind="pixel_shuffle", scale_factor=2),
    lm=LMConfig(source="smollm2"),
    name="vlmkit-smol-untrained",
)
model = VisionLanguageModel(cfg)
model.save_pretrained(out)
n = sum(v.numel() for v in model.state_to_save().values())
print(f"wrote {out} ({n:,} trained-from-nothing parameters; {model.cfg.image_seq_len} visual tokens per image)")
