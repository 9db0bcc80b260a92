"""Jobs, per-request channels, the bounded queue and the dynamic batcher. Knows nothing of HTTP.

The boundary, so that another scheduler (in-flight batching) can replace this one:

- the HTTP layer turns a request into a :class:`GenerateJob` or :class:`ScoreJob` (fully
  validated, tokenized) and calls ``scheduler.submit(job, channel)``; a full queue raises
  :class:`QueueFull` at once, a stopping scheduler :class:`ShuttingDown`;
- the scheduler answers only through the ``channel``: zero or more :class:`TokenEvent`, then
  exactly one :class:`Finished`, :class:`ScoreFinished` or :class:`Failed`. ``channel.send``
  returning False, or ``channel.closed``, means the client went away: its rows are dropped;
- ``start()`` and ``stop(grace)`` run and end the background work.

:class:`DynamicBatcher` is the scheduler of issue 12: it collects up to ``max_batch_size``
compatible jobs within ``batch_window_ms`` and runs them as one ``stream``/``generate``/``score``
call on a worker thread.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol, Sequence

import numpy as np

from ..runtime.numerics import logsumexp

log = logging.getLogger("t5ort.serve")

_unique = itertools.count()


# ---- jobs ------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class GenerateJob:
    """One validated generation request: one input, ``rows`` outputs.

    ``options`` are :class:`~t5ort.GenerationOptions` keyword arguments except
    ``max_new_tokens``, which is per job (a batch runs to its longest job's).
    """

    request_id: str
    input_ids: np.ndarray  # int64 [L]: one tokenized input, EOS included
    options: tuple[tuple[str, Any], ...]
    max_new_tokens: int
    top_n: int = 0
    want_logits: bool = False
    deadline: float = float("inf")  # time.monotonic() by which the last token must be out
    arrived: float = field(default_factory=time.monotonic)
    entropy: bool = False  # also send each step's entropy (nats) of the next-token distribution
    stream: bool = True  # send every token as a TokenEvent; False: only the final answer (no per-step hand-off)

    @property
    def options_dict(self) -> dict[str, Any]:
        return dict(self.options)

    @cached_property
    def beam(self) -> bool:
        return self.options_dict.get("num_beams", 1) > 1

    @cached_property
    def rows(self) -> int:
        """Outputs of this job: num_return_sequences (beam search or sampling), else 1."""
        return int(self.options_dict.get("num_return_sequences", 1))

    @property
    def batch_key(self) -> tuple:
        """Jobs with equal keys may share a batch and get what each would get alone.

        Seeded sampling draws one random stream per decoder row by row index, so a
        seeded job runs alone; beam search depends on max_new_tokens, so it is in the key.
        """
        opts = self.options_dict
        if opts.get("do_sample") and opts.get("seed") is not None:
            return ("alone", next(_unique))
        if self.beam:
            return ("beam", self.options, self.max_new_tokens)
        return ("stream", self.options)


@dataclass(frozen=True, eq=False)
class ScoreJob:
    """Teacher-forced scoring of (source, target) pairs, tokenized."""

    request_id: str
    input_ids: tuple[np.ndarray, ...]  # each int64 [L]
    target_ids: tuple[np.ndarray, ...]  # each int64 [T], EOS included
    deadline: float = float("inf")
    arrived: float = field(default_factory=time.monotonic)

    batch_key = ("score",)
    rows = 1


Job = GenerateJob | ScoreJob


# ---- events --------------------------------------------------------------------


@dataclass(frozen=True)
class Alternative:
    id: int
    text: str
    logprob: float
    special: bool


@dataclass(frozen=True)
class TokenEvent:
    """One new token of one output row (``row`` < job.rows) at decoding step ``step``."""

    row: int
    step: int
    id: int
    text: str  # what the decoded text gained with this token ("" for special tokens)
    special: bool
    logprob: float  # log-softmax of the raw logits at this token
    top: tuple[Alternative, ...]  # the job's top_n most likely tokens, best first
    finish_reason: str | None = None  # set on the row's last token: eos_token, stop_sequence or length
    entropy: float | None = None  # nats, under the raw logits, when the job asked for it


@dataclass(frozen=True, eq=False)
class RowResult:
    ids: tuple[int, ...]
    texts: tuple[str, ...]
    specials: tuple[bool, ...]
    logprobs: tuple[float, ...]
    top: tuple[tuple[Alternative, ...], ...]
    finish_reason: str
    text: str  # the decoded output, special tokens skipped
    logits: np.ndarray | None = None  # float32 [steps, vocab], raw, when the job asked for them
    sequence_score: float | None = None  # beam search: the length-normalised score that ranked it
    entropies: tuple[float, ...] | None = None  # per step, nats, when the job asked for them


@dataclass(frozen=True, eq=False)
class Finished:
    rows: tuple[RowResult, ...]
    input_length: int
    queue_seconds: float
    inference_seconds: float


@dataclass(frozen=True, eq=False)
class ScoreFinished:
    target_ids: tuple[tuple[int, ...], ...]
    token_logprobs: tuple[tuple[float, ...], ...]
    total_logprobs: tuple[float, ...]


@dataclass(frozen=True)
class Failed:
    """The job ended without an answer. ``kind``: timeout, shutdown, invalid or internal."""

    kind: str
    message: str


class Channel(Protocol):
    """Where a job's events go. ``send`` returns False once the receiver is gone."""

    @property
    def closed(self) -> bool: ...

    def send(self, event: TokenEvent | Finished | ScoreFinished | Failed) -> bool: ...


class QueueFull(Exception):
    """The queue holds ``max_queue`` waiting jobs; ``retry_after`` is a guess in seconds."""

    def __init__(self, depth: int, retry_after: int):
        super().__init__(f"the queue is full ({depth} requests waiting); retry in {retry_after} s")
        self.retry_after = retry_after


class ShuttingDown(Exception):
    """The scheduler is stopping and takes no new work."""


class Scheduler(Protocol):
    """What the HTTP layer needs from a scheduler (dynamic batching here; in-flight batching later)."""

    def submit(self, job: Job, channel: Channel) -> None: ...

    def start(self) -> None: ...

    def stop(self, grace: float) -> None: ...

    @property
    def queue_depth(self) -> int: ...


# ---- the queue -------------------------------------------------------------------


@dataclass(eq=False)
class Entry:
    job: Job
    channel: Channel
    enqueued: float = field(default_factory=time.monotonic)
    gone: bool = False  # a send failed: the client went away


class RequestQueue:
    """Waiting jobs in arrival order, at most ``max_size``; ``next_batch`` takes compatible ones."""

    def __init__(self, max_size: int):
        self.max_size = max_size
        self._entries: deque[Entry] = deque()
        self._cond = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, entry: Entry, retry_after: int = 1) -> None:
        with self._cond:
            if self._closed:
                raise ShuttingDown("the server is shutting down and takes no new requests")
            if len(self._entries) >= self.max_size:
                raise QueueFull(len(self._entries), retry_after)
            self._entries.append(entry)
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def drain(self) -> list[Entry]:
        with self._cond:
            entries = list(self._entries)
            self._entries.clear()
            return entries

    def _take(self, key: tuple, batch: list[Entry], max_size: int) -> None:
        kept = deque()
        while self._entries:
            entry = self._entries.popleft()
            if len(batch) < max_size and entry.job.batch_key == key:
                batch.append(entry)
            else:
                kept.append(entry)
        self._entries = kept

    def next_batch(self, max_size: int, window_s: float) -> list[Entry] | None:
        """Block until a job waits; return it with up to ``max_size - 1`` compatible jobs that arrive
        within ``window_s``. None once the queue is closed and empty."""
        with self._cond:
            while not self._entries:
                if self._closed:
                    return None
                self._cond.wait(0.5)
            head = self._entries.popleft()
            batch = [head]
            key = head.job.batch_key
            if key[0] == "alone":
                return batch
            end = time.monotonic() + window_s
            while True:
                self._take(key, batch, max_size)
                remaining = end - time.monotonic()
                if len(batch) >= max_size or remaining <= 0 or self._closed:
                    return batch
                self._cond.wait(remaining)


