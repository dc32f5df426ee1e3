"""Errors that the CLI and the server turn into one clear line each."""


class VlmkitError(Exception):
    """Base class: the message is meant for the user, as it is."""


class ImageError(VlmkitError):
    """A file is missing, is not an image, or breaks a size limit."""


class ModelLoadError(VlmkitError):
    """A directory is not a vlmkit/HF model, or its weights do not match its config."""


class BudgetError(VlmkitError):
    """A request needs more tokens than the LM context holds."""
