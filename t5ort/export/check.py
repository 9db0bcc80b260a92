"""Parity at export time: the exported graphs, run by the t5ort runtime, against PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..runtime.errors import ParityError


def check_inputs(vocab_size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A right-padded batch of two random rows (lengths 7 and 13), avoiding the special ids 0..2."""
    rng = np.random.default_rng(seed)
    lengths = (7, 13)
    ids = np.zeros((len(lengths), max(lengths)), dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n] = rng.integers(3, vocab_size, size=n)
        mask[row, :n] = 1
    return ids, mask


def torch_logits(torch_model, input_ids: np.ndarray, attention_mask: np.ndarray, decoder_input_ids: np.ndarray):
    """Teacher-forced raw logits [N, T, vocab] from the PyTorch model."""
    import torch

    with torch.no_grad():
        out = torch_model(
            input_ids=torch.from_numpy(input_ids),
            attention_mask=torch.from_numpy(attention_mask),
            decoder_input_ids=torch.from_numpy(decoder_input_ids),
        )
    return out.logits.float().numpy()


def check_parity(torch_model, export_dir: Path, *, steps: int, atol: float, rel_tol: float) -> dict:
    """Decode ``steps`` greedy steps with the t5ort runtime, teacher-force the same tokens
    through PyTorch, and compare the raw logits of every step.

    Raises :class:`ParityError` when ``max|diff| > atol + rel_tol * max|logit|``.
    """
    from ..runtime.model import load

    runtime = load(export_dir)
    ids, mask = check_inputs(runtime.vocab_size)
    result = runtime.generate(input_ids=ids, attention_mask=mask, max_new_tokens=steps, min_new_tokens=steps)
    reference = torch_logits(torch_model, ids, mask, result.sequences[:, :-1])
    diff = float(np.abs(result.logits - reference).max())
    scale = float(np.abs(reference).max())
    tolerance = atol + rel_tol * scale
    report = {
        "max_abs_diff": diff,
        "max_abs_logit": scale,
        "tolerance": tolerance,
        "atol": atol,
        "rel_tol": rel_tol,
        "steps": int(result.num_steps),
        "batch": [int(n) for n in mask.sum(axis=1)],
        "reference": "PyTorch fp32, teacher-forced on the runtime's greedy tokens",
    }
    if not diff <= tolerance:  # also catches NaN
        raise ParityError(
            f"{export_dir}: the ONNX graphs' raw logits differ from PyTorch by up to {diff:.3g} "
            f"over {result.num_steps} steps, above the tolerance {tolerance:.3g} "
            f"(atol {atol:g} + rel_tol {rel_tol:g} x max|logit| {scale:.3g}). "
            "If this is expected, raise atol / --atol."
        )
    return report
