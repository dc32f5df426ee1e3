"""vlmkit: vision tower -> connector -> LM, for building, training, evaluating and serving VLMs."""
from .api import VLM, load
from .config import ConnectorConfig, LMConfig, VisionConfig, VLMConfig
from .generation import GenerationConfig
from .models.vlm import VisionLanguageModel

__all__ = ["VLM", "load", "VLMConfig", "VisionConfig", "ConnectorConfig", "LMConfig", "GenerationConfig", "VisionLanguageModel"]
__version__ = "0.1.0"
