"""Reading per-step logits: transition scores, entropy, top-k alternatives, margins. Pure numpy."""

from __future__ import annotations

import numpy as np

from .numerics import log_softmax, logsumexp


def compute_transition_scores(result, normalize_logits: bool = False) -> np.ndarray:
    """transformers' ``compute_transition_scores`` for a t5ort result (greedy, sampling or beam).

    Uses ``result.scores`` (generate with ``output_scores=True``) and, for beam
    search, ``result.beam_indices``. Returns float32 [rows, steps]: the processed
    score of each chosen token (log-softmax of it with ``normalize_logits=True``),
    0 after a beam hypothesis ended.
    """
    if result.scores is None:
        raise ValueError("compute_transition_scores needs result.scores; generate with output_scores=True.")
    scores = log_softmax(result.scores) if normalize_logits else result.scores  # [rows, steps, vocab]
    steps = scores.shape[1]
    if result.beam_indices is None:
        beam_indices = np.broadcast_to(np.arange(scores.shape[0])[:, None], (scores.shape[0], steps))
    else:
        beam_indices = result.beam_indices
    length = int((beam_indices >= 0).sum(axis=-1).max())
    beam_indices = beam_indices[:, :length]
    ended = beam_indices < 0
    rows = np.where(ended, 0, beam_indices)
    tokens = result.sequences[:, result.sequences.shape[1] - length:]
    out = scores[rows, np.arange(length)[None, :], tokens]
    return np.where(ended, 0.0, out).astype(np.float32)


def entropy(logits: np.ndarray) -> np.ndarray:
    """Entropy (nats) of softmax(logits) over the last axis."""
    logp = logits - logsumexp(logits)
    return -(np.exp(logp) * logp).sum(axis=-1).astype(np.float32)


def top_alternatives(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most likely tokens under softmax(logits) over the last axis, best first: (ids int64, probs float32)."""
    if not 1 <= k <= logits.shape[-1]:
        raise ValueError(f"k must be in [1, {logits.shape[-1]}], got {k}.")
    ids = np.argpartition(-logits, k - 1, axis=-1)[..., :k]
    top = np.take_along_axis(logits, ids, axis=-1)
    order = np.argsort(-top, axis=-1, kind="stable")
    ids, top = np.take_along_axis(ids, order, axis=-1), np.take_along_axis(top, order, axis=-1)
    return ids.astype(np.int64), np.exp(top - logsumexp(logits)).astype(np.float32)


def margin(logits: np.ndarray) -> np.ndarray:
    """Probability of the most likely token minus that of the runner-up, over the last axis."""
    _, probs = top_alternatives(logits, 2)
    return (probs[..., 0] - probs[..., 1]).astype(np.float32)