# ---- text of new tokens ----------------------------------------------------------


class RowText:
    """What each new token adds to a row's decoded text, so that the pieces add up to the final text."""

    def __init__(self, tokenizer, special_ids: frozenset[int]):
        self._tokenizer = tokenizer
        self._special_ids = special_ids
        self._ids: list[int] = []
        self.text = ""

    def push(self, token_id: int) -> tuple[str, bool]:
        if token_id in self._special_ids:
            return self._tokenizer.token_string(token_id), True
        self._ids.append(token_id)
        full = self._tokenizer.decode_batch(np.array([self._ids]))[0]
        piece = full[len(self.text):] if full.startswith(self.text) else full[len(_common_prefix(full, self.text)):]
        self.text = full
        return piece, False


def _entropy(logits: np.ndarray, lse: float) -> float:
    """Entropy (nats) of softmax(logits) for one row [vocab], given its logsumexp."""
    logp = logits - lse
    return float(-(np.exp(logp) * logp).sum())


def _top_ids(logits: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` largest logits' ids per row, best first: [rows, k]."""
    k = min(k, logits.shape[-1])
    ids = np.argpartition(-logits, k - 1, axis=-1)[:, :k]
    order = np.argsort(-np.take_along_axis(logits, ids, axis=-1), axis=-1, kind="stable")
    return np.take_along_axis(ids, order, axis=-1)


def _common_prefix(a: str, b: str) -> str:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return a[:n]


# ---- the batcher -------------------------------------------------------------------


@dataclass(eq=False)
class _Row:
    text: RowText
    ids: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    specials: list[bool] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top: list[tuple[Alternative, ...]] = field(default_factory=list)
    logits: list[np.ndarray] = field(default_factory=list)
    entropies: list[float] = field(default_factory=list)
    finish_reason: str | None = None


@dataclass(eq=False)
class _Live:
    entry: Entry
    rows: list[_Row]
    first: int  # index of this job's first decoder row in the batch
    started: float
    first_token_at: float | None = None

    @property
    def job(self) -> GenerateJob:
        return self.entry.job


CACHE_SOURCES, CACHE_TOKENS, CACHE_MAX_BYTES = 64, 64, 256 << 20  # the encoder cache's default budget


def encoder_cache(runtime, config):
    """The server's :class:`~t5ort.runtime.encoder_cache.EncoderCache` (``config.encoder_cache_mb``), or None."""
    from ..runtime.encoder_cache import EncoderCache

    mb = getattr(config, "encoder_cache_mb", None)
    if mb is None:
        g = runtime.manifest.geometry
        per_token = 2 * g.num_decoder_layers * g.num_heads * g.d_kv * np.dtype(runtime.manifest.dtype).itemsize
        budget = min(CACHE_MAX_BYTES, CACHE_SOURCES * CACHE_TOKENS * per_token)
    else:
        budget = int(mb * (1 << 20))
    return EncoderCache(runtime.graphs, budget) if budget > 0 else None


class DynamicBatcher:
    """Dynamic batching on one worker thread: collect compatible jobs, run them as one call, answer each.

    Greedy and sampling batches run through ``runtime.stream`` and send every row its
    token as the step is done; the batch ends once every job in it is finished, timed
    out or cancelled, so a client that leaves stops its rows' work (the whole batch
    stops when no job in it is left). Beam search runs through ``runtime.generate``
    and answers at the end. Score jobs are batched into one ``runtime.score``.
    """

    def __init__(self, runtime, config, metrics):
        self.runtime = runtime
        self.config = config
        self.metrics = metrics
        self.queue = RequestQueue(config.max_queue)
        self._thread: threading.Thread | None = None
        self._abort = threading.Event()
        st = runtime.manifest.special_tokens
        self._eos = frozenset(st.eos_token_id)
        self._special_ids = frozenset({st.pad_token_id, st.decoder_start_token_id, *st.eos_token_id})
        self._pad = st.pad_token_id
        self._batch_seconds = 0.05  # running mean of a batch's duration, for Retry-After
        self.encoder_cache = encoder_cache(runtime, config)  # None: off
        if self.encoder_cache is not None:
            metrics.watch_encoder_cache(self.encoder_cache)

    def _encode(self, ids: np.ndarray, mask: np.ndarray):
        """The batch's encoder output, through the cache of recent sources where there is one."""
        encoder = self.encoder_cache if self.encoder_cache is not None else self.runtime.graphs
        return encoder.encode(ids, mask)

    @property
    def queue_depth(self) -> int:
        return len(self.queue)

    def submit(self, job: Job, channel: Channel) -> None:
        retry_after = max(1, int(np.ceil(self._batch_seconds * (len(self.queue) / self.config.max_batch_size + 1))))
        self.queue.put(Entry(job, channel), retry_after)
        self.metrics.queue_depth.set(len(self.queue))

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="t5ort-batcher", daemon=True)
            self._thread.start()

    def stop(self, grace: float) -> None:
        """Take no new jobs; let waiting and running ones finish within ``grace`` s, then fail the rest."""
        self.queue.close()
        if self._thread is not None:
            self._thread.join(grace)
            if self._thread.is_alive():
                self._abort.set()
                self._thread.join(5.0)
        for entry in self.queue.drain():
            entry.channel.send(Failed("shutdown", "the server shut down before this request ran"))

    # ---- the loop --------------------------------------------------------------

    def _loop(self) -> None:
        window = self.config.batch_window_ms / 1000
        while (batch := self.queue.next_batch(self.config.max_batch_size, window)) is not None:
            self.metrics.queue_depth.set(len(self.queue))
            batch = self._admit(batch)
            if batch:
                self._run(batch)

    def _admit(self, batch: list[Entry]) -> list[Entry]:
        """Drop jobs whose client left or whose deadline passed while they waited."""
        now = time.monotonic()
        kept = []
        for entry in batch:
            self.metrics.queue_seconds.observe(now - entry.enqueued)
            if entry.channel.closed:
                self.metrics.failures.labels(reason="cancelled").inc()
                log.info("dropped before running: the client went away", extra={"request_id": entry.job.request_id})
            elif now > entry.job.deadline:
                self._timeout(entry)
            else:
                kept.append(entry)
        return kept

    def _timeout(self, entry: Entry) -> None:
        self.metrics.failures.labels(reason="timeout").inc()
        log.warning("timed out after %.1f s", time.monotonic() - entry.job.arrived,
                    extra={"request_id": entry.job.request_id})
        entry.channel.send(Failed("timeout", f"the request did not finish within {self.config.request_timeout:g} s"))

    def _run(self, batch: list[Entry]) -> None:
        started = time.monotonic()
        rows = sum(e.job.rows for e in batch)
        self.metrics.batch_size.observe(len(batch))
        self.metrics.rows_in_flight.set(rows)
        ids = ", ".join(e.job.request_id for e in batch)
        log.info("batch of %d request(s), %d row(s): %s", len(batch), rows, ids, extra={"request_id": "-"})
        try:
            if isinstance(batch[0].job, ScoreJob):
                self._run_score(batch)
            elif batch[0].job.beam:
                self._run_beam(batch, started)
            else:
                self._run_stream(batch, started)
        except (ValueError, TypeError, MemoryError) as exc:  # the runtime refused: a request error
            for entry in batch:
                entry.channel.send(Failed("invalid", str(exc)))
            self.metrics.failures.labels(reason="invalid").inc(len(batch))
        except Exception as exc:  # noqa: BLE001 - a fault must answer every request of the batch, not kill the thread
            log.exception("batch failed: %s", exc, extra={"request_id": ids})
            for entry in batch:
                entry.channel.send(Failed("internal", f"generation failed: {type(exc).__name__}: {exc}"))
            self.metrics.failures.labels(reason="internal").inc(len(batch))
        finally:
            elapsed = time.monotonic() - started
            self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * elapsed
            self.metrics.batch_seconds.observe(elapsed)
            self.metrics.rows_in_flight.set(0)

    # ---- greedy and sampling: stream ------------------------------------------------

    def _padded(self, inputs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        width = max(len(x) for x in inputs)
        ids = np.full((len(inputs), width), self._pad, dtype=np.int64)  # [batch, longest]
        mask = np.zeros((len(inputs), width), dtype=np.int64)
        for i, x in enumerate(inputs):
            ids[i, : len(x)] = x
            mask[i, : len(x)] = 1
        return ids, mask

    def _run_stream(self, batch: list[Entry], started: float) -> None:
        jobs = [e.job for e in batch]
        ids, mask = self._padded([j.input_ids for j in jobs])
        options = dict(jobs[0].options, max_new_tokens=max(j.max_new_tokens for j in jobs))
        tokenizer = self.runtime.tokenizer
        live, first = [], 0
        for entry in batch:
            live.append(_Live(entry, [_Row(RowText(tokenizer, self._special_ids)) for _ in range(entry.job.rows)],
                              first, started))
            first += entry.job.rows
        steps = self.runtime.stream(encoder_output=self._encode(ids, mask), **options)
        try:
            last = time.monotonic()
            for event in steps:
                now = time.monotonic()
                self.metrics.step_seconds.observe(now - last)
                last = now
                self._deliver(live, event, now)
                live = [lv for lv in live if not self._done(lv, now)]
                self.metrics.rows_in_flight.set(sum(lv.job.rows for lv in live))
                if not live or self._abort.is_set():
                    break
        finally:
            steps.close()
        for lv in live:  # the stream ended (all rows finished) or the server is aborting
            if self._abort.is_set():
                lv.entry.channel.send(Failed("shutdown", "the server shut down during this request"))
            else:
                self._finish(lv, time.monotonic())

    def _deliver(self, live: list[_Live], event, now: float) -> None:
        logits = event.logits  # [rows, vocab], raw
        logprobs = getattr(event, "logprobs", None)  # float32 [rows]: the chosen tokens' log-probs, if given
        top_n = max(lv.job.top_n for lv in live)
        lse = getattr(event, "logsumexp", None)  # float32 [rows], the graph's, if given
        top_ids = None
        if lse is None and (logprobs is None or top_n or any(lv.job.entropy for lv in live)):
            lse = logsumexp(logits)[:, 0]  # [rows]
        if top_n:
            top_ids = _top_ids(logits, top_n)  # [rows, top_n], best first
        for lv in live:
            job = lv.job
            for r, row in enumerate(lv.rows):
                if row.finish_reason is not None:
                    continue
                b = lv.first + r
                token = int(event.token_ids[b])
                logprob = float(logprobs[b] if logprobs is not None else np.float32(logits[b, token] - lse[b]))
                top = ()
                if job.top_n:
                    top = tuple(self._alternative(int(t), float(np.float32(logits[b, t] - lse[b])))
                                for t in top_ids[b, : job.top_n])
                if job.want_logits:
                    row.logits.append(logits[b].copy())
                entropy = _entropy(logits[b], lse[b]) if job.entropy else None
                reason = None
                if event.finished[b] and token in self._eos:
                    reason = "eos_token"
                elif event.step + 1 >= job.max_new_tokens:
                    reason = "length"
                elif event.finished[b]:
                    reason = "stop_sequence"
                self._push(lv, r, row, event.step, token, logprob, top, reason, now, entropy)

    def _alternative(self, token: int, logprob: float) -> Alternative:
        tokenizer = self.runtime.tokenizer
        special = token in self._special_ids
        text = tokenizer.token_string(token) if special else tokenizer.token_text(token)
        return Alternative(token, text, logprob, special)

    def _push(self, lv: _Live, r: int, row: _Row, step: int, token: int, logprob: float,
              top: tuple[Alternative, ...], reason: str | None, now: float, entropy: float | None = None) -> None:
        text, special = row.text.push(token)
        if entropy is not None:
            row.entropies.append(entropy)
        row.ids.append(token)
        row.texts.append(text)
        row.specials.append(special)
        row.logprobs.append(logprob)
        row.top.append(top)
        row.finish_reason = reason
        if lv.first_token_at is None:
            lv.first_token_at = now
            self.metrics.ttft_seconds.observe(now - lv.job.arrived)
        self.metrics.generated_tokens.inc()
        if lv.job.stream and not lv.entry.channel.send(TokenEvent(r, step, token, text, special, logprob, top, reason,
                                                                  entropy)):
            lv.entry.gone = True

    def _done(self, lv: _Live, now: float) -> bool:
        """True when the job left the batch: finished (answered), cancelled or timed out."""
        if lv.entry.channel.closed or lv.entry.gone:
            self.metrics.failures.labels(reason="cancelled").inc()
            log.info("client went away after %d step(s); its rows are dropped", len(lv.rows[0].ids),
                     extra={"request_id": lv.job.request_id})
            return True
        if now > lv.job.deadline:
            self._timeout(lv.entry)
            return True
        if all(row.finish_reason is not None for row in lv.rows):
            self._finish(lv, now)
            return True
        return False

    def _finish(self, lv: _Live, now: float) -> None:
        results = tuple(
            RowResult(tuple(row.ids), tuple(row.texts), tuple(row.specials), tuple(row.logprobs), tuple(row.top),
                      row.finish_reason or "length", row.text.text,
                      np.stack(row.logits) if row.logits else None,
                      entropies=tuple(row.entropies) if lv.job.entropy else None)
            for row in lv.rows
        )
        self._answer(lv.entry, results, lv.started, now)

    def _answer(self, entry: Entry, rows: tuple[RowResult, ...], started: float, now: float) -> None:
        job = entry.job
        self.metrics.request_seconds.observe(now - job.arrived)
        tokens = sum(len(r.ids) for r in rows)
        if tokens and now > started:
            self.metrics.tokens_per_second.observe(tokens / (now - started))
        log.info("finished: %d token(s) in %.3f s (%.3f s queued)", tokens, now - job.arrived,
                 started - entry.enqueued, extra={"request_id": job.request_id})
        entry.channel.send(Finished(rows, len(job.input_ids), started - entry.enqueued, now - started))

    # ---- beam search: generate ----------------------------------------------------

    def _run_beam(self, batch: list[Entry], started: float) -> None:
        jobs = [e.job for e in batch]
        ids, mask = self._padded([j.input_ids for j in jobs])
        need_logits = any(j.top_n or j.want_logits for j in jobs)
        result = self.runtime.generate(encoder_output=self._encode(ids, mask), max_new_tokens=jobs[0].max_new_tokens,
                                       output_logits=need_logits, **jobs[0].options_dict)
        now = time.monotonic()
        n = jobs[0].rows
        for i, entry in enumerate(batch):
            if entry.channel.closed:
                continue
            if now > entry.job.deadline:
                self._timeout(entry)
                continue
            rows = tuple(self._beam_row(entry.job, result, i * n + r) for r in range(n))
            self.metrics.ttft_seconds.observe(now - entry.job.arrived)
            self.metrics.generated_tokens.inc(sum(len(r.ids) for r in rows))
            self._answer(entry, rows, started, now)

    def _beam_row(self, job: GenerateJob, result, r: int) -> RowResult:
        sources = result.beam_indices[r]  # [steps]: decoder row of each token, -1 after the end
        steps = int((sources >= 0).sum())
        tokens = result.sequences[r, 1: 1 + steps]
        row = _Row(RowText(self.runtime.tokenizer, self._special_ids))
        logits = None
        if result.logits is not None:
            logits = result.logits[sources[:steps], np.arange(steps)]  # [steps, vocab], the hypothesis' own rows
        for s in range(steps):
            token = int(tokens[s])
            top = ()
            if job.top_n:
                lse = logsumexp(logits[s])[0]
                order = _top_ids(logits[s][None], job.top_n)[0]
                top = tuple(self._alternative(int(t), float(np.float32(logits[s, t] - lse))) for t in order)
            text, special = row.text.push(token)
            row.ids.append(token)
            row.texts.append(text)
            row.specials.append(special)
            row.logprobs.append(float(result.token_logprobs[r, s]))
            row.top.append(top)
        ended = steps and int(tokens[steps - 1]) in self._eos
        return RowResult(tuple(row.ids), tuple(row.texts), tuple(row.specials), tuple(row.logprobs),
                         tuple(row.top), "eos_token" if ended else "length", row.text.text,
                         np.ascontiguousarray(logits) if job.want_logits else None,
                         float(result.sequences_scores[r]))

    # ---- scoring ------------------------------------------------------------------

    def _run_score(self, batch: list[Entry]) -> None:
        sources = [x for e in batch for x in e.job.input_ids]
        targets = [t for e in batch for t in e.job.target_ids]
        ids, mask = self._padded(sources)
        labels = np.full((len(targets), max(len(t) for t in targets)), -100, dtype=np.int64)  # [pairs, longest]
        for i, t in enumerate(targets):
            labels[i, : len(t)] = t
        result = self.runtime.score(encoder_output=self._encode(ids, mask), target_ids=labels, output_logits=False)
        start = 0
        for entry in batch:
            pairs = len(entry.job.target_ids)
            rows = range(start, start + pairs)
            start += pairs
            lengths = [len(targets[i]) for i in rows]
            entry.channel.send(ScoreFinished(
                tuple(tuple(int(t) for t in targets[i]) for i in rows),
                tuple(tuple(float(x) for x in result.token_logprobs[i, :n]) for i, n in zip(rows, lengths)),
                tuple(float(result.total_logprob[i]) for i in rows),
            ))
