"""In-flight batching: many generations share one decoder batch and join or leave it at any step.

    batch = InflightBatch(runtime)
    a = batch.add(ids_a, max_new_tokens=32)                    # encoder run, rows joined
    for out in batch.step(): ...                               # one decoder step for every live row
    b = batch.add(ids_b, do_sample=True, seed=3, top_p=0.9)    # joins the running batch
    for out in batch.step(): ...                               # a and b each get their own step

Each member is one ``generate`` call's worth of work (one input; its rows are its beams or
return sequences) with its own :class:`~t5ort.GenerationOptions`, and it keeps the
strategy, processors and stopping criteria ``generate`` would build for it alone
(:func:`~t5ort.runtime.decoding.make_strategy`, :func:`~t5ort.runtime.processors.build_processors`),
so per-row temperature, top-k/top-p, seeds, repetition penalty, min/max tokens, stop strings and
beam search all share one batch. What differs from a solo run is only the layout of the batch:
a member that joins late sits left-padded in the shared self-attention cache with its padding
masked out, and its source is padded to the longest one in the batch, with the encoder mask
(:meth:`~t5ort.runtime.graphs.T5Graphs.join`). Its tokens equal the solo run's and its raw
logits lie within the fp32 parity tolerance of them (tests/test_inflight.py).

The batch runs on the export's one decoder graph, as every other path does
(:class:`~t5ort.runtime.graphs.T5Graphs`: the cache stays in place, only each step's new
keys/values come back).

Finished rows are not removed at once: removing rows copies the whole cache, so dead rows
(fed padding, their history masked out as they finish) stay until they are more than
``dead_row_fraction`` of the batch, and a new member takes over a dead member's rows in place
(measured on the t5-small shape, 16 rows: a removal or a join cost 25-85 ms each, about one
decoder step); a source longer than the batch's widens the cross-attention keys/values first.
Removing rows also drops the leading cached positions that no remaining row attends to, and so
does a compaction once those are at least a quarter of the cache (and 16 positions; it moves the
used columns left within the same buffers): the cache stays about as wide as the oldest live
row's history.

Pure numpy apart from the graphs; knows nothing of HTTP or threads (one caller at a time).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .decoding import Special, advance, make_strategy
from .numerics import checked
from .options import GenerationOptions
from .processors import LogitsProcessor, build_processors

COMPACT_MIN = 16  # leading cached positions no row attends to, before compact() moves the rest left


@dataclass(eq=False)
class Member:
    """One generation in the batch: its options, strategy and processors, and where its rows sit."""

    options: GenerationOptions
    special: Special
    strategy: Any  # SingleSequenceSearch or BeamSearch, as generate() makes it for this input alone
    processors: list[LogitsProcessor]
    rows: int  # decoder rows: beams, or return sequences
    source_length: int
    tag: Any = None  # the caller's handle (a request)
    first: int = -1  # index of its first row in the batch; -1 until admitted
    steps: int = 0
    live: bool = True  # False once done or cancelled: its rows wait to be removed
    joined_at: int = -1  # the batch's step count when it joined

    @property
    def beam(self) -> bool:
        return self.options.strategy == "beam"

    @property
    def max_new_tokens(self) -> int:
        return self.options.max_new_tokens

    def finalize(self):
        """The member's :class:`~t5ort.runtime.strategies.SearchOutput`, as ``generate`` returns it."""
        return self.strategy.finalize()


@dataclass(frozen=True, eq=False)
class MemberStep:
    """One member's share of a decoder step."""

    member: Member
    index: int  # the member's own step (0: its first token)
    logits: np.ndarray  # float32 [rows, vocab], raw (a view into the step's logits)
    tokens: np.ndarray  # int64 [rows]: each row's token (beam search: the continuing beams' tokens)
    finished: np.ndarray  # bool [rows]: rows that are done (greedy/sampling)
    done: bool  # the member is finished: this was its last step
    source: np.ndarray | None = None  # beam search: the member-local source row of each continuing beam
    logprobs: np.ndarray | None = None  # float32 [rows]: log-softmax of the raw logits at each token (not beams)
    logsumexp: np.ndarray | None = None  # float32 [rows]: of each row's raw logits, as the graph computed it


@dataclass
class BatchStats:
    """What the batch did, for the scheduler's metrics and tests."""

    steps: int = 0
    joins: int = 0
    fills: int = 0  # members that took over the rows of a finished one
    widenings: int = 0  # the sources' width grown so that a longer new source could take over done rows
    compactions: int = 0
    removals: int = 0
    reorders: int = 0
    removed_columns: int = 0
    row_steps: int = 0  # decoder rows run, summed over steps
    dead_row_steps: int = 0  # of which rows that were done and waited for removal
    sizes: list[int] = field(default_factory=list)


