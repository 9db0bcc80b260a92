"""t5ort: T5-family models in ONNX, decoded with numpy + ONNX Runtime, with the raw logits of every step.

    rt = t5ort.load("out_dir")              # numpy + onnxruntime only
    res = rt.generate(["translate English to German: ..."], max_new_tokens=32)
    res.logits                              # float32 [N, steps, vocab], raw

    t5ort.export("checkpoint_dir", "out_dir")   # needs the [export] extra (torch)
"""

from . import runtime
from .export import export  # light: torch is imported only when export() runs
from .runtime import *  # noqa: F403  (the runtime's public names: load, T5Runtime, results, errors)

__version__ = "0.3.0"

__all__ = [*runtime.__all__, "export"]
