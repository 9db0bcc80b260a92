"""Stable softmax arithmetic over the last axis, shared by processors, strategies and analysis."""

from __future__ import annotations

import numpy as np


def logsumexp(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """log(sum(exp(x))) over the last axis, stable; keeps that axis (size 1).

    ``out``: an array of ``x``'s shape and dtype to use as the one temporary (a decoding
    loop passes the same one every step, so no step allocates and faults in fresh memory).
    """
    peak = x.max(axis=-1, keepdims=True)
    if out is None or out.shape != x.shape or out.dtype != np.result_type(x, peak):
        out = None
    shifted = np.subtract(x, peak, out=out, dtype=np.result_type(x, peak))
    np.exp(shifted, out=shifted)
    return peak + np.log(shifted.sum(axis=-1, keepdims=True))


def checked(lse: np.ndarray, where: str) -> np.ndarray:
    """The decoder graph's logsumexp of one step's raw logits ([rows] or [rows, 1]), after checking it: the
    graph makes a row's logsumexp NaN or infinite where any of its logits is NaN or infinite, so this check
    over [rows] values stands for one over [rows, vocab]. Raises FloatingPointError naming the rows and
    ``where``."""
    if not np.isfinite(lse).all():
        rows = np.flatnonzero(~np.isfinite(lse.reshape(len(lse), -1)).all(axis=-1)).tolist()
        raise FloatingPointError(f"non-finite raw logits (NaN or inf) {where}, decoder rows {rows}.")
    return lse


def log_softmax(x: np.ndarray, lse: np.ndarray | None = None) -> np.ndarray:
    """x - logsumexp(x) as float32; ``lse`` (the logsumexp, [..., 1]) when the caller has it already."""
    return (x - (logsumexp(x) if lse is None else lse)).astype(np.float32, copy=False)


def softmax(x: np.ndarray) -> np.ndarray:
    shifted = np.exp(x - x.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)
