"""Speculative greedy decoding: draft several tokens, verify them in one decoder pass, keep what greedy keeps.

    draft per row (prompt lookup or a draft model) -> one decoder pass over [last token, d_1..d_k] of every row
    -> per row, per position, in order: processors -> greedy pick -> stopping criteria
    -> a row stops at its first position whose pick differs from its draft -> the cache keeps what each row kept

Every emitted token goes through exactly what plain greedy does at that step (the
same :class:`~t5ort.runtime.strategies.SingleSequenceSearch`, processors and
stopping criteria, called once per emitted token with the same ``input_ids``);
only where the raw logits come from differs: position i of a k-token pass instead
of a one-token step. Those agree to floating-point rounding (the parity bound of
:func:`~t5ort.runtime.decoding.near_tie_bound`), so the sequences are plain greedy's except where the two
best processed scores are closer than that bound: such a step is decided again
from a one-token pass, computed as plain greedy computes it.

Rows accept different numbers of tokens, so each row is its own search (one row of
:class:`~t5ort.runtime.strategies.SingleSequenceSearch` with its own processors and
drafter), and after each pass :meth:`~t5ort.runtime.graphs.T5Graphs.keep` keeps each
row's accepted columns, moving the rows that kept fewer to the right into masked
columns, so that all rows stay on one ``past_length`` (T5's position bias depends
only on distances). A row that ends leaves the decoder state before the next pass
(:meth:`~t5ort.runtime.graphs.T5Graphs.select`), so that verify passes compute live
rows only. A one-token pass that re-decides near-ties is a plain greedy step for the
other rows.

Drafters (``propose(sequence, limit) -> tokens`` and ``accepted(...)``), one per row:

- :class:`PromptLookup`: the continuation of the latest n-gram of the output
  found in the source tokens (the encoder input) or in the output so far;
- :class:`DraftModel`: a second, smaller t5ort runtime with the same vocabulary,
  decoding greedily with its own cache, rolled back like the target's.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from .decoding import DecodeOutput, Drafter, Special, _top_two_gap, make_strategy, near_tie_bound, score
from .numerics import checked
from .options import GenerationOptions
from .processors import build_processors
from .results import SpeculationStats
from .strategies import SearchOutput


# ---- drafters ----------------------------------------------------------------------

_NOTHING = np.empty(0, dtype=np.int64)
_NOTHING.flags.writeable = False


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
        self.source_index: dict[tuple[int, ...], list[int]] = {}
        for end in range(1, len(self.source)):  # n-grams with a continuation: ending before the source's end
            self._record(self.source_index, self.source, end)
        self.output: list[int] = []  # the output so far, without the decoder start token (in no source)
        self.output_index: dict[tuple[int, ...], list[int]] = {}
        self.cursor = 0  # in the source: where the last accepted draft ended
        self._from_source: int | None = None

    def _record(self, index: dict, tokens: list[int], end: int) -> None:
        """Record that the n-grams ending at ``end`` (exclusive) continue at ``end``; called in ascending ``end``."""
        for n in range(1, min(self.max_ngram, end) + 1):
            index.setdefault(tuple(tokens[end - n: end]), []).append(end)

    def propose(self, sequence: np.ndarray, limit: int) -> np.ndarray:
        limit = min(limit, self.num_tokens)
        self._from_source = None
        output = self.output
        for token in sequence[1 + len(output):].tolist():  # the tokens emitted since the last proposal
            if output:
                self._record(self.output_index, output, len(output))  # the n-grams before it now continue
            output.append(token)
        if limit <= 0:
            return _NOTHING
        for n in range(min(self.max_ngram, len(output)), 0, -1):
            gram = tuple(output[-n:])
            starts = self.source_index.get(gram)
            if starts:
                at = bisect.bisect_left(starts, self.cursor)
                start = starts[at] if at < len(starts) else starts[0]
                self._from_source = start
                return np.asarray(self.source[start: start + limit], dtype=np.int64)
            starts = self.output_index.get(gram)
            if starts:
                return np.asarray(output[starts[-1]: starts[-1] + limit], dtype=np.int64)
        return _NOTHING

    def accepted(self, sequence: np.ndarray, drafted: int, kept: int) -> None:
        if self._from_source is not None and kept:
            self.cursor = self._from_source + kept


class DraftModel:
    """A smaller t5ort runtime drafting greedily (its raw logits through the built-in processors), over its own
    encoder's output for one input (``encoder_output``, a batch of one)."""

    def __init__(self, runtime, encoder_output, options: GenerationOptions,
                 eos_token_ids: Sequence[int], num_tokens: int, schedule: str):
        self.graphs = runtime.graphs
        self.state = self.graphs.start(encoder_output)
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


