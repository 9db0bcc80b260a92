"""Stable softmax arithmetic over the last axis, shared by processors, strategies and analysis."""

from __future__ import annotations

import numpy as np


def logsumexp(x: np.ndarray) -> np.ndarray:
    """log(sum(exp(x))) over the last axis, stable; keeps that axis (size 1)."""
    peak = x.max(axis=-1, keepdims=True)
    return peak + np.log(np.exp(x - peak).sum(axis=-1, keepdims=True))


def log_softmax(x: np.ndarray) -> np.ndarray:
    return (x - logsumexp(x)).astype(np.float32, copy=False)


def softmax(x: np.ndarray) -> np.ndarray:
    shifted = np.exp(x - x.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)
