"""Stopping criteria: ``(input_ids [rows, t], scores) -> bool [rows]``, true where a row is done."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .options import GenerationOptions

StoppingCriterion = Callable[[np.ndarray, np.ndarray | None], np.ndarray]


class MaxLength:
    def __init__(self, max_length: int):
        self.max_length = max_length

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray | None) -> np.ndarray:
        return np.full(len(input_ids), input_ids.shape[1] >= self.max_length)


class EosToken:
    def __init__(self, eos_token_ids: Sequence[int]):
        self.eos = np.asarray(eos_token_ids, dtype=np.int64)

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray | None) -> np.ndarray:
        last = input_ids[:, -1]
        return last == self.eos[0] if len(self.eos) == 1 else (last[:, None] == self.eos).any(axis=1)


class StopStrings:
    """Done when a stop string appears in the decoded tokens and overlaps the last token (as transformers)."""

    def __init__(self, stop_strings: Sequence[str], token_text: Callable[[int], str]):
        self.stop_strings = tuple(stop_strings)
        self.token_text = token_text
        self.window = max(len(s) for s in self.stop_strings)

    def _tail(self, ids: Sequence[int]) -> tuple[str, int]:
        """The text of the last tokens (at least ``window`` characters before the last token) and that token's start."""
        last = self.token_text(ids[-1])
        before, i = "", len(ids) - 2
        while len(before) < self.window and i >= 0:
            before = self.token_text(ids[i]) + before
            i -= 1
        return before + last, len(before)

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray | None) -> np.ndarray:
        done = np.zeros(len(input_ids), dtype=bool)
        for row, ids in enumerate(input_ids.tolist()):
            text, last_start = self._tail(ids)
            for stop in self.stop_strings:
                first = max(0, last_start - len(stop) + 1)
                if text.find(stop, first) != -1:
                    done[row] = True
                    break
        return done


def build_criteria(options: GenerationOptions, eos_token_ids: Sequence[int],
                   token_text: Callable[[int], str] | None) -> list[StoppingCriterion]:
    """Max length, EOS, stop strings, then the user's criteria (which may return a bool or a bool per row)."""
    criteria: list[StoppingCriterion] = [MaxLength(1 + options.max_new_tokens), EosToken(eos_token_ids)]
    if options.stop_strings:
        if token_text is None:
            raise ValueError("stop_strings needs a tokenizer; this export has none.")
        criteria.append(StopStrings(options.stop_strings, token_text))
    for user in options.stopping_criteria:
        criteria.append(lambda ids, scores, f=user: np.broadcast_to(np.asarray(f(ids, scores), dtype=bool), (len(ids),)))
    return criteria


def any_done(criteria: Sequence[StoppingCriterion], input_ids: np.ndarray, scores: np.ndarray | None) -> np.ndarray:
    done = np.zeros(len(input_ids), dtype=bool)
    for criterion in criteria:
        done |= criterion(input_ids, scores)
    return done
