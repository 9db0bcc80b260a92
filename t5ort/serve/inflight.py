"""In-flight batching for ``t5ort serve``: requests join and leave the running decode batch at every step.

Knows nothing of HTTP: it takes the jobs and channels of :mod:`.scheduler` (the boundary the
HTTP layer talks to) and drives a :class:`~t5ort.runtime.inflight.InflightBatch`. One worker
thread loops:

1. **admit** (at every step boundary): waiting jobs, oldest first, while the batch has room:
   at most ``max_batch_rows`` decoder rows, and a cache token budget, ``max_batch_tokens``:
   rows x the longest ``max_new_tokens`` among them, the most cached positions a row can ever
   need (finished rows leave and the unused leading positions go with them). The first job
   that does not fit waits, and so do the ones behind it (first come, first served). The
   admitted jobs' encoder runs once for all of them and their rows join the batch;
2. **step**: one decoder step for every live row; each request's own processors and strategy
   pick its tokens (per-request temperature, top-k/top-p, seed, repetition penalty, min/max
   tokens, stop strings...);
3. **deliver**: each request gets its step's token, logprob and top-n through its channel;
4. **retire**: rows that hit EOS, their max tokens or a stop string, or whose client left or
   deadline passed, leave the live set; their rows are dropped once that pays.

Greedy requests asking for ``prompt_lookup_num_tokens`` run as their own speculative groups (one
draft-and-verify round per step, beside the main batch) while the server is light (at most
``max_speculative_rows`` rows in flight with theirs); on a busy server they join the main batch as
plain greedy, which emits the same tokens in a shared pass. Beam-search requests run as their own
groups (one ``InflightBatch`` each, stepped in turn with the main batch; their rows count against
``max_batch_rows``) and answer at the end, as with dynamic batching. Score requests run as one
``runtime.score`` at a step boundary.

Admission policy: eager (every step boundary admits whatever fits). Measured against TGI's
rule (admit only when waiting >= ``waiting_served_ratio`` x running, or the oldest has waited
``max_waiting_steps`` steps) in benchmarks/inflight_load.py (docs/serving.md).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..runtime import speculative
from ..runtime.inflight import InflightBatch, Member, MemberStep
from .scheduler import (
    DynamicBatcher, Entry, Failed, GenerateJob, RequestQueue, RowText, ScoreJob, _Live, _Row,
)

log = logging.getLogger("t5ort.serve")

BATCHING = ("inflight", "dynamic", "none")


def make_scheduler(runtime, config, metrics):
    """The scheduler ``config.batching`` names: in-flight (the default), dynamic, or none (one request at a time)."""
    batching = getattr(config, "batching", "inflight")
    if batching == "inflight":
        return InflightScheduler(runtime, config, metrics)
    if batching == "dynamic":
        return DynamicBatcher(runtime, config, metrics)
    if batching == "none":
        return DynamicBatcher(runtime, replace(config, max_batch_size=1), metrics)
    raise ValueError(f"batching={batching!r} is not supported; use one of {BATCHING}.")


class _WaitingQueue(RequestQueue):
    """The bounded queue, read at step boundaries: take what waits without blocking, or block when idle."""

    def wait(self, timeout: float) -> bool:
        """Block until a job waits or the queue closes (or ``timeout`` s pass); True if a job waits."""
        with self._cond:
            if not self._entries and not self._closed:
                self._cond.wait(timeout)
            return bool(self._entries)

    def peek(self) -> list[Entry]:
        with self._cond:
            return list(self._entries)

    def remove(self, entries: list[Entry]) -> None:
        with self._cond:
            gone = set(map(id, entries))
            self._entries = type(self._entries)(e for e in self._entries if id(e) not in gone)

    @property
    def closed(self) -> bool:
        return self._closed


@dataclass(eq=False)
class _Request:
    """A generate job in a batch: its scheduler-side rows (text, logprobs, top-n) and its runtime member."""

    live: _Live
    member: Member
    group: InflightBatch | _SpeculativeGroup
    beam_logits: list[np.ndarray] | None = None  # beam search: each step's raw logits [beams, vocab]


@dataclass(frozen=True, eq=False)
class _Event:
    """What :meth:`DynamicBatcher._deliver` reads from a step: one request's rows."""

    step: int
    token_ids: np.ndarray
    logits: np.ndarray
    finished: np.ndarray
    logprobs: np.ndarray | None = None  # float32 [rows]: the chosen tokens' log-probs under the raw logits
    logsumexp: np.ndarray | None = None  # float32 [rows]: of the raw logits, as the decoder graph computed it


