"""Read by lmms-eval's plugin loader: model name -> class, found in the module of that name."""
AVAILABLE_MODELS = {"vlmkit": "VlmkitLMMS"}
