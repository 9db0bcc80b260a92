"""One shard of rows in, the same rows with their outputs out: bucketing by length, then the runtime.

:func:`process_table` is the only place that runs the model over a corpus; the one-machine job and
the Ray Data adapter both call it, so both write the same columns from the same code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ..runtime.numerics import logsumexp
from .spec import JobSpec


@dataclass(frozen=True)
class ShardOutput:
    """The shard's rows with the job's columns appended, and what it took."""

    table: pa.Table
    tokens: int  # generated (or scored) tokens
    input_tokens: int
    padded_input_tokens: int  # input tokens the encoder ran over, padding included (bucketing shrinks it)


def batches(lengths: np.ndarray, batch_size: int, bucket: bool) -> list[np.ndarray]:
    """Row positions of each batch: by token length (stable) when bucketing, else in input order."""
    order = np.argsort(lengths, kind="stable") if bucket else np.arange(len(lengths))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def _along_beams(logits: np.ndarray, beam_indices: np.ndarray | None) -> np.ndarray:
    """The logits of the rows that produced each hypothesis' tokens: [N, steps, vocab]."""
    if beam_indices is None:
        return logits
    rows = np.where(beam_indices < 0, 0, beam_indices)  # [N, steps]
    return logits[rows, np.arange(rows.shape[1])[None, :]]


