"""The run-time half of t5ort: numpy, onnxruntime and tokenizers only."""

from .options import GenerationOptions
from .analysis import compute_transition_scores
from .errors import ArtifactError, ExportError, ParityError, ProviderError, T5ortError
from .decoder import Decoder
from .graphs import EncoderOutput
from .model import T5Runtime, load
from .results import GenerationResult, ScoreResult, StepEvent

__all__ = [
    "ArtifactError",
    "Decoder",
    "EncoderOutput",
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
