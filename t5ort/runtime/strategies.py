"""Decoding strategies: greedy, sampling and beam search behind one small interface.

A strategy owns the running sequences. Each step the loop hands it the raw
logits and the processed scores; it answers with the next token of every
decoder row, the source row of each (beam search reorders rows; None means
"no reordering"), and whether decoding is done. ``finalize()`` returns the
result arrays. All pure numpy; semantics follow transformers 4.5x.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .numerics import log_softmax
from .stopping import StoppingCriterion, any_done

NEG = np.float32(-1.0e9)  # transformers' "impossible" score for beams


CHUNK = 256  # top_k's first pass: the maximum of every CHUNK consecutive scores


def top_k(x: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values of each row of ``x`` [B, M], best first; lower index first on ties."""
    if x.shape[1] <= 4 * k:
        return np.argsort(-x, axis=1, kind="stable")[:, :k]
    return top_k_shifted(x[:, None, :], np.zeros((len(x), 1), x.dtype), k)


@functools.lru_cache(maxsize=16)
def _chunk_layout(groups: int, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """For rows of ``groups`` groups of ``vocab`` scores: the first flat position of every chunk of ``CHUNK``
    within a group ([groups * chunks], ascending), and every chunk's flat positions ([groups * chunks, CHUNK],
    -1 past its group's end)."""
    starts = np.arange(0, vocab, CHUNK)
    within = starts[:, None] + np.arange(CHUNK)  # [chunks, CHUNK]: positions within a group
    positions = np.arange(groups)[:, None, None] * vocab + within  # [groups, chunks, CHUNK]
    positions[:, within >= vocab] = -1
    first = (np.arange(groups)[:, None] * vocab + starts).ravel()
    for array in (first, positions):
        array.flags.writeable = False
    return first, positions.reshape(-1, CHUNK)


def top_k_shifted(x: np.ndarray, offsets: np.ndarray, k: int) -> np.ndarray:
    """The k largest of ``x + offsets[:, :, None]`` over each row's groups: ``x`` [B, G, V], ``offsets`` [B, G]
    (beam search: every beam's scores plus its running score). Flat indices into [G * V], best first, lower
    index first on ties: ``top_k`` of the sum reshaped to [B, G * V], without writing the sum.

    For long rows a first pass takes the maximum of each chunk of 256 of a group; the sum's chunk maxima are
    those plus the group's offset (rounding is monotonic), and only the chunks whose maximum reaches the k-th
    largest maximum can hold a top-k value (k distinct chunks reach it, so the k-th largest value is at least
    that high): the exact stable sort runs on those few chunks instead of the whole row.
    """
    b, g, v = x.shape
    if g * v <= 4 * k:
        return np.argsort(-(x + offsets[:, :, None]).reshape(b, g * v), axis=1, kind="stable")[:, :k]
    first, positions = _chunk_layout(g, v)
    n = len(first)
    out = np.empty((b, k), dtype=np.int64)
    for row in range(b):
        values = x[row].reshape(-1)
        maxima = np.maximum.reduceat(values, first)  # [G * chunks]
        maxima.reshape(g, -1)[...] += offsets[row][:, None]
        chunks = np.flatnonzero(maxima >= np.partition(maxima, n - k)[n - k]) if n > k else np.arange(n)
        idx = positions[chunks].ravel()
        idx = idx[idx >= 0]  # ascending
        out[row] = idx[_top_k_of(values[idx] + offsets[row][idx // v], k)]
    return out


def _top_k_of(values: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k largest of ``values`` [n >= k], best first, lower position first on ties: the
    k-th largest value by a partition, then a sort of just the k chosen (a stable sort of all n costs
    several times more)."""
    n = len(values)
    kth = np.partition(values, n - k)[n - k]
    above = np.flatnonzero(values > kth)  # fewer than k
    chosen = np.concatenate([above, np.flatnonzero(values == kth)[: k - len(above)]])
    return chosen[np.lexsort((chosen, -values[chosen]))]


@dataclass(frozen=True, eq=False)
class SearchOutput:
    sequences: np.ndarray  # int64 [rows_out, 1 + steps]
    token_logprobs: np.ndarray  # float32 [rows_out, steps]: log-softmax of the raw logits at each chosen token
    sequences_scores: np.ndarray | None = None  # beam search: length-normalised hypothesis scores
    beam_indices: np.ndarray | None = None  # beam search: [rows_out, steps], flat row index of each token, -1 after


# ---- greedy and sampling -----------------------------------------------------------


class SingleSequenceSearch:
    """One sequence per decoder row: greedy (argmax) or sampling. Finished rows get ``pad_token_id``."""

    def __init__(self, rows: int, max_new_tokens: int, *, start_token_id: int, pad_token_id: int,
                 criteria: Sequence[StoppingCriterion], rngs: Sequence[np.random.Generator] | None = None):
        self.sequences = np.empty((rows, 1 + max_new_tokens), dtype=np.int64)
        self.sequences[:, 0] = start_token_id
        self.length = 1
        self.finished = np.zeros(rows, dtype=bool)
        self.token_logprobs = np.zeros((rows, max_new_tokens), dtype=np.float32)
        self.pad_token_id = pad_token_id
        self.criteria = criteria
        self.rngs = rngs  # one generator per row: sampling; None: greedy

    @property
    def input_ids(self) -> np.ndarray:
        return self.sequences[:, : self.length]

    def prepare(self, logits: np.ndarray, lse: np.ndarray) -> np.ndarray:
        return logits

    def pick(self, scores: np.ndarray) -> np.ndarray:
        if self.rngs is None:
            return scores.argmax(axis=-1)  # first index on ties, as torch.argmax
        probs = np.exp(scores.astype(np.float64) - scores.max(axis=-1, keepdims=True))
        cdf = np.cumsum(probs, axis=-1)
        draws = np.array([rng.random() for rng in self.rngs]) * cdf[:, -1]
        picked = np.array([np.searchsorted(c, u, side="right") for c, u in zip(cdf, draws)])
        return np.minimum(picked, scores.shape[-1] - 1)

    def update(self, logits: np.ndarray, scores: np.ndarray, lse: np.ndarray) -> tuple[np.ndarray, None, bool]:
        """``lse``: the logsumexp of each row's raw logits [rows, 1], for the chosen tokens' log-probs."""
        tokens = np.where(self.finished, self.pad_token_id, self.pick(scores))
        live = np.flatnonzero(~self.finished)
        self.token_logprobs[live, self.length - 1] = logits[live, tokens[live]] - lse[live, 0]
        self.sequences[:, self.length] = tokens
        self.length += 1
        self.finished |= any_done(self.criteria, self.input_ids, scores)
        return tokens, None, bool(self.finished.all())

    def finalize(self) -> SearchOutput:
        steps = self.length - 1
        return SearchOutput(
            sequences=self.sequences[:, : self.length].copy(),
            token_logprobs=self.token_logprobs[:, :steps].copy(),
        )


# ---- beam search --------------------------------------------------------------------


class BeamSearch:
    """transformers' vectorised beam search (``early_stopping`` True/False/"never", ``length_penalty``).

    State is kept as [batch, beams, ...] arrays. Each step takes the top
    ``max(2, 1 + n_eos) * num_beams`` continuations of every batch row, moves the
    ones that hit a stopping criterion into the finished hypotheses (if they
    beat them), and continues the best ``num_beams`` others.
    """

    def __init__(self, batch: int, num_beams: int, max_new_tokens: int, *, start_token_id: int,
                 pad_token_id: int, eos_token_ids: Sequence[int], criteria: Sequence[StoppingCriterion],
                 length_penalty: float, early_stopping: bool | str, num_return_sequences: int):
        self.batch, self.num_beams = batch, num_beams
        self.max_length = 1 + max_new_tokens
        self.keep = max(2, 1 + len(eos_token_ids)) * num_beams
        self.criteria = criteria
        self.length_penalty, self.early_stopping = length_penalty, early_stopping
        self.num_return_sequences = num_return_sequences
        self.cur_len = 1
        fill = pad_token_id if pad_token_id else eos_token_ids[0]  # transformers: `pad or eos[0]`
        self.running = np.full((batch, num_beams, self.max_length), fill, dtype=np.int64)
        self.running[:, :, 0] = start_token_id
        self.running_scores = np.zeros((batch, num_beams), dtype=np.float32)
        self.running_scores[:, 1:] = NEG  # only beam 0 is live at the start
        self.running_sources = np.full((batch, num_beams, max_new_tokens), -1, dtype=np.int64)
        self.running_logprobs = np.zeros((batch, num_beams, max_new_tokens), dtype=np.float32)
        self.done_sequences = self.running.copy()
        self.done_scores = np.full((batch, num_beams), NEG, dtype=np.float32)
        self.done_sources = self.running_sources.copy()
        self.done_logprobs = self.running_logprobs.copy()
        self.is_done = np.zeros((batch, num_beams), dtype=bool)
        self.improvable = np.ones((batch, 1), dtype=bool)
        self._batch_rows = np.arange(batch)[:, None]  # [B, 1], for gathers along the beam axis

    @property
    def input_ids(self) -> np.ndarray:
        return self.running[:, :, : self.cur_len].reshape(self.batch * self.num_beams, self.cur_len)

    def prepare(self, logits: np.ndarray, lse: np.ndarray) -> np.ndarray:
        return log_softmax(logits, lse)  # processors see log-probs, as in transformers' beam search

    def _gather(self, x: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """x [B, beams, ...] gathered along the beam axis by idx [B, K] -> [B, K, ...]."""
        return x[self._batch_rows, idx]

    def update(self, logits: np.ndarray, scores: np.ndarray, lse: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
        b, nb, t = self.batch, self.num_beams, self.cur_len
        vocab = scores.shape[-1]

        # The top `keep` continuations of every batch row (by each beam's scores plus its running score).
        flat = top_k_shifted(scores.reshape(b, nb, vocab), self.running_scores, self.keep)
        cand_beams, cand_tokens = flat // vocab, flat % vocab
        cand_scores = scores.reshape(b, nb * vocab)[self._batch_rows, flat] + self._gather(self.running_scores, cand_beams)
        cand_sequences = self._gather(self.running, cand_beams)
        cand_sequences[:, :, t] = cand_tokens
        cand_sources = self._gather(self.running_sources, cand_beams)
        rows = self._batch_rows * nb + cand_beams  # [b, keep] decoder rows
        cand_sources[:, :, t - 1] = rows
        cand_logprobs = self._gather(self.running_logprobs, cand_beams)
        cand_logprobs[:, :, t - 1] = logits[rows, cand_tokens] - lse[rows, 0]
        hits = any_done(self.criteria, cand_sequences[:, :, : t + 1].reshape(b * self.keep, t + 1), None)
        hits = hits.reshape(b, self.keep)

        # The best `num_beams` continuations that did not stop go on.
        live_scores = cand_scores + hits.astype(np.float32) * NEG
        best = top_k(live_scores, nb)
        self.running = self._gather(cand_sequences, best)
        self.running_scores = live_scores[self._batch_rows, best]
        self.running_sources = self._gather(cand_sources, best)
        self.running_logprobs = self._gather(cand_logprobs, best)

        self._update_finished(cand_sequences, cand_scores, cand_sources, cand_logprobs, hits)
        self.cur_len = t + 1
        self._update_improvable()
        go_on = self.improvable.any() and not (self.is_done.all() and self.early_stopping is True) and not hits.all()
        source = self.running_sources[:, :, t - 1].reshape(-1)
        return self.running[:, :, t].reshape(-1), source, not go_on

    def _update_finished(self, cand_sequences, cand_scores, cand_sources, cand_logprobs, hits) -> None:
        if not hits[:, :self.num_beams].any():
            return  # only the top num_beams candidates may finish, and none did: nothing to merge
        just_done = hits.copy()
        just_done[:, self.num_beams:] = False
        generated = self.cur_len  # new tokens in each candidate, EOS included
        normalised = cand_scores / np.float32(generated ** self.length_penalty)
        batch_full = self.is_done.all(axis=1, keepdims=True) & (self.early_stopping is True)
        normalised = normalised + batch_full.astype(np.float32) * NEG
        normalised = normalised + (~self.improvable).astype(np.float32) * NEG
        normalised = normalised + (~just_done).astype(np.float32) * NEG
        if (normalised.max(axis=1) <= self.done_scores.min(axis=1)).all():
            return  # no candidate beats a finished hypothesis: the merge below would keep them as they are
        merged_scores = np.concatenate([self.done_scores, normalised], axis=1)
        best = top_k(merged_scores, self.num_beams)
        self.done_scores = np.take_along_axis(merged_scores, best, axis=1)
        self.done_sequences = self._gather(np.concatenate([self.done_sequences, cand_sequences], axis=1), best)
        self.done_sources = self._gather(np.concatenate([self.done_sources, cand_sources], axis=1), best)
        self.done_logprobs = self._gather(np.concatenate([self.done_logprobs, cand_logprobs], axis=1), best)
        self.is_done = self._gather(np.concatenate([self.is_done, just_done], axis=1), best)

    def _update_improvable(self) -> None:
        """Can a running beam still beat the worst finished one? (transformers' early-stop heuristic)"""
        if self.early_stopping == "never" and self.length_penalty > 0.0:
            best_length = self.max_length - 1
        else:
            best_length = self.cur_len - 1
        best_running = self.running_scores[:, :1] / np.float32(best_length ** self.length_penalty)
        worst_done = np.where(self.is_done, self.done_scores.min(axis=1, keepdims=True), NEG)
        self.improvable &= (best_running > worst_done).any(axis=-1, keepdims=True)

    def finalize(self) -> SearchOutput:
        n = self.num_return_sequences
        rows = self.batch * n
        sources = self.done_sources[:, :n].reshape(rows, -1)
        steps = int((sources >= 0).sum(axis=1).max())
        return SearchOutput(
            sequences=self.done_sequences[:, :n].reshape(rows, -1)[:, : 1 + steps].copy(),
            token_logprobs=self.done_logprobs[:, :n].reshape(rows, -1)[:, :steps].copy(),
            sequences_scores=self.done_scores[:, :n].reshape(rows).copy(),
            beam_indices=sources[:, :steps].copy(),
        )
