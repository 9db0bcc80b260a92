"""The decoding loop: graphs -> raw logits -> processors -> strategy, one step at a time.

    text -> tokenizer -> encoder -> [ decoder graph -> raw logits -> processors -> strategy ]* -> result

Pure numpy apart from the ``model`` it is handed (:class:`~t5ort.runtime.graphs.T5Graphs`
or anything with ``start``/``step``/``reorder``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol, Sequence

import numpy as np

from .buffers import BufferPool
from .numerics import checked
from .options import GenerationOptions
from .processors import LogitsProcessor, build_processors
from .stopping import build_criteria
from .strategies import BeamSearch, SearchOutput, SingleSequenceSearch


class StepModel(Protocol):
    def expand(self, encoder_output, times: int): ...

    def start(self, encoder_output): ...

    def forward(self, tokens: np.ndarray, state, out: np.ndarray | None = None,
                logsumexp_out: np.ndarray | None = None) -> tuple[np.ndarray, object]: ...

    def reorder(self, state, source: np.ndarray): ...



class Drafter(Protocol):
    """Speculative decoding's proposals (:mod:`t5ort.runtime.speculative`), one per row."""

    def propose(self, sequence: np.ndarray, limit: int) -> np.ndarray:
        """Up to ``limit`` tokens (int64 [k], k may be 0) that greedy may emit after ``sequence`` [length]."""

    def accepted(self, sequence: np.ndarray, drafted: int, kept: int) -> None:
        """After a verify pass: ``kept`` of the ``drafted`` tokens held; ``sequence`` is the new output."""


class Strategy(Protocol):
    @property
    def input_ids(self) -> np.ndarray: ...

    def prepare(self, logits: np.ndarray, lse: np.ndarray) -> np.ndarray: ...

    def update(self, logits: np.ndarray, scores: np.ndarray,
               lse: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, bool]: ...

    def finalize(self) -> SearchOutput: ...


@dataclass(frozen=True, eq=False)
class Step:
    """One decoding step: raw logits and processed scores [rows, vocab], the tokens chosen [rows], the
    logits' logsumexp [rows] (the graph's)."""

    index: int
    logits: np.ndarray
    scores: np.ndarray
    tokens: np.ndarray
    done: bool
    logsumexp: np.ndarray


def near_tie_bound(logits: np.ndarray) -> float:
    """Two processed scores closer than this may swap order between a k-token pass and one-token steps.

    Twice the project's fp32 parity bound (1e-4 + 2e-6 * max |logit|): each of the
    two scores may move by up to the bound.
    """
    return 2.0 * (1e-4 + 2e-6 * float(np.abs(logits).max()))


def _top_two_gap(scores: np.ndarray) -> float:
    finite = scores[np.isfinite(scores)]
    if finite.size < 2:
        return float("inf")
    two = np.partition(finite, finite.size - 2)[-2:]
    return float(two[1] - two[0])


def run_steps(model: StepModel, encoder_output, strategy: Strategy, processors: Sequence[LogitsProcessor],
              max_new_tokens: int, logits_out: np.ndarray | None = None) -> Iterator[Step]:
    """The loop itself: yields every step until the strategy is done or ``max_new_tokens`` were taken.

    Each step feeds every row's last token, turns the raw logits into processed scores and lets the
    strategy pick (reordering the cache for beam search). ``logits_out`` [max_new_tokens, rows, vocab]:
    where the graph writes each step's raw logits. Speculative decoding, whose rows advance by different
    numbers of tokens per pass, has its own loop over the same pieces (:mod:`t5ort.runtime.speculative`).
    """
    state = model.start(encoder_output)
    lse = np.empty((strategy.input_ids.shape[0], 1), np.float32)  # [rows, 1], the graph's, every step
    for index in range(max_new_tokens):
        out = None if logits_out is None else logits_out[index][:, None, :]  # [rows, 1, vocab]
        block, state = model.forward(strategy.input_ids[:, -1:], state, out=out, logsumexp_out=lse)
        logits = block[:, 0]  # [rows, vocab], raw
        checked(lse, f"at step {index}")
        scores = score(strategy, processors, logits, lse)
        tokens, source, done = strategy.update(logits, scores, lse)
        if source is not None:
            state = model.reorder(state, source)
        yield Step(index, logits, scores, tokens, done, lse[:, 0].copy())
        if done:
            return