# ---- the entry point of T5Runtime.generate -----------------------------------------


def check_request(options: GenerationOptions, assistant, target) -> None:
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


class _Row:
    """One input's own search: its strategy (one row), processors, drafter and step count."""

    def __init__(self, options: GenerationOptions, special: Special, token_text, drafter: Drafter):
        self.strategy = make_strategy(options, 1, special, token_text)
        self.processors = build_processors(options, special.eos_token_ids)
        self.drafter = drafter
        self.steps = 0
        self.done = False

    @property
    def last(self) -> int:
        return int(self.strategy.input_ids[0, -1])


@dataclass(frozen=True, eq=False)
class Emitted:
    """One token a round emitted for one row (what a server streams): the row's step index, the token, its
    raw logits [vocab] (a view of the pass's output), their logsumexp, the token's log-prob, and whether the
    row ended with it."""

    row: int
    index: int
    token: int
    logits: np.ndarray
    logsumexp: float
    logprob: float
    done: bool


class SpeculativeDecoding:
    """Speculative greedy decoding of a batch, one draft-and-verify round at a time (:meth:`round`): the rows,
    the decoder state, the output buffers and the counts. :func:`start` makes one, :func:`run` runs one to the
    end; a server steps one round per scheduler step."""

    def __init__(self, graphs, encoded, options: GenerationOptions, special: Special, vocab_size: int,
                 drafters: Sequence[Drafter], token_text, record: bool = True):
        self.graphs, self.special, self.max_steps = graphs, special, options.max_new_tokens
        self.record = record  # keep each round's Emitted tokens (a server streams them; generate does not)
        self.rows = [_Row(options, special, token_text, d) for d in drafters]
        self.state = graphs.start(encoded)
        self.slots = list(range(len(self.rows)))  # the rows in the decoder state, in its order
        shape = (len(self.rows), self.max_steps, vocab_size)  # [rows, steps, vocab]; zeros after a row ends
        self.logits = np.zeros(shape, np.float32) if options.output_logits else None
        self.scores = np.zeros(shape, np.float32) if options.output_scores else None
        self.stats = dict.fromkeys(("rounds", "drafted", "accepted", "decoder_passes", "redecided"), 0)
        self.emitted: list[Emitted] = []  # the current round's tokens, in order per row

    @property
    def done(self) -> bool:
        return all(row.done for row in self.rows)

    def speculation(self) -> SpeculationStats:
        return SpeculationStats(**self.stats, draft_passes=sum(getattr(row.drafter, "passes", 0) for row in self.rows))

    def emit(self, r: int, logits: np.ndarray, scores: np.ndarray, lse: np.ndarray) -> int:
        """Row r's next token from its raw logits, processed scores [1, vocab] and logsumexp [1, 1]."""
        row = self.rows[r]
        tokens, _, done = row.strategy.update(logits, scores, lse)
        for buffer, value in ((self.logits, logits), (self.scores, scores)):
            if buffer is not None:
                buffer[r, row.steps] = value[0]
        row.steps += 1
        row.done = bool(done) or row.steps >= self.max_steps
        token = int(tokens[0])
        if self.record:
            self.emitted.append(Emitted(r, row.steps - 1, token, logits[0], float(lse[0, 0]),
                                        float(row.strategy.token_logprobs[0, row.steps - 1]), row.done))
        return token

    def step_inputs(self, r: int, slot: int, block: np.ndarray, lse: np.ndarray, i: int):
        """Row r's raw logits [1, vocab], processed scores [1, vocab] and logsumexp [1, 1] (checked) at
        position i of a pass, where it is row ``slot`` of the decoder state."""
        row = self.rows[r]
        logits = block[slot: slot + 1, i]
        row_lse = checked(lse[slot: slot + 1, i: i + 1], f"at step {row.steps}, batch row {r}")
        return logits, score(row.strategy, row.processors, logits, row_lse), row_lse

    def round(self) -> list[Emitted]:
        """Draft, verify in one pass, keep each row's accepted tokens; re-decide near-ties in one more pass.
        Rows that ended have left the decoder state first (a verify pass computes only live rows).
        Returns the tokens emitted, per row in order (none unless ``record``)."""
        self.emitted = []
        pad = self.special.pad_token_id
        live = [r for r in self.slots if not self.rows[r].done]
        if len(live) < len(self.slots):
            self.state = self.graphs.select(self.state, np.array([self.slots.index(r) for r in live]))
            self.slots = live
        drafts = {r: self.rows[r].drafter.propose(self.rows[r].strategy.input_ids[0],
                                                  self.max_steps - self.rows[r].steps - 1) for r in live}
        fed = np.full((len(live), 1 + max(len(d) for d in drafts.values())), pad, np.int64)  # [live, 1 + k]
        for slot, r in enumerate(live):
            fed[slot, 0], fed[slot, 1: 1 + len(drafts[r])] = self.rows[r].last, drafts[r]
        start = self.state.past_length
        lse = np.empty(fed.shape, np.float32)
        block, self.state = self.graphs.forward(fed, self.state, logsumexp_out=lse)  # [live, 1 + k, vocab]
        kept = np.zeros(len(live), np.int64)
        redecide = {}  # row -> position decided again by a one-token pass
        for slot, r in enumerate(live):
            kept[slot], position, matched = self.walk(r, slot, block, lse, drafts[r], one_token=fed.shape[1] == 1)
            self.stats["accepted"] += matched
            if position is not None:
                redecide[r] = position
            else:
                self.rows[r].drafter.accepted(self.rows[r].strategy.input_ids[0], len(drafts[r]), matched)
        self.stats["rounds"] += 1
        self.stats["decoder_passes"] += 1
        if fed.shape[1] == 1:  # nothing drafted (nothing to copy): a plain greedy step, every row keeps its column
            return self.emitted
        self.state = self.graphs.keep(self.state, start, kept)
        self.stats["drafted"] += sum(len(d) for d in drafts.values())
        if redecide:
            self.one_token_pass(live, redecide, fed, drafts)
        if self.graphs.unused_columns(self.state) >= max(32, self.state.past_length // 4):
            self.state = self.graphs.compact(self.state)  # rows moved right: drop the padding they share
        return self.emitted

    def walk(self, r: int, slot: int, block: np.ndarray, lse: np.ndarray, drafts: np.ndarray,
             one_token: bool) -> tuple[int, int | None, int]:
        """Row r's positions of the pass (row ``slot`` of it), in order, as plain greedy's steps, until its pick
        differs from its draft or it ends. ``one_token``: the pass fed one token per row (computed as plain
        greedy computes it: no near-tie to re-decide). Returns (columns its cache keeps, the position to decide
        again or None, drafts emitted as they were)."""
        row = self.rows[r]
        for i in range(len(drafts) + 1):  # position i: the logits after [last token, d_1..d_i]
            logits, scores, row_lse = self.step_inputs(r, slot, block, lse, i)
            if not one_token and _top_two_gap(scores[0]) < near_tie_bound(logits):
                return i, i, i  # keep [last token, d_1..d_i-1]; position i again from a one-token pass
            token = self.emit(r, logits, scores, row_lse)
            matched = i < len(drafts) and token == drafts[i]
            if row.done or not matched:
                return i + 1, None, i + int(matched)
        raise AssertionError("unreachable: the last position has no draft to match")

    def one_token_pass(self, live: list[int], redecide: dict[int, int], fed: np.ndarray, drafts: dict) -> None:
        """One token per row: a re-decided row feeds the token before its near-tie position (its logits are then
        computed as plain greedy computes them); every other live row takes a plain greedy step. ``live``: the
        rows of the verify pass, in the decoder state's order; ``fed``: its tokens."""
        tokens = np.full((len(live), 1), self.special.pad_token_id, np.int64)
        for slot, r in enumerate(live):
            if not self.rows[r].done:
                tokens[slot, 0] = fed[slot, redecide[r]] if r in redecide else self.rows[r].last
        start = self.state.past_length
        lse = np.empty(tokens.shape, np.float32)
        block, self.state = self.graphs.forward(tokens, self.state, logsumexp_out=lse)
        for slot, r in enumerate(live):
            if self.rows[r].done:
                continue
            token = self.emit(r, *self.step_inputs(r, slot, block, lse, 0))
            if r in redecide:
                i = redecide[r]
                matched = i < len(drafts[r]) and token == drafts[r][i]
                self.stats["accepted"] += int(matched)
                self.rows[r].drafter.accepted(self.rows[r].strategy.input_ids[0], len(drafts[r]), i + int(matched))
        self.state = self.graphs.keep(self.state, start, np.ones(len(live), np.int64))
        self.stats["decoder_passes"] += 1
        self.stats["redecided"] += len(redecide)

    def output(self) -> DecodeOutput:
        """The rows' results as one batch, as plain greedy pads them: pad tokens (and log-prob 0) after a
        row's end, up to the longest row."""
        steps = max(row.steps for row in self.rows)
        sequences = np.full((len(self.rows), 1 + steps), self.special.pad_token_id, np.int64)
        logprobs = np.zeros((len(self.rows), steps), np.float32)
        for r, row in enumerate(self.rows):
            out = row.strategy.finalize()
            sequences[r, : 1 + row.steps] = out.sequences[0]
            logprobs[r, : row.steps] = out.token_logprobs[0]
        return DecodeOutput(search=SearchOutput(sequences, logprobs),
                            logits=None if self.logits is None else self.logits[:, :steps],
                            scores=None if self.scores is None else self.scores[:, :steps])


def start(target, encoded, options: GenerationOptions, special: Special, assistant=None,
          token_text=None, record: bool = True) -> SpeculativeDecoding:
    """Speculative greedy decoding of ``encoded`` (any batch) by runtime ``target``, set up: each row drafts by
    prompt lookup (``options.prompt_lookup_num_tokens``, from its own source) or by the ``assistant`` runtime
    (a draft decoder per row)."""
    check_request(options, assistant, target)
    drafters: list[Drafter]
    if assistant is not None:  # the draft model's encoder: one pass over the batch; a draft decoder per row
        own = assistant.graphs.encode(encoded.input_ids, encoded.attention_mask)
        rows = [own] if encoded.batch_size == 1 else [own[r] for r in range(encoded.batch_size)]
        drafters = [DraftModel(assistant, row, options, special.eos_token_ids,
                               num_tokens=options.num_assistant_tokens or 20,
                               schedule=options.num_assistant_tokens_schedule or "constant") for row in rows]
    else:
        ids, mask = encoded.input_ids, encoded.attention_mask
        drafters = [PromptLookup(ids[r, mask[r] == 1], options.prompt_lookup_num_tokens,
                                 options.max_matching_ngram_size or 2) for r in range(encoded.batch_size)]
    return SpeculativeDecoding(target.graphs, encoded, options, special, target.vocab_size, drafters, token_text,
                               record)


def run(target, encoded, options: GenerationOptions, special: Special,
        assistant=None, token_text=None) -> tuple[DecodeOutput, SpeculationStats]:
    """:func:`start`, then rounds until every row is done (``generate``'s path)."""
    decoding = start(target, encoded, options, special, assistant, token_text, record=False)
    while not decoding.done:
        decoding.round()
    return decoding.output(), decoding.speculation()
