"""Corpus jobs: generate or score over whole JSONL/CSV/Parquet corpora into Parquet shards (``t5ort batch``).

    from t5ort.corpus import JobSpec, run_job
    manifest = run_job("out_dir", "corpus.jsonl", "results/", JobSpec(task="generate", top_n=5))

Needs the ``[batch]`` extra (pyarrow). :func:`process_table` (one table of rows in, the same rows
with their outputs out) is what the Ray Data adapter (:mod:`t5ort.ray`) maps over its batches.
"""

from .inputs import Corpus, scan
from .job import JobProgress, run_job
from .rows import ShardOutput, process_table
from .spec import CorpusError, JobSpec

__all__ = ["Corpus", "CorpusError", "JobProgress", "JobSpec", "ShardOutput", "process_table", "run_job", "scan"]
