"""Speculative greedy decoding: draft several tokens, verify them in one decoder pass, keep what greedy keeps.

    draft (prompt lookup or a draft model) -> one decoder pass over [last token, d_1..d_k]
    -> per position, in order: processors -> greedy pick -> stopping criteria
    -> stop at the first position whose pick differs from the draft -> roll the cache back

Every emitted token goes through exactly what plain greedy does at that step (the
same :class:`~t5ort.runtime.strategies.SingleSequenceSearch`, processors and
stopping criteria, called once per emitted token with the same ``input_ids``);
only where the raw logits come from differs: position i of a k-token pass instead
of a one-token step. Those agree to floating-point rounding (the parity bound of
:func:`~t5ort.runtime.decoding.near_tie_bound`), so the sequences are plain greedy's except where the two
best processed scores are closer than that bound: such a step is decided again
from a one-token pass, computed as plain greedy computes it. The loop is the decoding loop itself
(:func:`~t5ort.runtime.decoding.run_steps` with a drafter); this module holds the drafters.

Drafters (``propose(sequence, limit) -> tokens`` and ``accepted(...)``):

- :class:`PromptLookup`: the continuation of the latest n-gram of the output
  found in the source tokens (the encoder input) or in the output so far;
- :class:`DraftModel`: a second, smaller t5ort runtime with the same vocabulary,
  decoding greedily with its own cache, rolled back like the target's.

Batch 1 only: rows accept different numbers of tokens, so their positions would differ, and
the decoder graph takes one ``past_length`` for all rows (per-row cache lengths: not yet).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np

from .decoding import DecodeOutput, Drafter, Special, decode
from .options import GenerationOptions
from .processors import build_processors
from .results import SpeculationStats


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


def run(target, encoded, options: GenerationOptions, special: Special,
        assistant=None, token_text=None) -> tuple[DecodeOutput, SpeculationStats]:
    """Speculative greedy decoding of one encoded input (batch 1) by runtime ``target``, drafting by
    prompt lookup (``options.prompt_lookup_num_tokens``) or by the ``assistant`` runtime."""
    check_request(options, assistant, encoded.batch_size, target)
    input_ids, attention_mask = encoded.input_ids, encoded.attention_mask
    source = input_ids[0, attention_mask[0] == 1]
    if assistant is not None:
        drafter: Drafter = DraftModel(
            assistant, input_ids, attention_mask, options, special.eos_token_ids,
            num_tokens=options.num_assistant_tokens or 20,
            schedule=options.num_assistant_tokens_schedule or "constant",
        )
    else:
        drafter = PromptLookup(source, options.prompt_lookup_num_tokens, options.max_matching_ngram_size or 2)
    graphs, stats = target.graphs, {}
    out = decode(graphs, encoded, options, special, target.vocab_size, token_text, drafter=drafter, stats=stats)
    counts = {key: stats.get(key, 0) for key in ("rounds", "drafted", "accepted", "decoder_passes", "redecided")}
    return out, SpeculationStats(**counts, draft_passes=getattr(drafter, "passes", 0))