def _top_n(logits: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-n token ids and their log-softmax values, best first: int64 and float32 [N, steps, n]."""
    ids = np.argpartition(-logits, n - 1, axis=-1)[..., :n]
    top = np.take_along_axis(logits, ids, axis=-1)
    order = np.argsort(-top, axis=-1, kind="stable")
    ids, top = np.take_along_axis(ids, order, -1), np.take_along_axis(top, order, -1)
    return ids.astype(np.int64), (top - logsumexp(logits)).astype(np.float32)


def _lists(values: list, inner: pa.DataType, depth: int = 1) -> pa.Array:
    dtype = inner
    for _ in range(depth):
        dtype = pa.list_(dtype)
    return pa.array(values, type=dtype)


class _Columns:
    """Per-row output values gathered batch by batch, put back in the shard's row order at the end."""

    def __init__(self, rows: int):
        self.rows = rows
        self.values: dict[str, list] = {}

    def put(self, name: str, positions: np.ndarray, values) -> None:
        column = self.values.setdefault(name, [None] * self.rows)
        for position, value in zip(positions, values):
            column[position] = value


def _ends(new: np.ndarray, eos: list[int], pad: int, options) -> tuple[np.ndarray, list[str]]:
    """Each row's generated length and finish reason: up to its first EOS ("eos"); else every step
    ("length"), except that a row a stop string or criterion ended stops at its trailing padding ("stop")."""
    steps = np.full(len(new), new.shape[1])
    reasons = []
    can_stop = bool(options.stop_strings) or bool(options.stopping_criteria)
    for row, seq in enumerate(new):
        ends = np.flatnonzero(np.isin(seq, eos))
        if ends.size:
            steps[row] = ends[0] + 1
            reasons.append("eos")
            continue
        if can_stop:  # finished rows are padded; a row that was stopped ends at its last non-pad token
            live = np.flatnonzero(seq != pad)
            steps[row] = live[-1] + 1 if live.size else 0
        reasons.append("length" if steps[row] == options.max_new_tokens else "stop")
    return steps, reasons


def _generate(runtime, texts, ids, mask, spec: JobSpec, logits_out) -> tuple[_Columns, int]:
    options = spec.options(output_logits=spec.needs_logits)
    eos = runtime.manifest.special_tokens.eos_token_id if options.eos_token_id is None else options.eos_token_id
    eos = list(np.atleast_1d(eos).tolist())
    pad = runtime.manifest.special_tokens.pad_token_id
    tokens = 0
    cols = _Columns(len(texts))
    lengths = mask.sum(axis=1)
    for positions in batches(lengths, spec.batch_size, spec.bucket):
        width = int(lengths[positions].max())
        result = runtime.generate(input_ids=ids[positions, :width], attention_mask=mask[positions, :width],
                                  **dict(spec.generation), output_logits=spec.needs_logits)
        new = result.sequences[:, 1:]
        steps, reasons = _ends(new, eos, pad, options)
        tokens += int(steps.sum())
        cols.put("generated_text", positions, result.texts)
        cols.put("generated_ids", positions, [s[:n].tolist() for s, n in zip(new, steps)])
        cols.put("token_logprobs", positions, [lp[:n].tolist() for lp, n in zip(result.token_logprobs, steps)])
        cols.put("finish_reason", positions, reasons)
        cols.put("num_input_tokens", positions, lengths[positions].tolist())
        cols.put("num_generated_tokens", positions, steps.tolist())
        if spec.needs_logits:
            logits = _along_beams(result.logits, result.beam_indices)  # [rows, steps, vocab]
            if spec.top_n:
                top_ids, top_lp = _top_n(logits, spec.top_n)
                name = runtime.tokenizer.token_string if runtime.tokenizer is not None else str
                cols.put("top_ids", positions, [t[:n].tolist() for t, n in zip(top_ids, steps)])
                cols.put("top_logprobs", positions, [t[:n].tolist() for t, n in zip(top_lp, steps)])
                cols.put("top_tokens", positions, [[[name(int(i)) for i in step] for step in t[:n]]
                                                   for t, n in zip(top_ids, steps)])
            if logits_out is not None:
                for row, position in enumerate(positions):
                    logits_out[position, :steps[row]] = logits[row, :steps[row]]
    return cols, tokens


def _score(runtime, texts, targets, ids, mask, spec: JobSpec, logits_out) -> tuple[_Columns, int]:
    cols = _Columns(len(texts))
    lengths = mask.sum(axis=1)
    tokens = 0
    for positions in batches(lengths, spec.batch_size, spec.bucket):
        width = int(lengths[positions].max())
        result = runtime.score(input_ids=ids[positions, :width], attention_mask=mask[positions, :width],
                               targets=[targets[p] for p in positions], output_logits=spec.save_raw_logits)
        counts = (result.target_ids != -100).sum(axis=1)
        tokens += int(counts.sum())
        cols.put("target_ids", positions, [t[:n].tolist() for t, n in zip(result.target_ids, counts)])
        cols.put("token_logprobs", positions, [lp[:n].tolist() for lp, n in zip(result.token_logprobs, counts)])
        cols.put("total_logprob", positions, result.total_logprob.tolist())
        cols.put("mean_logprob", positions, (result.total_logprob / np.maximum(counts, 1)).tolist())
        cols.put("num_input_tokens", positions, lengths[positions].tolist())
        cols.put("num_target_tokens", positions, counts.tolist())
        if logits_out is not None:
            for row, position in enumerate(positions):
                logits_out[position, :counts[row]] = result.logits[row, :counts[row]]
    return cols, tokens


TYPES = {
    "generated_text": (pa.string(), 0), "generated_ids": (pa.int64(), 1), "token_logprobs": (pa.float32(), 1),
    "top_ids": (pa.int64(), 2), "top_tokens": (pa.string(), 2), "top_logprobs": (pa.float32(), 2),
    "finish_reason": (pa.string(), 0), "num_input_tokens": (pa.int32(), 0), "num_generated_tokens": (pa.int32(), 0),
    "target_ids": (pa.int64(), 1), "total_logprob": (pa.float32(), 0), "mean_logprob": (pa.float32(), 0),
    "num_target_tokens": (pa.int32(), 0),
}


def process_table(runtime, table: pa.Table, spec: JobSpec, logits_out: np.ndarray | None = None) -> ShardOutput:
    """Run the job over one table of rows; returns the rows with the job's columns appended, in input order.

    ``logits_out``: a float32 [rows, steps, vocab] array (a memory-mapped .npy) that receives each
    row's raw logits when ``spec.save_raw_logits``; steps past a row's end are left as they were.
    """
    texts = table.column(spec.text_column).to_pylist()
    ids, mask = runtime.encode_texts(texts)  # [rows, longest]; each batch is cut to its own longest row
    if spec.task == "generate":
        cols, tokens = _generate(runtime, texts, ids, mask, spec, logits_out)
    else:
        cols, tokens = _score(runtime, texts, table.column(spec.target_column).to_pylist(), ids, mask, spec,
                              logits_out)
    lengths = mask.sum(axis=1)
    padded = sum(int(lengths[p].max()) * len(p) for p in batches(lengths, spec.batch_size, spec.bucket))
    out = table
    for name in spec.output_columns:
        if name in TYPES:
            inner, depth = TYPES[name]
            out = out.append_column(name, _lists(cols.values[name], inner, depth) if depth
                                    else pa.array(cols.values[name], type=inner))
    return ShardOutput(out, tokens, int(lengths.sum()), padded)