class _SpeculativeGroup:
    """One greedy request decoded speculatively (``prompt_lookup_num_tokens``), one draft-and-verify round per
    scheduler step beside the in-flight batch (a round emits 1 to k + 1 tokens). It has the batch's interface
    as the scheduler uses it: ``step()`` -> the member's steps, ``len``, ``rows``, ``cancel``."""

    def __init__(self, runtime, member: Member, input_ids: np.ndarray, encoder):
        ids = np.asarray(input_ids, np.int64).reshape(1, -1)
        encoded = encoder.encode(ids, np.ones_like(ids))
        if encoded.input_ids is None:  # prompt lookup drafts from the source ids
            encoded = replace(encoded, input_ids=ids)
        self.member = member
        self.decoding = speculative.start(runtime, encoded, member.options, member.special,
                                          token_text=runtime._token_text())

    def __len__(self) -> int:
        return int(self.member.live)

    @property
    def rows(self) -> int:
        return self.member.rows if self.member.live else 0

    live_rows = rows  # a finished speculative group holds no rows

    def step(self) -> list[MemberStep]:
        m, out = self.member, []
        for e in self.decoding.round():
            m.steps += 1
            if e.done:
                m.live = False
            out.append(MemberStep(m, e.index, e.logits[None], np.array([e.token]), np.array([e.done]), e.done,
                                  None, np.array([e.logprob], np.float32), np.array([e.logsumexp], np.float32)))
        return out

    def cancel(self, member: Member) -> None:
        member.live = False


