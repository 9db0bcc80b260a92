"""The run-time half of t5ort: numpy, onnxruntime and tokenizers only."""

from .options import GenerationOptions
from .analysis import compute_transition_scores
from .errors import ArtifactError, ExportError, ParityError, ProviderError, T5ortError
from .model import GenerationResult, ScoreResult, StepEvent, T5Runtime, load

__all__ = [
    "ArtifactError",
    "ExportError",
    "GenerationOptions",
    "GenerationResult",
    "ParityError",
    "ProviderError",
    "ScoreResult",
    "StepEvent",
    "T5Runtime",
    "T5ortError",
    "compute_transition_scores",
    "load",
]
