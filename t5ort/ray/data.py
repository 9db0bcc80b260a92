"""``t5ort batch --ray``: the corpus job on Ray Data, around :func:`t5ort.corpus.process_table`.

Multi-node: every node needs the export directory and the input at the same path (a shared
filesystem, or the same copy on each node), and OUTPUT must be a shared path too: actors write
their Parquet files from their own nodes, and the driver renames the finished folder into place.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..corpus.inputs import conform, csv_convert_options, scan
from ..corpus.job import FORMAT_VERSION, MANIFEST, model_record, write_json
from ..corpus.rows import process_table
from ..corpus.spec import CorpusError, JobSpec


class CorpusMapper:
    """A Ray Data callable class: loads the export once per actor, then maps each batch (an Arrow table).

    The batch is cast to the corpus schema the driver checked, then run through
    :func:`t5ort.corpus.process_table`, the function the one-machine job runs on its shards.
    """

    def __init__(self, export_dir: str, spec: dict[str, Any], schema: pa.Schema, threads: int):
        import t5ort

        self.runtime = t5ort.load(export_dir, threads=threads)
        self.spec = JobSpec.from_json(spec).validate(self.runtime.vocab_size)
        self.schema = schema

    def __call__(self, batch: pa.Table) -> pa.Table:
        return process_table(self.runtime, conform(batch, self.schema), self.spec).table


# Reading and writing Parquet/JSON is light next to decoding; these tasks reserve no CPU, so that an
# actor pool that takes every CPU of the cluster (2 workers x 1 thread on 2 CPUs) cannot starve them.
IO_TASK_CPUS = 0


@contextmanager
def _v1_reads():
    """Ray 2.60's V2 file datasources list files in a task that always reserves 1 CPU (not configurable),
    which deadlocks behind an actor pool holding every CPU; the V1 readers list on the driver. The
    driver's DataContext flag is set only while the read is planned, then restored."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    old = getattr(ctx, "use_datasource_v2", None)
    if old is not None:
        ctx.use_datasource_v2 = False
    try:
        yield
    finally:
        if old is not None:
            ctx.use_datasource_v2 = old


def _read(corpus, spec: JobSpec):
    import ray.data

    paths = [str(f.resolve()) for f in corpus.files]  # actors on other nodes have other working directories
    with _v1_reads():
        if corpus.format == "parquet":
            return ray.data.read_parquet(paths, num_cpus=IO_TASK_CPUS)
        if corpus.format == "csv":
            return ray.data.read_csv(paths, convert_options=csv_convert_options(spec.input_columns),
                                     num_cpus=IO_TASK_CPUS)
        return ray.data.read_json(paths, lines=True, num_cpus=IO_TASK_CPUS)


def run_ray_job(
    export_dir: str | Path,
    input: str | Path,
    output: str | Path,
    spec: JobSpec,
    *,
    address: str | None = None,
    workers: int = 2,
    threads: int = 1,
) -> dict:
    """Run ``spec`` over ``input`` on Ray Data into the Parquet folder ``output``; returns the run manifest.

    ``address``: a running cluster (``"auto"``, ``"ray://host:10001"``, ``"127.0.0.1:6379"``); None
    starts a local one unless this process is connected already (a cluster this call starts, it
    also shuts down). ``workers`` actors, each with ``threads`` onnxruntime threads (and as many
    Ray CPUs). The input is read and checked on the driver first, with the one-machine job's
    checks; the output is written to a temporary folder beside ``output`` and renamed when done.
    """
    import ray
    from ray.data import ActorPoolStrategy

    from ..runtime.manifest import read_manifest

    started = time.perf_counter()
    export_dir = Path(export_dir).resolve()
    spec.validate(read_manifest(export_dir).geometry.vocab_size)
    if spec.save_raw_logits:
        raise CorpusError("--save-raw-logits is for one-machine jobs; a Ray job writes Parquet only.")
    for name, value in (("workers", workers), ("threads", threads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CorpusError(f"{name} must be an int >= 1, got {value!r}.")
    corpus = scan(input, spec)
    if spec.id_column not in corpus.schema.names:
        raise CorpusError(f"INPUT {input}: no id column {spec.id_column!r}; a Ray job needs one (Ray Data gives "
                          "rows no global position): add one or pass --id-column NAME.")
    out = Path(output).resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CorpusError(f"OUTPUT {out} exists and is not empty; name a new folder.")
    tmp = out.with_name(f".{out.name}.ray-{uuid.uuid4().hex[:8]}")
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address or "local")  # "local": a new cluster, never another `ray start` one
    try:
        mapper_args = dict(export_dir=str(export_dir), spec=spec.to_json(), schema=corpus.schema, threads=threads)
        ds = _read(corpus, spec).map_batches(
            CorpusMapper, fn_constructor_kwargs=mapper_args, batch_size=spec.shard_rows, batch_format="pyarrow",
            compute=ActorPoolStrategy(size=workers), num_cpus=threads)
        ds.write_parquet(str(tmp), ray_remote_args={"num_cpus": IO_TASK_CPUS})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing half written is left beside OUTPUT
        raise
    finally:
        if started_here:
            ray.shutdown()
    files = sorted(p for p in tmp.iterdir() if p.suffix == ".parquet")
    tokens_column = "num_generated_tokens" if spec.task == "generate" else "num_target_tokens"
    rows = tokens = 0
    for f in files:
        counts = pq.read_table(f, columns=[tokens_column]).column(0)
        rows += len(counts)
        tokens += int(pc.sum(counts).as_py() or 0)
    if rows != corpus.num_rows:
        raise CorpusError(f"Ray wrote {rows} rows for {corpus.num_rows} input rows; {tmp} is left for inspection.")
    seconds = time.perf_counter() - started
    manifest = {
        "format_version": FORMAT_VERSION, "task": spec.task, "input": str(input), "output": str(out),
        "engine": {"ray": ray.__version__, "address": address, "workers": workers, "threads_per_worker": threads},
        "model": model_record(export_dir),
        "options": spec.to_json(),
        "counts": {"rows": rows, "shards": len(files), "rows_this_run": rows, "tokens_this_run": tokens},
        "timings": {"seconds": round(seconds, 3), "rows_per_s": round(rows / seconds, 2),
                    "tokens_per_s": round(tokens / seconds, 2)},
        "files": [f.name for f in files],
    }
    write_json(tmp / MANIFEST, manifest)
    if out.exists():
        out.rmdir()
    os.replace(tmp, out)
    return manifest
