"""The decoding loop: options, logits processors, the strategy, and the loop that joins them.

Pure numpy: nothing here knows about ONNX. The loop asks the graphs for one
step's raw logits, lets the processors turn them into scores, lets the
strategy pick tokens, and stops when every row is done.

    text -> tokenizer -> encoder -> [ step graph -> raw logits -> processors -> strategy ]* -> result
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import numpy as np

LogitsProcessor = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``(input_ids [N, t], scores [N, vocab]) -> scores [N, vocab]``; must not modify ``scores`` in place."""


@dataclass(frozen=True)
class GenerationOptions:
    """What to generate, in transformers' vocabulary. Validated by :meth:`validate` before any work."""

    max_new_tokens: int = 20
    min_new_tokens: int = 0
    output_logits: bool = True
    output_scores: bool = False

    def validate(self) -> GenerationOptions:
        for name in ("max_new_tokens", "min_new_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}.")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}.")
        if self.min_new_tokens < 0:
            raise ValueError(f"min_new_tokens must be >= 0, got {self.min_new_tokens}.")
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(
                f"min_new_tokens ({self.min_new_tokens}) must not exceed max_new_tokens ({self.max_new_tokens})."
            )
        for name in ("output_logits", "output_scores"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {type(getattr(self, name)).__name__}.")
        return self


# ---- logits processors --------------------------------------------------------


class MinNewTokensProcessor:
    """Forbid EOS until ``min_new_tokens`` tokens were generated (transformers' MinNewTokensLengthLogitsProcessor)."""

    def __init__(self, min_new_tokens: int, eos_token_ids: Sequence[int], prompt_length: int = 1):
        self.min_new_tokens = min_new_tokens
        self.eos_token_ids = np.asarray(eos_token_ids, dtype=np.int64)
        self.prompt_length = prompt_length  # the decoder start token

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        if input_ids.shape[1] - self.prompt_length >= self.min_new_tokens:
            return scores
        scores = scores.copy()
        scores[:, self.eos_token_ids] = -np.inf
        return scores


def build_processors(options: GenerationOptions, eos_token_ids: Sequence[int]) -> list[LogitsProcessor]:
    """The processors ``options`` ask for, in transformers' order."""
    processors: list[LogitsProcessor] = []
    if options.min_new_tokens > 0:
        processors.append(MinNewTokensProcessor(options.min_new_tokens, eos_token_ids))
    return processors


# ---- strategies ---------------------------------------------------------------


class Strategy(Protocol):
    def update(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """Pick the next token of each row from the processed scores [N, vocab]."""
        ...


class GreedySearch:
    """The highest-scoring token (first index on ties, as torch.argmax)."""

    def update(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        return scores.argmax(axis=-1)


# ---- the loop -----------------------------------------------------------------


class StepModel(Protocol):
    def start(self, encoder_output): ...

    def step(self, tokens: np.ndarray, state): ...


@dataclass(frozen=True, eq=False)
class DecodeOutput:
    sequences: np.ndarray  # int64 [N, 1 + steps]
    logits: np.ndarray | None  # float32 [N, steps, vocab], raw
    scores: np.ndarray | None  # float32 [N, steps, vocab], processed
    token_logprobs: np.ndarray  # float32 [N, steps]


def logsumexp(logits: np.ndarray) -> np.ndarray:
    """log(sum(exp(logits))) over the last axis, stable; keeps that axis (size 1)."""
    peak = logits.max(axis=-1, keepdims=True)
    return peak + np.log(np.exp(logits - peak).sum(axis=-1, keepdims=True))


def chosen_logprobs(logits: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """log_softmax(logits)[row, tokens[row]] for logits [N, vocab], without materialising the softmax."""
    chosen = np.take_along_axis(logits, tokens[:, None], axis=-1)
    return (chosen - logsumexp(logits))[:, 0].astype(np.float32)


def decode(
    model: StepModel,
    encoder_output,
    *,
    batch_size: int,
    options: GenerationOptions,
    processors: Sequence[LogitsProcessor],
    strategy: Strategy,
    decoder_start_token_id: int,
    eos_token_ids: Sequence[int],
    pad_token_id: int,
    vocab_size: int,
) -> DecodeOutput:
    """Run ``strategy`` until every row has produced EOS or ``max_new_tokens`` steps were taken.

    Rows that finished early are fed ``pad_token_id`` (and get it in ``sequences``),
    exactly as transformers does; their ``token_logprobs`` are 0.
    """
    n, max_steps = batch_size, options.max_new_tokens
    sequences = np.empty((n, 1 + max_steps), dtype=np.int64)
    sequences[:, 0] = decoder_start_token_id
    # np.empty leaves pages untouched until written: a run that stops early never commits the tail.
    raw = np.empty((n, max_steps, vocab_size), np.float32) if options.output_logits else None
    processed = np.empty((n, max_steps, vocab_size), np.float32) if options.output_scores else None
    logprobs = np.zeros((n, max_steps), dtype=np.float32)
    finished = np.zeros(n, dtype=bool)
    eos = np.asarray(eos_token_ids, dtype=np.int64)

    state = model.start(encoder_output)
    steps = 0
    while steps < max_steps and not finished.all():
        logits, state = model.step(sequences[:, steps], state)  # [N, vocab]
        input_ids = sequences[:, : steps + 1]
        scores = logits
        for processor in processors:
            scores = processor(input_ids, scores)
        tokens = np.where(finished, pad_token_id, strategy.update(input_ids, scores))
        logprobs[~finished, steps] = chosen_logprobs(logits[~finished], tokens[~finished])
        if raw is not None:
            raw[:, steps] = logits
        if processed is not None:
            processed[:, steps] = scores
        sequences[:, steps + 1] = tokens
        finished |= np.isin(tokens, eos)
        steps += 1

    return DecodeOutput(
        sequences=sequences[:, : steps + 1],
        logits=None if raw is None else raw[:, :steps],
        scores=None if processed is None else processed[:, :steps],
        token_logprobs=logprobs[:, :steps],
    )
