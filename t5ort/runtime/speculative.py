"""Speculative greedy decoding: draft several tokens, verify them in one decoder pass, keep what greedy keeps.

    draft (prompt lookup or a draft model) -> one decoder pass over [last token, d_1..d_k]
    -> per position, in order: processors -> greedy pick -> stopping criteria
    -> stop at the first position whose pick differs from the draft -> roll the cache back

Every emitted token goes through exactly what plain greedy does at that step (the
same :class:`~t5ort.runtime.strategies.SingleSequenceSearch`, processors and
stopping criteria, called once per emitted token with the same ``input_ids``);
only where the raw logits come from differs: position i of a k-token pass instead
of a one-token step. Those agree to floating-point rounding (the parity bound of
:func:`near_tie_bound`), so the sequences are plain greedy's except where the two
best processed scores are closer than that bound: such a step is decided again
from a one-token pass, computed as plain greedy computes it (see :func:`decode`).

Drafters (``propose(sequence, limit) -> tokens`` and ``accepted(...)``):

- :class:`PromptLookup`: the continuation of the latest n-gram of the output
  found in the source tokens (the encoder input) or in the output so far;
- :class:`DraftModel`: a second, smaller t5ort runtime with the same vocabulary,
  decoding greedily with its own cache, rolled back like the target's.

Batch 1 only: rows accept different numbers of tokens, which needs a decoder
graph with a self-attention mask over ragged caches (not exported yet).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol, Sequence

import numpy as np

from .decoding import Special, make_strategy
from .numerics import checked_logsumexp
from .options import GenerationOptions
from .processors import build_processors
from .results import SpeculationStats


class Drafter(Protocol):
    def propose(self, sequence: np.ndarray, limit: int) -> np.ndarray:
        """Up to ``limit`` tokens (int64 [k], k may be 0) that greedy may emit after ``sequence`` [length]."""

    def accepted(self, sequence: np.ndarray, drafted: int, kept: int) -> None:
        """After a verify pass: ``kept`` of the ``drafted`` tokens held; ``sequence`` is the new output."""


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


# ---- drafters ----------------------------------------------------------------------


class PromptLookup:
    """Draft the tokens that followed the output's last n-gram where it occurs in the source or the output.

    Like transformers' ``prompt_lookup_num_tokens``/``max_matching_ngram_size``
    (n-grams from ``max_matching_ngram_size`` down to 1, the first size that matches
    wins), with the source tokens searched first. In the source, the first match at
    or after the point where the last accepted draft ended wins (an output that copies
    its input follows it left to right), else the first match; in the output so far,
    the latest. n-grams are indexed once (the source) or as tokens come (the output),
    so a proposal costs a few dictionary look-ups.
    """

    def __init__(self, source_ids: np.ndarray, num_tokens: int, max_ngram: int):
        self.source = [int(t) for t in source_ids]
        self.num_tokens, self.max_ngram = num_tokens, max_ngram
        self.source_index = self._index(self.source, {}, 0)
        self.output_index: dict[tuple[int, ...], list[int]] = {}
        self.indexed = 0  # output tokens whose n-grams are indexed
        self.cursor = 0  # in the source: where the last accepted draft ended
        self._from_source: int | None = None

    def _index(self, tokens: list[int], index: dict, first: int) -> dict:
        """Record, for every n-gram ending at position >= ``first``, where its continuation starts (ascending)."""
        for end in range(max(first, 1), len(tokens) + 1):
            for n in range(1, min(self.max_ngram, end) + 1):
                index.setdefault(tuple(tokens[end - n: end]), []).append(end)
        return index

    def propose(self, sequence: np.ndarray, limit: int) -> np.ndarray:
        limit = min(limit, self.num_tokens)
        self._from_source = None
        output = sequence[1:].tolist()  # the decoder start token is in no source
        self._index(output, self.output_index, self.indexed + 1)
        self.indexed = len(output)
        for n in range(min(self.max_ngram, len(output)), 0, -1):
            gram = tuple(output[-n:])
            starts = [s for s in self.source_index.get(gram, ()) if s < len(self.source)]
            if starts and limit > 0:
                start = next((s for s in starts if s >= self.cursor), starts[0])
                self._from_source = start
                return np.asarray(self.source[start: start + limit], dtype=np.int64)
            starts = [s for s in self.output_index.get(gram, ()) if s < len(output)]
            if starts and limit > 0:
                return np.asarray(output[starts[-1]: starts[-1] + limit], dtype=np.int64)
        return np.empty(0, dtype=np.int64)

    def accepted(self, sequence: np.ndarray, drafted: int, kept: int) -> None:
        if self._from_source is not None and kept:
            self.cursor = self._from_source + kept


class DraftModel:
    """A smaller t5ort runtime drafting greedily (its raw logits through the built-in processors)."""

    def __init__(self, runtime, input_ids: np.ndarray, attention_mask: np.ndarray, options: GenerationOptions,
                 eos_token_ids: Sequence[int], num_tokens: int, schedule: str):
        self.graphs = runtime.graphs
        self.state = self.graphs.start(self.graphs.encode(input_ids, attention_mask))
        self.fed = 0  # sequence tokens whose keys/values are in the draft model's cache
        self.processors = build_processors(replace(options, logits_processor=()), eos_token_ids)
        self.eos = set(eos_token_ids)
        self.num_tokens, self.schedule = float(num_tokens), schedule
        self.passes = 0

    def propose(self, sequence: np.ndarray, limit: int) -> np.ndarray:
        limit = min(limit, int(self.num_tokens))
        seq = list(sequence.tolist())
        pending = np.asarray(seq[self.fed:], dtype=np.int64)[None]  # [1, new tokens]
        drafts: list[int] = []
        while len(drafts) < limit:
            logits, self.state = self.graphs.forward(pending, self.state)
            self.passes += 1
            self.fed += pending.shape[1]
            ids = np.asarray(seq + drafts, dtype=np.int64)[None]
            scores = logits[:, -1]
            for processor in self.processors:
                scores = processor(ids, scores)
            token = int(scores[0].argmax())
            drafts.append(token)
            if token in self.eos:
                break
            pending = np.asarray([[token]], dtype=np.int64)
        self._base = len(seq)
        return np.asarray(drafts, dtype=np.int64)

    def accepted(self, sequence: np.ndarray, drafted: int, kept: int) -> None:
        # The cache holds the sequence before the drafts, plus every draft but the last (never fed);
        # the last token of the sequence stays out: the next proposal feeds it to get logits.
        valid = min(self.fed, self._base + kept, len(sequence) - 1)
        if valid < self.fed:
            self.state = self.graphs.truncate(self.state, valid)
            self.fed = valid
        if self.schedule == "heuristic":  # transformers' num_assistant_tokens_schedule="heuristic"
            self.num_tokens = self.num_tokens + 2.0 if kept == drafted else max(1.0, self.num_tokens - 1.0)


# ---- the loop ----------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class SpeculativeOutput:
    search: object  # SearchOutput
    logits: np.ndarray | None  # float32 [1, steps, vocab], raw
    scores: np.ndarray | None  # float32 [1, steps, vocab], processed
    stats: SpeculationStats


def decode(model, encoder_output, options: GenerationOptions, special: Special, vocab_size: int,
           drafter: Drafter, token_text=None) -> SpeculativeOutput:
    """Greedy decoding of one input row with drafted tokens verified in one decoder pass each.

    Each round feeds [last token, d_1..d_k] after the cache and walks the k + 1
    rows of raw logits in order, exactly as plain greedy's steps (processors,
    argmax, stopping criteria); it stops at the first row whose pick is not the
    next draft, or when greedy is done. The cache is then cut back to the tokens
    kept. Near-ties: where the two best processed scores of a row differ by less
    than :func:`near_tie_bound`, that row is computed again by a one-token pass
    (the cache cut back to before it) and decided from those logits, which replace
    it in the result; the round ends there.
    """
    max_steps = options.max_new_tokens
    raw = np.empty((max_steps, 1, vocab_size), np.float32)  # step-major, as plain greedy's buffer
    processed = np.empty((1, max_steps, vocab_size), np.float32) if options.output_scores else None
    strategy = make_strategy(options, 1, special, token_text)
    processors = build_processors(options, special.eos_token_ids)
    state = model.start(encoder_output)
    stats = dict(rounds=0, drafted=0, accepted=0, decoder_passes=0, redecided=0)
    step, done = 0, False
    while not done:
        sequence = strategy.input_ids[0]
        drafts = drafter.propose(sequence, max_steps - step - 1)
        k = len(drafts)
        fed = np.concatenate([sequence[-1:], drafts])[None]  # [1, k + 1]: the last token, then the drafts
        past = state.past_length
        _, state = model.forward(fed, state, out=raw[step: step + k + 1].reshape(1, k + 1, vocab_size))
        stats["decoder_passes"] += 1
        for i in range(k + 1):  # row i: the logits after fed[:, :i + 1]
            logits = raw[step]  # [1, vocab]; step-major rows of the buffer are contiguous
            lse = checked_logsumexp(logits, f"at step {step}")
            scores = _process(processors, strategy.input_ids, logits)
            redecide = k > 0 and _top_two_gap(scores[0]) < near_tie_bound(logits)
            if redecide:  # the same row from a one-token pass, as plain greedy computes it
                state = model.truncate(state, past + i)
                _, state = model.forward(fed[:, i: i + 1], state, out=raw[step].reshape(1, 1, vocab_size))
                stats["decoder_passes"] += 1
                stats["redecided"] += 1
                lse = checked_logsumexp(logits, f"at step {step}")
                scores = _process(processors, strategy.input_ids, logits)
            tokens, _, done = strategy.update(logits, scores, lse)
            _store(processed, step, scores)
            step += 1
            matched = i < k and tokens[0] == drafts[i]
            if done or not matched or redecide:
                break
        kept = i + int(matched)  # drafts emitted as they were
        if not redecide:  # after a re-decided row the cache already ends at [last token, d_1..d_i]
            state = model.truncate(state, past + 1 + i)  # [last token, d_1..d_i]
        stats["rounds"] += 1
        stats["drafted"] += k
        stats["accepted"] += kept
        drafter.accepted(strategy.input_ids[0], k, kept)
    search = strategy.finalize()
    steps = search.sequences.shape[1] - 1
    return SpeculativeOutput(
        search=search,
        logits=raw[:steps].transpose(1, 0, 2) if options.output_logits else None,
        scores=None if processed is None else processed[:, :steps],
        stats=SpeculationStats(**stats, draft_passes=getattr(drafter, "passes", 0)),
    )


def _process(processors, input_ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
    scores = logits
    for processor in processors:
        scores = processor(input_ids, scores)
    return scores


def _store(processed: np.ndarray | None, step: int, scores: np.ndarray) -> None:
    if processed is not None:
        processed[:, step] = scores


# ---- the entry point of T5Runtime.generate -----------------------------------------


def check_request(options: GenerationOptions, assistant, batch: int, target) -> None:
    """Refuse what speculative decoding does not do, naming the argument."""
    assisted = assistant is not None
    if not assisted and (options.num_assistant_tokens is not None or options.num_assistant_tokens_schedule is not None):
        raise ValueError("num_assistant_tokens/num_assistant_tokens_schedule need a draft runtime: "
                         "pass assistant=t5ort.load(DRAFT_DIR).")
    if assisted and options.strategy != "greedy":
        raise ValueError(f"assistant (speculative decoding) needs greedy decoding, got {options.strategy}; "
                         "speculative sampling and beam search are not implemented.")
    if assisted:
        if not hasattr(assistant, "graphs") or not hasattr(assistant, "manifest"):
            raise TypeError(f"assistant must be a t5ort runtime (t5ort.load(DRAFT_DIR)), got {type(assistant).__name__}.")
        if assistant.vocab_size != target.vocab_size:
            raise ValueError(f"assistant has a vocabulary of {assistant.vocab_size} tokens, the model "
                             f"{target.vocab_size}: the draft model must share the model's vocabulary.")
        a, t = assistant.manifest.special_tokens, target.manifest.special_tokens
        if (a.decoder_start_token_id, a.pad_token_id, a.eos_token_id) != (t.decoder_start_token_id, t.pad_token_id,
                                                                          t.eos_token_id):
            raise ValueError("assistant has other special tokens (decoder start, pad, EOS) than the model: "
                             "the draft model must share the model's vocabulary.")
    if batch != 1:
        raise ValueError(f"speculative decoding (prompt_lookup_num_tokens or assistant) runs one input at a time, got "
                         f"{batch}: rows accepting different numbers of tokens need a decoder graph with a "
                         "self-attention mask, which t5ort does not export yet. Call generate once per input.")


def run(target, input_ids: np.ndarray, attention_mask: np.ndarray, options: GenerationOptions, special: Special,
        assistant=None, token_text=None) -> SpeculativeOutput:
    """Speculative greedy decoding of one input (int64 [1, L]) by runtime ``target``, drafting by
    prompt lookup (``options.prompt_lookup_num_tokens``) or by the ``assistant`` runtime."""
    check_request(options, assistant, input_ids.shape[0], target)
    source = input_ids[0, attention_mask[0] == 1]
    if assistant is not None:
        drafter: Drafter = DraftModel(
            assistant, input_ids, attention_mask, options, special.eos_token_ids,
            num_tokens=options.num_assistant_tokens or 20,
            schedule=options.num_assistant_tokens_schedule or "constant",
        )
    else:
        drafter = PromptLookup(source, options.prompt_lookup_num_tokens, options.max_matching_ngram_size or 2)
    graphs = target.graphs
    return decode(graphs, graphs.encode(input_ids, attention_mask), options, special, target.vocab_size, drafter,
                  token_text)
