"""A Ray Data job: translate a dataset with t5ort on an actor pool, keeping each row's per-token log-probs.

    python examples/ray_job.py [--workers 2] [--rows 40] [--address ADDRESS]

The pattern Ray Data recommends for models: a callable class that loads the model once per actor in
``__init__`` and maps a batch of columns to a batch of columns, run by ``map_batches`` with an
``ActorPoolStrategy``. Here the batch is a pyarrow table of sources; each row gets its translation, its
per-token log-probs and its least sure step. Without ``--address`` a local cluster is started (and shut
down); ``t5ort batch --ray`` (``t5ort.ray.run_ray_job``) is the same idea with t5ort's checks, columns and
Parquet output.
"""

from __future__ import annotations

import argparse

import numpy as np
import pyarrow as pa

import t5ort
from t5ort.demo import PREFIX, bundled
from t5ort.training.numbers import english


class Translate:
    """Loads the export once per actor; maps a pyarrow batch with a ``src`` column to one with the results."""

    def __init__(self, export_dir: str, threads: int = 1):
        self.rt = t5ort.load(export_dir, threads=threads)

    def __call__(self, batch: pa.Table) -> pa.Table:
        res = self.rt.generate(batch.column("src").to_pylist(), max_new_tokens=24)
        logprobs = [row[:steps].tolist() for row, steps in zip(res.token_logprobs, self._lengths(res))]
        return batch.append_column("translation", pa.array(res.texts)) \
                    .append_column("token_logprobs", pa.array(logprobs, pa.list_(pa.float32()))) \
                    .append_column("min_logprob", pa.array([min(lp) for lp in logprobs], pa.float32()))

    def _lengths(self, res) -> list[int]:
        eos = self.rt.manifest.special_tokens.eos_token_id[0]
        generated = res.sequences[:, 1:]
        return [int(np.argmax(row == eos)) + 1 if (row == eos).any() else len(row) for row in generated]


def main() -> None:
    import ray
    from ray.data import ActorPoolStrategy

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rows", type=int, default=40)
    parser.add_argument("--address", help="a running cluster (default: start a local one)")
    args = parser.parse_args()

    if args.address:
        ray.init(address=args.address)
    else:
        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    try:
        numbers = np.random.default_rng(0).integers(0, 1_000_000, size=args.rows)
        sources = [english(int(n)) for n in numbers] + ["three hundrd forty-two"]  # and one typo
        ds = ray.data.from_items([{"id": i, "src": PREFIX + text} for i, text in enumerate(sources)])
        ds = ds.map_batches(Translate, fn_constructor_kwargs={"export_dir": str(bundled("onnx"))}, batch_size=16,
                            batch_format="pyarrow", compute=ActorPoolStrategy(size=args.workers), num_cpus=1)
        rows = sorted(ds.take_all(), key=lambda row: row["id"])
    finally:
        ray.shutdown()
    print(f"{len(rows)} rows translated by {args.workers} actors")
    for row in rows[:3]:
        print(f"  {row['src'][len(PREFIX):]!r} -> {row['translation']!r}")
    for row in rows:
        if row["min_logprob"] < np.log(0.9):  # a step where the model was unsure
            print(f"unsure: {row['src'][len(PREFIX):]!r} -> {row['translation']!r}, "
                  f"p = {np.exp(row['min_logprob']):.2f} at its least sure step")


if __name__ == "__main__":
    main()
