"""Stable softmax arithmetic over the last axis, shared by processors, strategies and analysis."""

from __future__ import annotations

import numpy as np


def logsumexp(x: np.ndarray) -> np.ndarray:
    """log(sum(exp(x))) over the last axis, stable; keeps that axis (size 1)."""
    peak = x.max(axis=-1, keepdims=True)
    shifted = np.subtract(x, peak, dtype=np.result_type(x, peak))
    np.exp(shifted, out=shifted)  # one temporary, reused
    return peak + np.log(shifted.sum(axis=-1, keepdims=True))


def log_softmax(x: np.ndarray, lse: np.ndarray | None = None) -> np.ndarray:
    """x - logsumexp(x) as float32; ``lse`` (the logsumexp, [..., 1]) when the caller has it already."""
    return (x - (logsumexp(x) if lse is None else lse)).astype(np.float32, copy=False)


def softmax(x: np.ndarray) -> np.ndarray:
    shifted = np.exp(x - x.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)
