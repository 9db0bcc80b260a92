"""A corpus job on one machine: shards written atomically, a record of what is done, resume, a run manifest.

Layout of OUTPUT::

    _job.json            the job (spec, input files, model): a resumed run must match it
    part-00000.parquet   shard 0, written as .part-00000.parquet.tmp then renamed
    _raw_logits/logits-00000.npy   its raw logits (--save-raw-logits), renamed before the shard is
                         (a folder whose name starts with "_": Parquet readers of OUTPUT skip it)
    _done.json           the shards done so far, rewritten after each shard
    _manifest.json       written when the job finishes: counts, options, model, timings

A resumed run trusts only renamed shards whose row count is the one the job expects; temporary
files of an interrupted shard are removed and the shard is done again.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .inputs import Corpus, iter_shards, scan
from .rows import process_table
from .spec import CorpusError, JobSpec

FORMAT_VERSION = 1
JOB, DONE, MANIFEST = "_job.json", "_done.json", "_manifest.json"


@dataclass(frozen=True)
class JobProgress:
    """Where a job stands, sent to the ``progress`` callback after every shard (and once at the start)."""

    rows_done: int
    rows_total: int
    tokens_done: int  # generated (or scored) tokens, this run
    rows_resumed: int  # rows found done by an earlier run
    elapsed_s: float


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


RAW_LOGITS_DIR = "_raw_logits"


def logits_name(index: int) -> str:
    """Path of shard ``index``'s raw logits, relative to OUTPUT (what the raw_logits_file column holds)."""
    return f"{RAW_LOGITS_DIR}/logits-{index:05d}.npy"


def write_json(path: Path, data: Any) -> None:
    """Write JSON to a temporary name beside ``path``, fsync, rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_parquet(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        pq.write_table(table, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def model_record(directory: Path) -> dict:
    """Which export ran: its directory and the sha256 of its manifest (which holds every graph's checksum)."""
    return {"directory": str(Path(directory).resolve()),
            "manifest_sha256": hashlib.sha256((Path(directory) / "t5ort.json").read_bytes()).hexdigest()}


def shard_bounds(corpus: Corpus, spec: JobSpec) -> list[tuple[int, int]]:
    n = corpus.num_rows
    return [(start, min(start + spec.shard_rows, n)) for start in range(0, n, spec.shard_rows)]


def raw_logits_shapes(runtime, corpus: Corpus, spec: JobSpec) -> list[tuple[int, int, int]]:
    """The [rows, steps, vocab] of every shard's raw-logits file (steps: max_new_tokens, or the longest target)."""
    vocab = runtime.vocab_size
    if spec.task == "generate":
        steps = spec.options().max_new_tokens
        return [(stop - start, steps, vocab) for start, stop in shard_bounds(corpus, spec)]
    shapes = []
    for _, table in iter_shards(corpus, spec):
        targets = runtime.tokenizer.encode_batch(table.column(spec.target_column).to_pylist())
        shapes.append((table.num_rows, max(len(t) for t in targets), vocab))
    return shapes


def check_raw_logits_budget(shapes: list[tuple[int, int, int]], spec: JobSpec) -> int:
    total = sum(int(np.prod(s)) * 4 for s in shapes)
    if total > spec.raw_logits_budget:
        raise CorpusError(
            f"--save-raw-logits would write {total / 2**20:.1f} MiB of raw logits, over the budget of "
            f"{spec.raw_logits_budget / 2**20:.1f} MiB; raise the budget (--raw-logits-budget-gb), lower "
            "max_new_tokens, or split the corpus. Nothing was written.")
    return total


def _job_record(runtime, corpus: Corpus, spec: JobSpec) -> dict:
    return {"format_version": FORMAT_VERSION, "spec": spec.to_json(), "input": corpus.fingerprint(),
            "model": model_record(runtime.directory), "rows": corpus.num_rows, "shards": len(shard_bounds(corpus, spec))}


def _prepare_output(out: Path, record: dict, resume: bool) -> None:
    """Create OUTPUT, or check that the job it holds is this one (``resume``)."""
    if out.exists() and not out.is_dir():
        raise CorpusError(f"OUTPUT {out} is a file; name a folder.")
    if out.is_dir() and any(out.iterdir()):
        if not resume:
            raise CorpusError(f"OUTPUT {out} exists and is not empty; pass --resume to continue its job, "
                              "or name a new folder.")
        if not (out / JOB).is_file():
            raise CorpusError(f"OUTPUT {out} holds no {JOB}: it is not a t5ort batch output; name a new folder.")
        old = json.loads((out / JOB).read_text())
        differ = sorted(k for k in record if old.get(k) != record[k])
        if differ:
            raise CorpusError(f"--resume: OUTPUT {out} holds another job (its {', '.join(differ)} differ from "
                              "this run's); run with the same input, model and options, or name a new folder.")
        return
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / JOB, record)