def score(strategy: Strategy, processors: Sequence[LogitsProcessor], logits: np.ndarray,
          lse: np.ndarray) -> np.ndarray:
    """One step's processed scores from its raw logits [rows, vocab] and their logsumexp [rows, 1]."""
    scores = strategy.prepare(logits, lse)
    input_ids = strategy.input_ids
    for processor in processors:
        scores = processor(input_ids, scores)
    return scores


def advance(strategy: Strategy, processors: Sequence[LogitsProcessor], logits: np.ndarray,
            lse: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, bool]:
    """One step's choice from its raw logits [rows, vocab] and their logsumexp [rows, 1]: the strategy's
    scores through the processors, then the strategy's pick. Returns (scores, tokens, source rows, done)."""
    scores = score(strategy, processors, logits, lse)
    tokens, source, done = strategy.update(logits, scores, lse)
    return scores, tokens, source, done


@dataclass(frozen=True)
class Special:
    decoder_start_token_id: int
    pad_token_id: int
    eos_token_ids: tuple[int, ...]


def make_strategy(options: GenerationOptions, batch: int, special: Special, token_text=None) -> Strategy:
    """The strategy ``options`` ask for, over ``batch`` inputs (decoder rows: batch * options.rows_per_input)."""
    criteria = build_criteria(options, special.eos_token_ids, token_text)
    if options.strategy == "beam":
        return BeamSearch(
            batch, options.num_beams, options.max_new_tokens, start_token_id=special.decoder_start_token_id,
            pad_token_id=special.pad_token_id, eos_token_ids=special.eos_token_ids, criteria=criteria,
            length_penalty=options.length_penalty, early_stopping=options.early_stopping,
            num_return_sequences=options.num_return_sequences,
        )
    rows = batch * options.rows_per_input
    rngs = None
    if options.do_sample:  # one stream per decoder row: a row's draws do not depend on the other rows
        rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(options.seed).spawn(rows)]
    return SingleSequenceSearch(
        rows, options.max_new_tokens, start_token_id=special.decoder_start_token_id,
        pad_token_id=special.pad_token_id, criteria=criteria, rngs=rngs,
    )


@dataclass(frozen=True, eq=False)
class DecodeOutput:
    search: SearchOutput
    logits: np.ndarray | None  # float32 [rows, steps, vocab], raw
    scores: np.ndarray | None  # float32 [rows, steps, vocab], processed


def start(model: StepModel, encoder_output, options: GenerationOptions, special: Special,
          token_text=None, logits_out: np.ndarray | None = None) -> tuple[Strategy, Iterator[Step]]:
    """Set up a generation over ``encoder_output``: rows expanded for beams or return sequences,
    the strategy and processors ``options`` ask for. Returns the strategy and the steps to iterate.
    Speculative decoding has its own loop (:mod:`t5ort.runtime.speculative`)."""
    if options.speculative:
        raise ValueError("speculative decoding (prompt_lookup_num_tokens, num_assistant_tokens) is only in "
                         "generate(); stream() decodes one token per step.")
    strategy = make_strategy(options, encoder_output.batch_size, special, token_text)
    expanded = model.expand(encoder_output, options.rows_per_input)
    processors = build_processors(options, special.eos_token_ids)
    return strategy, run_steps(model, expanded, strategy, processors, options.max_new_tokens, logits_out)


def decode(model: StepModel, encoder_output, options: GenerationOptions, special: Special, vocab_size: int,
           token_text=None, buffers: BufferPool | None = None) -> DecodeOutput:
    """Run a whole generation, collecting the per-step raw logits (and scores) when asked.

    The graph writes each step's raw logits straight into a [max_steps, rows, vocab]
    buffer; the result is its [rows, steps, vocab] view (no copy). ``buffers``: where those
    buffers come from (memory of earlier calls that nobody refers to any more, so that no step
    writes into freshly faulted-in pages); None: fresh np.empty arrays.
    """
    rows, max_steps = encoder_output.batch_size * options.rows_per_input, options.max_new_tokens
    empty = np.empty if buffers is None else buffers.empty
    raw = empty((max_steps, rows, vocab_size), np.float32) if options.output_logits else None
    processed = empty((rows, max_steps, vocab_size), np.float32) if options.output_scores else None
    strategy, steps_iter = start(model, encoder_output, options, special, token_text, logits_out=raw)
    steps = 0
    for step in steps_iter:
        if processed is not None:
            processed[:, step.index] = step.scores
        steps = step.index + 1
    return DecodeOutput(
        search=strategy.finalize(),
        logits=None if raw is None else raw[:steps].transpose(1, 0, 2),
        scores=None if processed is None else processed[:, :steps],
    )
