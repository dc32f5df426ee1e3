from ...lmms_adapter import VlmkitLMMS

__all__ = ["VlmkitLMMS"]
