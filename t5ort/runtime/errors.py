"""Exceptions raised by t5ort. Bad arguments raise plain ``ValueError``/``TypeError``."""


class T5ortError(Exception):
    """Base class of t5ort's own errors."""


class ArtifactError(T5ortError):
    """An export directory is missing, broken or of another format; the message names the file."""


class ProviderError(T5ortError):
    """The requested ONNX Runtime execution provider is not available."""


class ParityError(T5ortError):
    """Exported graphs disagree with PyTorch beyond the tolerance."""


class ExportError(T5ortError):
    """An export could not be done (bad model, existing output directory, ...)."""