class InflightScheduler(DynamicBatcher):
    """In-flight batching on one worker thread (see the module docstring); the HTTP side is unchanged."""

    def __init__(self, runtime, config, metrics, *, waiting_served_ratio: float = 0.0, max_waiting_steps: int = 0):
        super().__init__(runtime, config, metrics)
        self.queue = _WaitingQueue(config.max_queue)
        self.max_rows = int(getattr(config, "max_batch_rows", 32))
        self.max_tokens = int(getattr(config, "max_batch_tokens", 8192))
        self.max_speculative_rows = int(getattr(config, "max_speculative_rows", 2))
        self.waiting_served_ratio = waiting_served_ratio
        self.max_waiting_steps = max_waiting_steps
        self.main = InflightBatch(runtime, encoder_cache=self.encoder_cache)
        self.beams: list[InflightBatch] = []
        self.speculative: list[_SpeculativeGroup] = []
        self.requests: dict[int, _Request] = {}  # id(member) -> request
        self._waited_steps = 0  # steps the oldest waiting job has waited (for max_waiting_steps)

    # ---- the loop ----------------------------------------------------------------

    @property
    def _groups(self) -> list:
        return [self.main, *self.beams, *self.speculative]

    @property
    def rows(self) -> int:
        return sum(g.rows for g in self._groups)

    @property
    def live_rows(self) -> int:
        """Rows still decoding (``rows`` also counts finished rows not yet dropped)."""
        return sum(g.live_rows for g in self._groups)

    def _loop(self) -> None:
        while True:
            running = bool(self.requests)
            if not running and not self.queue.wait(0.5):
                if self.queue.closed:
                    return
                continue
            if self._abort.is_set():
                self._fail_all("shutdown", "the server shut down during this request")
                return
            try:
                if len(self.queue):  # nothing waits: no lock, no copy of the queue between steps
                    self._admit_waiting()
                else:
                    self._waited_steps = 0
                if self.requests:
                    self._step()
            except Exception as exc:  # noqa: BLE001 - a fault must answer every running request, not kill the thread
                log.exception("in-flight step failed: %s", exc, extra={"request_id": "-"})
                self._fail_all("internal", f"generation failed: {type(exc).__name__}: {exc}")
                self.metrics.failures.labels(reason="internal").inc()

    def _fail_all(self, kind: str, message: str) -> None:
        for request in list(self.requests.values()):
            request.live.entry.channel.send(Failed(kind, message))
        self.requests.clear()
        self.main = InflightBatch(self.runtime, encoder_cache=self.encoder_cache)
        self.beams, self.speculative = [], []
        self.metrics.rows_in_flight.set(0)

    # ---- admission ---------------------------------------------------------------

    def _should_admit(self, waiting: int) -> bool:
        """TGI's rule: interrupt decoding for new work only when enough waits or it waited long enough."""
        running = len(self.requests)
        if not running or self.waiting_served_ratio <= 0:
            return True
        return waiting >= self.waiting_served_ratio * running or self._waited_steps >= self.max_waiting_steps

    def _fits(self, rows: int, max_new_tokens: int, longest: int) -> bool:
        total = self.rows + rows
        return total <= self.max_rows and total * max(longest, max_new_tokens) <= self.max_tokens

    def _admit_waiting(self) -> None:
        waiting = self.queue.peek()
        now = time.monotonic()
        gone = [e for e in waiting if e.channel.closed or now > e.job.deadline]
        if gone:  # answered at once (timeout) or dropped, even while the batch is full
            self.queue.remove(gone)
            self._admit(gone)
            waiting = [e for e in waiting if e not in gone]
        if not waiting:
            self._waited_steps = 0
            return
        if not self._should_admit(len(waiting)):
            self._waited_steps += 1
            return
        self._waited_steps = 0
        longest = max((r.member.max_new_tokens for r in self.requests.values()), default=0)
        taken, scores, members, inputs, pending_rows = [], [], [], [], 0
        for entry in waiting:
            job = entry.job
            if isinstance(job, ScoreJob):
                taken.append(entry)
                scores.append(entry)
                continue
            if not self._fits(pending_rows + job.rows, job.max_new_tokens, longest) and (self.requests or taken):
                break  # first come, first served: the rest wait behind it
            taken.append(entry)
            pending_rows += job.rows
            longest = max(longest, job.max_new_tokens)
        self.queue.remove(taken)
        self.metrics.queue_depth.set(len(self.queue))
        kept = self._admit(taken)  # drops the ones whose client left or whose deadline passed
        now = time.monotonic()
        for entry in kept:
            if isinstance(entry.job, ScoreJob):
                continue
            try:
                member = self._member(entry)
            except (ValueError, TypeError, MemoryError) as exc:  # the runtime refused: a request error
                entry.channel.send(Failed("invalid", str(exc)))
                self.metrics.failures.labels(reason="invalid").inc()
                continue
            rows = [_Row(RowText(self.runtime.tokenizer, self._special_ids)) for _ in range(entry.job.rows)]
            if member.options.speculative and self._speculates(member, members):
                group = _SpeculativeGroup(self.runtime, member, entry.job.input_ids, self.encoder_cache or
                                          self.runtime.graphs)
                self.speculative.append(group)
                self.requests[id(member)] = _Request(_Live(entry, rows, 0, now), member, group)
            elif member.beam:
                group = InflightBatch(self.runtime, encoder_cache=self.encoder_cache)
                group.admit([member], [entry.job.input_ids])
                self.beams.append(group)
                self.requests[id(member)] = _Request(_Live(entry, rows, 0, now), member, group, [])
            else:
                members.append(member)
                inputs.append(entry.job.input_ids)
                self.requests[id(member)] = _Request(_Live(entry, rows, 0, now), member, self.main)
        if members:
            self.main.admit(members, inputs)
            self.metrics.batch_size.observe(len(self.requests))  # requests in the batch once these joined
            log.info("admitted %d request(s): %s; %d row(s) in flight", len(members),
                     ", ".join(m.tag.job.request_id for m in members), self.rows, extra={"request_id": "-"})
        score_entries = [e for e in kept if isinstance(e.job, ScoreJob)]
        if score_entries:
            self._score(score_entries)

    def _speculates(self, member: Member, joining: list[Member]) -> bool:
        """A request asking for speculation gets it only while the server is light: the rows in flight, with
        those joining now and its own, at most ``max_speculative_rows``. Each speculating request runs its own
        decoder pass per round, so on a busy server it joins the main batch as plain greedy (the same tokens)."""
        rows = self.live_rows + sum(m.rows for m in joining) + member.rows
        if rows <= self.max_speculative_rows:
            return True
        log.info("%s: prompt lookup not used, %d rows in flight (--max-speculative-rows %d): plain greedy in the "
                 "batch", member.tag.job.request_id, rows - member.rows, self.max_speculative_rows,
                 extra={"request_id": member.tag.job.request_id})
        return False

    def _member(self, entry: Entry) -> Member:
        job: GenerateJob = entry.job
        options: dict[str, Any] = dict(job.options)
        return self.main.prepare(job.input_ids, tag=entry, max_new_tokens=job.max_new_tokens, speculative_ok=True,
                                 **options)

    def _score(self, entries: list[Entry]) -> None:
        """One ``runtime.score`` for the waiting score jobs; a failure answers them alone."""
        try:
            self._run_score(entries)
        except (ValueError, TypeError, MemoryError) as exc:
            for entry in entries:
                entry.channel.send(Failed("invalid", str(exc)))
            self.metrics.failures.labels(reason="invalid").inc(len(entries))
        except Exception as exc:  # noqa: BLE001 - the running generations go on
            log.exception("score failed: %s", exc, extra={"request_id": "-"})
            for entry in entries:
                entry.channel.send(Failed("internal", f"scoring failed: {type(exc).__name__}: {exc}"))
            self.metrics.failures.labels(reason="internal").inc(len(entries))

    # ---- stepping and delivery ------------------------------------------------------

    def _step(self) -> None:
        started = time.monotonic()
        outputs: list[MemberStep] = []
        for group in self._groups:
            if len(group):
                outputs.extend(group.step())
        now = time.monotonic()
        self.metrics.step_seconds.observe(now - started)
        for out in outputs:
            request = self.requests[id(out.member)]
            if out.member.beam:
                self._beam_step(request, out, now)
            else:
                self._deliver([request.live], _Event(out.index, out.tokens, out.logits, out.finished,
                                                     out.logprobs, out.logsumexp), now)
            if self._done(request.live, now) or out.done:
                self._retire(request, now, out.done)
        self.beams = [g for g in self.beams if len(g)]
        self.speculative = [g for g in self.speculative if len(g)]
        self.metrics.rows_in_flight.set(self.rows)

    def _beam_step(self, request: _Request, out: MemberStep, now: float) -> None:
        job = request.live.job
        if job.top_n or job.want_logits:
            request.beam_logits.append(out.logits.copy())
        if out.done and not request.live.entry.channel.closed and now <= job.deadline:
            self._beam_answer(request, now)

    def _beam_answer(self, request: _Request, now: float) -> None:
        job, member = request.live.job, request.member
        search = member.finalize()
        logits = np.stack(request.beam_logits, axis=1) if request.beam_logits else None  # [beams, steps, vocab]
        result = _BeamResult(search.sequences, search.token_logprobs, search.sequences_scores, search.beam_indices,
                             logits)
        rows = tuple(self._beam_row(job, result, r) for r in range(job.rows))
        self.metrics.ttft_seconds.observe(now - job.arrived)
        self.metrics.generated_tokens.inc(sum(len(r.ids) for r in rows))
        self._answer(request.live.entry, rows, request.live.started, now)
        request.live.rows[0].finish_reason = "answered"  # so _done() sees it as finished

    def _done(self, lv: _Live, now: float) -> bool:
        if lv.job.beam and lv.rows[0].finish_reason != "answered":
            if lv.entry.channel.closed or lv.entry.gone:
                self.metrics.failures.labels(reason="cancelled").inc()
                return True
            if now > lv.job.deadline:
                self._timeout(lv.entry)
                return True
            return False
        if lv.job.beam:
            return True
        return super()._done(lv, now)

    def _retire(self, request: _Request, now: float, finished: bool) -> None:
        lv = request.live
        if finished and not lv.job.beam and any(row.finish_reason is None for row in lv.rows):
            self._finish(lv, now)  # the member is done (max tokens) though a row got no reason yet
        if request.member.live:
            request.group.cancel(request.member)
        del self.requests[id(request.member)]
        elapsed = now - lv.started
        self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * elapsed


@dataclass(frozen=True, eq=False)
class _BeamResult:
    """What :meth:`DynamicBatcher._beam_row` reads from a generate result."""

    sequences: np.ndarray
    token_logprobs: np.ndarray
    sequences_scores: np.ndarray
    beam_indices: np.ndarray
    logits: np.ndarray | None
