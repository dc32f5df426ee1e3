"""lmms-eval plugin registration for the "vlmkit" model, both ways lmms-eval supports.

Entry point (lmms-eval >= 0.6), declared in pyproject.toml:
    [project.entry-points."lmms_eval.models"]
    vlmkit = "vlmkit.eval.lmms_plugin:manifest"
Legacy environment variable: LMMS_EVAL_PLUGINS=vlmkit.eval.lmms_plugin (reads models/).
"""
CLASS_PATH = "vlmkit.eval.lmms_adapter.VlmkitLMMS"


def manifest():
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="vlmkit", simple_class_path=CLASS_PATH)
