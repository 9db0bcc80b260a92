"""Logits processors: ``(input_ids [rows, t], scores [rows, vocab]) -> scores``, pure numpy.

Each one matches the transformers processor of the same name and never
modifies its input in place. :func:`build_processors` lists them in
transformers' order.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .numerics import log_softmax, softmax
from .options import GenerationOptions

LogitsProcessor = Callable[[np.ndarray, np.ndarray], np.ndarray]


class RepetitionPenalty:
    """Divide positive (multiply negative) scores of tokens already in the row by ``penalty``."""

    def __init__(self, penalty: float):
        self.penalty = np.float32(penalty)

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        seen = np.zeros(scores.shape, dtype=bool)
        seen[np.arange(len(input_ids))[:, None], input_ids] = True
        penalised = np.where(scores < 0, scores * self.penalty, scores / self.penalty)
        return np.where(seen, penalised, scores)


class NoRepeatNGram:
    """Ban tokens that would repeat an n-gram already in the row."""

    def __init__(self, ngram_size: int):
        self.n = ngram_size

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        length = input_ids.shape[1]
        if length + 1 < self.n:
            return scores
        out = scores.copy()
        for row, ids in enumerate(input_ids.tolist()):
            prefix = tuple(ids[length + 1 - self.n:])
            banned = [ids[i + self.n - 1] for i in range(length - self.n + 1) if tuple(ids[i:i + self.n - 1]) == prefix]
            out[row, banned] = -np.inf
        return out


class NoBadWords:
    """Ban the last token of each bad word whose other tokens end the row (single tokens always; EOS exempt)."""

    def __init__(self, bad_words_ids: Sequence[Sequence[int]], eos_token_ids: Sequence[int]):
        words = [tuple(w) for w in bad_words_ids if not (len(w) == 1 and w[0] in set(eos_token_ids))]
        self.single = np.array([w[0] for w in words if len(w) == 1], dtype=np.int64)
        self.multi = [w for w in words if len(w) > 1]

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        out = scores.copy()
        out[:, self.single] = -np.inf
        for word in self.multi:
            if len(word) > input_ids.shape[1]:
                continue
            prefix = np.asarray(word[:-1], dtype=input_ids.dtype)
            rows = (input_ids[:, -len(prefix):] == prefix).all(axis=1)
            out[rows, word[-1]] = -np.inf
        return out


class MinNewTokens:
    """Forbid EOS until ``min_new_tokens`` tokens follow the decoder start token."""

    def __init__(self, min_new_tokens: int, eos_token_ids: Sequence[int], prompt_length: int = 1):
        self.min_new_tokens = min_new_tokens
        self.eos = np.asarray(eos_token_ids, dtype=np.int64)
        self.prompt_length = prompt_length

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        if input_ids.shape[1] - self.prompt_length >= self.min_new_tokens:
            return scores
        out = scores.copy()
        out[:, self.eos] = -np.inf
        return out


class ForceTokensAt:
    """At decoder length ``length``, allow only ``token_ids`` (score 0): forced BOS (length 1) and forced EOS."""

    def __init__(self, length: int, token_ids: Sequence[int]):
        self.length = length
        self.token_ids = np.asarray(token_ids, dtype=np.int64)

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        if input_ids.shape[1] != self.length:
            return scores
        out = np.full_like(scores, -np.inf)
        out[:, self.token_ids] = 0
        return out


class SuppressTokens:
    def __init__(self, token_ids: Sequence[int]):
        self.token_ids = np.asarray(token_ids, dtype=np.int64)

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        out = scores.copy()
        out[:, self.token_ids] = -np.inf
        return out


# ---- sampling warpers -----------------------------------------------------------


class Temperature:
    def __init__(self, temperature: float):
        self.temperature = np.float32(temperature)

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        return scores / self.temperature


class TopK:
    def __init__(self, top_k: int):
        self.top_k = top_k

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        k = min(self.top_k, scores.shape[-1])
        kth = -np.partition(-scores, k - 1, axis=-1)[:, k - 1:k]
        return np.where(scores < kth, -np.inf, scores).astype(scores.dtype)


class TopP:
    """Keep the smallest set of most likely tokens whose probability reaches ``top_p``."""

    def __init__(self, top_p: float):
        self.top_p = top_p

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        order = np.argsort(scores, axis=-1, kind="stable")  # ascending
        cumulative = np.cumsum(softmax(np.take_along_axis(scores, order, axis=-1)), axis=-1)
        remove_sorted = cumulative <= (1 - self.top_p)
        remove_sorted[:, -1] = False
        remove = np.empty_like(remove_sorted)
        np.put_along_axis(remove, order, remove_sorted, axis=-1)
        return np.where(remove, -np.inf, scores).astype(scores.dtype)


class MinP:
    """Drop tokens less likely than ``min_p`` times the most likely one."""

    def __init__(self, min_p: float):
        self.min_p = min_p

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        probs = softmax(scores)
        remove = probs < self.min_p * probs.max(axis=-1, keepdims=True)
        remove[np.arange(len(scores)), scores.argmax(axis=-1)] = False
        return np.where(remove, -np.inf, scores).astype(scores.dtype)


class Typical:
    """Locally typical sampling: keep the tokens whose surprisal is closest to the entropy, up to mass ``typical_p``."""

    def __init__(self, mass: float):
        self.mass = mass

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        normalized = log_softmax(scores)
        p = np.exp(normalized)
        entropy = -np.nansum(normalized * p, axis=-1, keepdims=True)
        shifted = np.abs(-normalized - entropy)
        order = np.argsort(shifted, axis=-1, kind="stable")
        sorted_shifted = np.take_along_axis(shifted, order, axis=-1)
        cumulative = np.cumsum(softmax(np.take_along_axis(scores, order, axis=-1)), axis=-1)
        last = np.minimum((cumulative < self.mass).sum(axis=-1), scores.shape[-1] - 1)
        remove_sorted = sorted_shifted > np.take_along_axis(sorted_shifted, last[:, None], axis=-1)
        remove_sorted[:, :1] = False
        remove = np.empty_like(remove_sorted)
        np.put_along_axis(remove, order, remove_sorted, axis=-1)
        return np.where(remove, -np.inf, scores).astype(scores.dtype)


def build_processors(options: GenerationOptions, eos_token_ids: Sequence[int]) -> list[LogitsProcessor]:
    """The processors ``options`` ask for, in transformers' order (see :class:`GenerationOptions`)."""
    o = options
    max_length = 1 + o.max_new_tokens  # decoder start token + new tokens
    steps: list[LogitsProcessor] = []
    if o.repetition_penalty != 1.0:
        steps.append(RepetitionPenalty(o.repetition_penalty))
    if o.no_repeat_ngram_size > 0:
        steps.append(NoRepeatNGram(o.no_repeat_ngram_size))
    if o.bad_words_ids is not None:
        steps.append(NoBadWords(o.bad_words_ids, eos_token_ids))
    if o.min_new_tokens > 0:
        steps.append(MinNewTokens(o.min_new_tokens, eos_token_ids))
    if o.forced_bos_token_id is not None:
        steps.append(ForceTokensAt(1, [o.forced_bos_token_id]))
    if o.forced_eos_token_id is not None:
        forced = o.forced_eos_token_id
        steps.append(ForceTokensAt(max_length - 1, forced if isinstance(forced, tuple) else [forced]))
    if o.suppress_tokens is not None:
        steps.append(SuppressTokens(o.suppress_tokens))
    steps.extend(o.logits_processor)
    if o.do_sample:
        if o.temperature != 1.0:
            steps.append(Temperature(o.temperature))
        if o.top_k != 0:
            steps.append(TopK(o.top_k))
        if o.top_p < 1.0:
            steps.append(TopP(o.top_p))
        if o.min_p is not None:
            steps.append(MinP(o.min_p))
        if o.typical_p < 1.0:
            steps.append(Typical(o.typical_p))
    return steps