def done_shards(out: Path, bounds: list[tuple[int, int]], spec: JobSpec) -> dict[int, dict]:
    """Shards an earlier run finished: renamed files with the expected row count. Temporary files are removed."""
    for tmp in [*out.glob(".*.tmp"), *out.glob(f"{RAW_LOGITS_DIR}/.*.tmp")]:
        tmp.unlink()
    done = {}
    for index, (start, stop) in enumerate(bounds):
        path = out / part_name(index)
        if not path.is_file():
            continue
        if spec.save_raw_logits and not (out / logits_name(index)).is_file():
            continue
        try:
            rows = pq.ParquetFile(path).metadata.num_rows
        except (pa.ArrowInvalid, OSError):
            continue
        if rows == stop - start:
            done[index] = {"shard": index, "file": path.name, "rows": rows, "resumed": True}
    return done


def _with_ids(table: pa.Table, spec: JobSpec, start: int) -> pa.Table:
    if spec.id_column in table.column_names:
        return table
    return table.add_column(0, spec.id_column, pa.array(np.arange(start, start + table.num_rows), pa.int64()))


def run_job(
    model,
    input: str | Path,
    output: str | Path,
    spec: JobSpec,
    *,
    resume: bool = False,
    progress: Callable[[JobProgress], None] | None = None,
) -> dict:
    """Run ``spec`` over every row of ``input`` into the Parquet folder ``output``; returns the run manifest.

    ``model`` is a loaded :class:`t5ort.T5Runtime` or an export directory. Input, options and
    output folder are checked before any work (a bad row raises :class:`CorpusError` naming the
    file, row and column, and nothing is written). ``resume=True`` continues an interrupted job in
    ``output``: renamed shards are kept, the others are done again.
    """
    from .. import load

    started = time.perf_counter()
    runtime = load(model) if isinstance(model, (str, Path)) else model
    spec.validate(runtime.vocab_size)
    corpus = scan(input, spec)
    bounds = shard_bounds(corpus, spec)
    shapes = raw_logits_shapes(runtime, corpus, spec) if spec.save_raw_logits else []
    raw_bytes = check_raw_logits_budget(shapes, spec) if spec.save_raw_logits else 0
    out = Path(output)
    _prepare_output(out, _job_record(runtime, corpus, spec), resume)
    done = done_shards(out, bounds, spec)
    rows_resumed = sum(d["rows"] for d in done.values())
    totals = {"rows": 0, "tokens": 0, "input_tokens": 0, "padded_input_tokens": 0}
    report = lambda: progress and progress(JobProgress(rows_resumed + totals["rows"], corpus.num_rows,
                                                       totals["tokens"], rows_resumed, time.perf_counter() - started))
    report()
    for index, table in iter_shards(corpus, spec, skip=frozenset(done)):
        shard_started = time.perf_counter()
        start = bounds[index][0]
        logits_out = None
        if spec.save_raw_logits:
            final_logits = out / logits_name(index)
            final_logits.parent.mkdir(exist_ok=True)
            tmp_logits = final_logits.with_name(f".{final_logits.name}.tmp")
            logits_out = np.lib.format.open_memmap(tmp_logits, mode="w+", dtype=np.float32, shape=shapes[index])
        result = process_table(runtime, _with_ids(table, spec, start), spec, logits_out)
        table = result.table
        if logits_out is not None:
            logits_out.flush()
            del logits_out
            os.replace(tmp_logits, final_logits)
            table = table.append_column("raw_logits_file", pa.array([logits_name(index)] * table.num_rows))
            table = table.append_column("raw_logits_index", pa.array(np.arange(table.num_rows, dtype=np.int32)))
        _write_parquet(table, out / part_name(index))
        done[index] = {"shard": index, "file": part_name(index), "rows": table.num_rows, "resumed": False,
                       "seconds": round(time.perf_counter() - shard_started, 4), "tokens": result.tokens}
        write_json(out / DONE, [done[k] for k in sorted(done)])
        totals["rows"] += table.num_rows
        totals["tokens"] += result.tokens
        totals["input_tokens"] += result.input_tokens
        totals["padded_input_tokens"] += result.padded_input_tokens
        report()
    seconds = time.perf_counter() - started
    manifest = {
        "format_version": FORMAT_VERSION,
        "task": spec.task,
        "input": str(input),
        "output": str(out),
        "model": model_record(runtime.directory),
        "options": spec.to_json(),
        "counts": {"rows": corpus.num_rows, "shards": len(bounds), "rows_this_run": totals["rows"],
                   "rows_resumed": rows_resumed, "shards_resumed": sum(d["resumed"] for d in done.values()),
                   "tokens_this_run": totals["tokens"], "input_tokens_this_run": totals["input_tokens"],
                   "padded_input_tokens_this_run": totals["padded_input_tokens"],
                   "raw_logits_bytes": raw_bytes},
        "timings": {"seconds": round(seconds, 3),
                    "rows_per_s": round(totals["rows"] / seconds, 2) if seconds else None,
                    "tokens_per_s": round(totals["tokens"] / seconds, 2) if seconds else None},
        "shards": [done[k] for k in sorted(done)],
    }
    write_json(out / MANIFEST, manifest)
    return manifest