class InflightBatch:
    """A running decoder batch whose members join and leave at step boundaries."""

    def __init__(self, runtime, *, dead_row_fraction: float = 0.25, encoder_cache=None):
        """``encoder_cache``: an :class:`~t5ort.runtime.encoder_cache.EncoderCache` that new members' sources
        go through (recent ones are not encoded again); None: every source is encoded."""
        if not 0.0 <= dead_row_fraction <= 1.0:
            raise ValueError(f"dead_row_fraction must lie in [0, 1], got {dead_row_fraction!r}.")
        self.runtime = runtime
        self.graphs = runtime.graphs
        self.encoder = encoder_cache if encoder_cache is not None else runtime.graphs
        self.dead_row_fraction = dead_row_fraction
        self.members: list[Member] = []
        self.state = None  # graphs.DecoderState over every member's rows, in member order
        self.stats = BatchStats()

    # ---- what is in the batch ---------------------------------------------------------

    @property
    def rows(self) -> int:
        """Decoder rows in the batch, dead ones included."""
        return sum(m.rows for m in self.members)

    @property
    def live_rows(self) -> int:
        return sum(m.rows for m in self.members if m.live)

    @property
    def live_members(self) -> list[Member]:
        return [m for m in self.members if m.live]

    @property
    def past_length(self) -> int:
        """Cached positions per row (the shared, left-padded width)."""
        return 0 if self.state is None else self.state.past_length

    def __len__(self) -> int:
        return len(self.live_members)

    # ---- joining ------------------------------------------------------------------------

    def prepare(self, input_ids: np.ndarray, tag: Any = None, speculative_ok: bool = False, **options: Any) -> Member:
        """A member for one input (int [L], unpadded) and its options, checked; no graph work yet.
        ``speculative_ok``: the caller decodes a speculative member itself (a server's own group), not in
        this batch."""
        for name in ("output_logits", "output_scores", "logits_processor", "stopping_criteria"):
            if options.get(name):
                raise ValueError(f"{name} is not supported in an in-flight batch.")
        opts = GenerationOptions.create(**options, output_logits=False).validate(self.runtime.vocab_size)
        if opts.speculative and not speculative_ok:
            raise ValueError("speculative decoding options do not apply to an in-flight batch; use generate().")
        ids = np.asarray(input_ids, dtype=np.int64).reshape(1, -1)
        ids, _ = self.runtime._check_ids(ids, None)
        self.runtime.limits.check(ids, opts.max_new_tokens, 0, "an in-flight member")
        special = self.runtime._special(opts)
        strategy = make_strategy(opts, 1, special, self.runtime._token_text())
        processors = build_processors(opts, special.eos_token_ids)
        return Member(opts, special, strategy, processors, opts.rows_per_input, ids.shape[1], tag)

    def add(self, input_ids: np.ndarray, tag: Any = None, **options: Any) -> Member:
        """:meth:`prepare` then :meth:`admit` one member."""
        member = self.prepare(input_ids, tag, **options)
        self.admit([member], [input_ids])
        return member

    def admit(self, members: Sequence[Member], inputs: Sequence[np.ndarray]) -> None:
        """Run the encoder once over ``inputs`` (one per member) and bring the members' rows in.

        A member takes the rows of a finished one where it can (as many rows, a source that fits
        the batch's width: :meth:`~t5ort.runtime.graphs.T5Graphs.fill`, no copy of the cache);
        the others join at the end (:meth:`~t5ort.runtime.graphs.T5Graphs.join`, one copy).
        """
        if not members:
            return
        if len(members) != len(inputs):
            raise ValueError(f"{len(members)} members but {len(inputs)} inputs; pass one input per member.")
        pad = self.runtime.manifest.special_tokens.pad_token_id
        width = max(len(x) for x in inputs)
        ids = np.full((len(inputs), width), pad, dtype=np.int64)  # [new, longest]
        mask = np.zeros((len(inputs), width), dtype=np.int64)
        for i, x in enumerate(inputs):
            ids[i, : len(x)] = x
            mask[i, : len(x)] = 1
        encoded = self.graphs.expand(self.encoder.encode(ids, mask), [m.rows for m in members])
        fills, rest, offset = [], [], 0
        dead = [d for d in self.members if not d.live]
        width = 0 if self.state is None else self.state.encoder.attention_mask.shape[1]
        longer = [m for m in members if m.source_length > width and any(d.rows == m.rows for d in dead)]
        if longer:  # wider sources (a copy of the cross keys/values) rather than a join (a copy of everything)
            width = max(m.source_length for m in longer)
            self.state = self.graphs.widen(self.state, width)
            self.stats.widenings += 1
        for m in members:
            rows = np.arange(offset, offset + m.rows)  # the member's rows in ``encoded``
            offset += m.rows
            slot = next((d for d in dead if d.rows == m.rows), None) if m.source_length <= width else None
            if slot is None:
                rest.append((m, rows))
            else:
                dead.remove(slot)
                fills.append((slot, m, rows))
        if fills:  # done rows start over in place: no copy of the cache
            self.state = self.graphs.fill(self.state, np.concatenate([np.arange(d.first, d.first + d.rows)
                                                                      for d, _, _ in fills]),
                                          encoded, np.concatenate([rows for _, _, rows in fills]))
            for slot, m, _ in fills:
                m.first, m.joined_at = slot.first, self.stats.steps
                self.members[self.members.index(slot)] = m
            self.stats.fills += len(fills)
        if rest:
            new = encoded if not fills else encoded[np.concatenate([rows for _, rows in rest])]
            if self._dead_rows() > self.dead_row_fraction * self.rows:
                self._remove_dead()
            self.state = self.graphs.join(self.state, new)
            first = self.rows
            for m, _ in rest:
                m.first, m.joined_at = first, self.stats.steps
                first += m.rows
                self.members.append(m)
            self.stats.joins += 1

    def _dead_rows(self) -> int:
        return self.rows - self.live_rows

    # ---- stepping -----------------------------------------------------------------------

    def step(self) -> list[MemberStep]:
        """One decoder step for every row; each live member's processors and strategy pick its tokens.

        Returns one :class:`MemberStep` per live member. Members that finish leave the live set
        (their rows are removed once that pays, see the module's docstring).
        """
        if not self.live_members:
            raise ValueError("the in-flight batch has no live member to step; admit one first.")
        pad = self.runtime.manifest.special_tokens.pad_token_id
        tokens = np.concatenate([m.strategy.input_ids[:, -1] if m.live else np.full(m.rows, pad, np.int64)
                                 for m in self.members])  # [rows]
        lse = np.empty((len(tokens), 1), np.float32)
        logits, self.state = self.graphs.step(tokens, self.state, logsumexp_out=lse[:, 0])  # [rows, vocab], raw
        lse = checked(lse, "in the in-flight batch")  # [rows, 1]
        self.stats.steps += 1
        self.stats.sizes.append(len(tokens))
        self.stats.row_steps += len(tokens)
        self.stats.dead_row_steps += len(tokens) - self.live_rows
        out, source = [], None
        for m in self.live_members:
            rows = slice(m.first, m.first + m.rows)
            step = self._advance(m, logits[rows], lse[rows])
            if step.source is not None and not np.array_equal(step.source, np.arange(m.rows)):
                if source is None:
                    source = np.arange(len(tokens))
                source[rows] = m.first + step.source
            out.append(step)
        if source is not None:
            self.state = self.graphs.reorder(self.state, source)
            self.stats.reorders += 1
        dead = [np.arange(m.first, m.first + m.rows) for m in self.members if not m.live]
        if dead:  # their history goes (each step gives them a column): no done row holds the leading columns
            self.state = self.graphs.release(self.state, np.concatenate(dead))
        if self._dead_rows() > self.dead_row_fraction * self.rows or not self.live_members:
            self._remove_dead()
        elif self.graphs.unused_columns(self.state) >= max(COMPACT_MIN, self.state.past_length // 4):
            before = self.state.past_length
            self.state = self.graphs.compact(self.state)  # pays: a quarter of the cache goes
            self.stats.removed_columns += before - self.state.past_length
            self.stats.compactions += 1
        return out

    def _advance(self, m: Member, logits: np.ndarray, lse: np.ndarray) -> MemberStep:
        """The member's processors and strategy on its rows' raw logits [rows, vocab], as run_steps does."""
        _, tokens, source, done = advance(m.strategy, m.processors, logits, lse)
        index = m.steps
        m.steps += 1
        done = bool(done) or m.steps >= m.max_new_tokens
        finished = getattr(m.strategy, "finished", None)
        finished = np.full(m.rows, done) if finished is None else finished.copy()
        if done:
            m.live = False
        logprobs = None if m.beam else m.strategy.token_logprobs[:, index].copy()
        return MemberStep(m, index, logits, np.asarray(tokens).copy(), finished, done, source, logprobs, lse[:, 0])

    # ---- leaving ------------------------------------------------------------------------

    def cancel(self, member: Member) -> None:
        """Stop ``member`` (its client left, its deadline passed): no more steps; rows removed later."""
        member.live = False
        if not self.live_members:
            self._remove_dead()

    def _remove_dead(self) -> None:
        dead = [m for m in self.members if not m.live]
        if not dead:
            return
        kept = [m for m in self.members if m.live]
        self.stats.removals += 1
        if not kept:
            self.members, self.state = [], None
            return
        rows = np.concatenate([np.arange(m.first, m.first + m.rows) for m in kept])
        before = self.state.past_length
        self.state = self.graphs.select(self.state, rows)
        self.stats.removed_columns += before - self.state.past_length
        first = 0
        for m in kept:
            m.first = first
            first += m.rows
        self.members = kept
