"""Export a T5 checkpoint to ONNX: the only part of t5ort that imports torch, transformers and optimum.

Importing this package is cheap; torch is imported when :func:`export` runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence


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
    renames it into place only when the parity gate passed. The gate teacher-forces the
    export's greedy tokens of ``check_steps`` steps through PyTorch fp32 and float64 (a
    ``.double()`` copy; where it does not fit in memory, fp32 alone, said in the manifest) and
    passes when the raw logits are within ``atol + rel_tol * max|logit|`` of fp32, or when their
    distance to float64 is at most k (:data:`t5ort.export.parity.K`) times PyTorch fp32's own:
    on checkpoints with large activations (T5 v1.1, Flan-T5, mT5) fp32 itself is ~1e-3 off.
    Every figure is stored in ``t5ort.json`` (``parity``). An existing ``out_dir`` is refused unless
    ``force=True``. ``quantize="int8"`` then replaces both graphs by dynamically
    quantized ones (int8 weights, one scale per tensor) and records their fidelity against
    fp32 in the manifest; ``quantize="int4"`` does the same with 4-bit weights (onnxruntime's
    MatMulNBits and GatherBlockQuantized, symmetric blocks of 128: faster than int8 at batch 1,
    slower at batch 16). ``dtype="float16"`` instead converts both graphs to half
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


def check(
    out_dir: str | Path,
    checkpoint: str | Path,
    texts: Sequence[str] | None = None,
    *,
    input_ids=None,
    attention_mask=None,
    num_beams: int = 1,
    max_new_tokens: int = 20,
    atol: float = 1e-4,
    rel_tol: float = 2e-6,
    k: float | None = None,
    progress: Callable[[str], None] | None = None,
):
    """Re-check the export in ``out_dir`` against its PyTorch ``checkpoint`` on your own inputs.

    Each input (``texts``, or rows of ``input_ids`` with a right-padded ``attention_mask``; by default
    the export gate's two random check inputs) runs alone, greedy and, with ``num_beams > 1``, beam
    search too, through the export and through transformers' ``generate`` with the same options. Per
    input and strategy it measures whether the sequences are equal, and the export's raw logits' max
    |diff| against PyTorch fp32 and against float64 on the export's own tokens (teacher-forced),
    with PyTorch fp32's own distance to float64 and the ratio. An input passes when its sequences
    are equal and its logits pass the export gate's rule: within ``atol + rel_tol * max|logit|`` of
    fp32, or within ``k`` (default :data:`t5ort.export.parity.K`) times fp32's own distance to
    float64. Where a float64 copy of the model does not fit in memory, only the first rule applies
    and the result says so.

    Raises :class:`~t5ort.export.recheck.CheckpointMismatchError` (an ``ExportError``) when
    ``checkpoint`` is not the one the export was made from. Returns a
    :class:`~t5ort.export.recheck.CheckResult`; its ``passed`` is the verdict.
    """
    from . import parity
    from .recheck import check as run_check

    return run_check(out_dir, checkpoint, texts, input_ids=input_ids, attention_mask=attention_mask,
                     num_beams=num_beams, max_new_tokens=max_new_tokens, atol=atol, rel_tol=rel_tol,
                     k=parity.K if k is None else k, progress=progress)


# ``t5ort.export`` names the function export() (t5ort/__init__.py imports it over the package name),
# so the check is reachable from it too: t5ort.export.check(...) and `from t5ort.export import check` alike.
export.check = check

__all__ = ["check", "export"]
