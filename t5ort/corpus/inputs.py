"""Reading a corpus: JSONL, CSV or Parquet, one file or a folder of files, checked before any work.

:func:`scan` reads every file once, checks the columns the job needs (present, strings, no nulls)
and returns a :class:`Corpus` (files, row counts, one schema). :func:`iter_shards` then yields
consecutive shards of ``shard_rows`` rows across the files, in file-name order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import pyarrow as pa

from .spec import CorpusError, JobSpec

FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}


@dataclass(frozen=True)
class Corpus:
    """The checked input: its files (sorted), their row counts and the schema every shard is cast to."""

    files: tuple[Path, ...]
    rows: tuple[int, ...]
    format: str
    schema: pa.Schema

    @property
    def num_rows(self) -> int:
        return sum(self.rows)

    def fingerprint(self) -> list[dict]:
        """Name, size and modification time of every file (a resumed job checks its input did not change)."""
        return [{"file": str(f.resolve()), "bytes": f.stat().st_size, "mtime_ns": f.stat().st_mtime_ns, "rows": n}
                for f, n in zip(self.files, self.rows)]


def list_files(path: str | Path) -> tuple[tuple[Path, ...], str]:
    """The input files (one file, or a folder's files with a known extension, sorted) and their one format."""
    path = Path(path)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in FORMATS)
        if not files:
            raise CorpusError(f"INPUT {path}: no .jsonl, .csv or .parquet files in this folder.")
    else:
        raise CorpusError(f"INPUT {path}: no such file or folder.")
    formats = {FORMATS.get(f.suffix.lower()) for f in files}
    if None in formats:
        raise CorpusError(f"INPUT {path}: unknown format; name files .jsonl, .csv or .parquet.")
    if len(formats) > 1:
        raise CorpusError(f"INPUT {path}: mixes formats {sorted(formats)}; one job reads one format.")
    return tuple(files), formats.pop()


def csv_convert_options(columns: Sequence[str]):
    """CSV text columns are read as strings, whatever they look like ("123" stays "123")."""
    import pyarrow.csv as pcsv

    return pcsv.ConvertOptions(column_types={c: pa.string() for c in columns}, strings_can_be_null=False)


def read_file(path: Path, fmt: str, text_columns: Sequence[str]) -> pa.Table:
    """One input file as an Arrow table; a parse error names the file (and, for JSONL, the line)."""
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path)
        if fmt == "csv":
            import pyarrow.csv as pcsv

            return pcsv.read_csv(path, convert_options=csv_convert_options(text_columns))
        import pyarrow.json as pjson

        schema = pa.schema([(c, pa.string()) for c in text_columns])
        options = pjson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="infer")
        return pjson.read_json(path, parse_options=options)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        if fmt == "jsonl":
            _locate_json_error(path, text_columns)
        raise CorpusError(f"{path}: cannot read it as {fmt} ({exc}).") from exc


def _locate_json_error(path: Path, text_columns: Sequence[str]) -> None:
    """Find the line that pyarrow refused and raise an error naming it and the column."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CorpusError(f"{path} line {number}: not valid JSON ({exc.msg}).") from None
            if not isinstance(record, dict):
                raise CorpusError(f"{path} line {number}: a JSON object per line is needed, got {type(record).__name__}.")
            for column in text_columns:
                value = record.get(column)
                if value is not None and not isinstance(value, str):
                    raise CorpusError(f"{path} line {number}: column {column!r} holds {type(value).__name__} "
                                      f"{value!r}, not a string; quote it or fix the row.")


def check_table(table: pa.Table, path: Path, spec: JobSpec) -> None:
    """Every column the job reads is present, of string type, and has no null; output columns are not taken."""
    names = table.column_names
    for column in spec.input_columns:
        flag = "--target-column" if column == spec.target_column and spec.task == "score" else "--text-column"
        if column not in names:
            raise CorpusError(f"{path}: no column {column!r} (columns: {', '.join(names)}); "
                              f"pass {flag} NAME to read another one.")
        values = table.column(column)
        if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
            raise CorpusError(f"{path}: column {column!r} has type {values.type}, not string; every row needs a text.")
        if values.null_count:
            row = next(i for i, v in enumerate(values.is_null().to_pylist()) if v)
            raise CorpusError(f"{path} row {row} (0-based): column {column!r} is missing or null; "
                              "every row needs a string there.")
    taken = sorted(set(names) & set(spec.output_columns))
    if taken:
        raise CorpusError(f"{path}: input column(s) {taken} have the names of output columns; rename them.")


def scan(path: str | Path, spec: JobSpec) -> Corpus:
    """Read and check the whole input before any work; returns its files, row counts and unified schema."""
    files, fmt = list_files(path)
    rows, schemas = [], []
    for file in files:
        table = read_file(file, fmt, spec.input_columns)
        check_table(table, file, spec)
        rows.append(table.num_rows)
        schemas.append(table.schema.remove_metadata())
    try:
        schema = pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise CorpusError(f"INPUT {path}: the files' columns do not agree ({exc}); give every file the same columns.")
    if sum(rows) == 0:
        raise CorpusError(f"INPUT {path}: no rows.")
    return Corpus(files, tuple(rows), fmt, schema)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Cast a table to the corpus schema (columns missing from one file become nulls), in its column order."""
    columns = [table.column(f.name).cast(f.type) if f.name in table.column_names
               else pa.nulls(table.num_rows, f.type) for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)


def iter_shards(corpus: Corpus, spec: JobSpec, skip: frozenset[int] = frozenset()) -> Iterator[tuple[int, pa.Table]]:
    """Consecutive shards of ``spec.shard_rows`` rows over all files; shards in ``skip`` are read past."""
    pending: list[pa.Table] = []
    buffered = 0
    index = 0
    for file in corpus.files:
        table = conform(read_file(file, corpus.format, spec.input_columns), corpus.schema)
        pending.append(table)
        buffered += table.num_rows
        while buffered >= spec.shard_rows:
            whole = pa.concat_tables(pending)
            if index not in skip:
                yield index, whole.slice(0, spec.shard_rows)
            pending, buffered, index = [whole.slice(spec.shard_rows)], buffered - spec.shard_rows, index + 1
    if buffered:
        yield from (() if index in skip else [(index, pa.concat_tables(pending))])
