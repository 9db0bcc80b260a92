"""t5ort: T5-family models in ONNX, decoded with numpy + ONNX Runtime, with the raw logits of every step.

    rt = t5ort.load("out_dir")              # numpy + onnxruntime only
    res = rt.generate(["translate English to German: ..."], max_new_tokens=32)
    res.logits                              # float32 [N, steps, vocab], raw

    t5ort.export("checkpoint_dir", "out_dir")   # needs the [export] extra (torch)
"""

from .export import export  # light: torch is imported only when export() runs
from .runtime import (
    ArtifactError,
    ExportError,
    GenerationOptions,
    GenerationResult,
    ParityError,
    ProviderError,
    ScoreResult,
    StepEvent,
    T5ortError,
    T5Runtime,
    compute_transition_scores,
    load,
)

__version__ = "0.1.0"

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
    "export",
    "load",
]
