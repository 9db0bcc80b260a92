"""Export a T5 checkpoint to ONNX: the only part of t5ort that imports torch, transformers and optimum.

Importing this package is cheap; torch is imported when :func:`export` runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable


def export(
    model: str | Path,
    out_dir: str | Path,
    *,
    force: bool = False,
    atol: float = 1e-4,
    rel_tol: float = 2e-6,
    check_steps: int = 8,
    quantize: str | None = None,
    dtype: str = "float32",
    progress: Callable[[str], None] | None = None,
):
    """Export ``model`` (a checkpoint directory or hub id) to ``out_dir`` and check it against PyTorch.

    Writes the encoder graph (which also computes the cross-attention keys/values),
    the decoder step graph, their shared ``weights.bin``, the tokenizer, the
    generation defaults and ``t5ort.json`` into a temporary directory beside ``out_dir`` and
    renames it into place only when the parity check passed: the raw logits of
    ``check_steps`` decoding steps must agree with PyTorch within
    ``atol + rel_tol * max|logit|``. An existing ``out_dir`` is refused unless
    ``force=True``. ``quantize="int8"`` then replaces both graphs by dynamically
    quantized ones (int8 weights, one scale per tensor) and records their fidelity against
    fp32 in the manifest. ``dtype="float16"`` instead converts both graphs to half
    precision for the CUDA provider (residual adds, RMSNorms and feed-forward output
    projections stay float32, so T5's fp16 overflow cannot happen; caches float16,
    logits float32) and checks them against PyTorch fp32 within
    ``2e-2 + 1e-2 * max|logit|``. ``progress`` receives a short message at each stage.
    Returns the written :class:`~t5ort.runtime.manifest.Manifest`.
    """
    from .exporter import export_model

    return export_model(
        model, out_dir, force=force, atol=atol, rel_tol=rel_tol, check_steps=check_steps, quantize=quantize,
        dtype=dtype, progress=progress,
    )


__all__ = ["export"]
