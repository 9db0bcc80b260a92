"""A/B: an in-flight batch on the export's step graph (cache in place) vs on the with-past decoder.

    python benchmarks/inflight_step.py [--rows 16] [--requests 64] [--rounds 3] [--threads 2]

In process, no HTTP: a closed loop that keeps ``--rows`` members in one InflightBatch, each with
its own forced length drawn from 4-128 new tokens (the load tests' mix), admitting the next request
as soon as one finishes, until ``--requests`` are done. Both sides run the same requests in the
same order, alternating in every round (A B, then B A). Prints tokens/s, ms per step and the mean
cache width of each side, their ratio, and the CPU seconds other processes took meanwhile.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _model import DEFAULT_WORKDIR, checkpoint, current_t5ort_export, markdown_table, other_cpu_meter, say  # noqa: E402


def run(runtime, step_graph: bool, requests: list[tuple[np.ndarray, int]], rows: int) -> dict:
    from t5ort.runtime.inflight import InflightBatch

    batch = InflightBatch(runtime, step_graph=step_graph)
    pending = list(requests)
    tokens, widths = 0, []
    start = time.perf_counter()
    while pending or len(batch):
        free = rows - len(batch)
        if pending and free:
            new = [pending.pop(0) for _ in range(min(free, len(pending)))]
            members = [batch.prepare(ids, max_new_tokens=n, min_new_tokens=n) for ids, n in new]
            batch.admit(members, [ids for ids, _ in new])
        widths.append(batch.past_length)
        tokens += sum(m.rows for m in batch.live_members)
        batch.step()
    seconds = time.perf_counter() - start
    return {"tokens/s": tokens / seconds, "ms/step": 1e3 * seconds / batch.stats.steps,
            "mean width": float(np.mean(widths))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    args = parser.parse_args()

    import t5ort

    export = args.workdir / "t5ort"
    if not current_t5ort_export(export):
        say(f"exporting the seeded checkpoint to {export}")
        t5ort.export(checkpoint(args.workdir), export, force=True)
    runtime = t5ort.load(export, threads=args.threads)
    rng = np.random.default_rng(0)
    requests = [(rng.integers(5, runtime.vocab_size, int(rng.integers(8, 33))), int(rng.integers(4, 129)))
                for _ in range(args.requests)]
    run(runtime, True, requests[:4], args.rows)  # warm both paths
    run(runtime, False, requests[:4], args.rows)
    results: dict[bool, list[dict]] = {True: [], False: []}
    meter = other_cpu_meter()
    for r in range(args.rounds):
        for side in ((True, False) if r % 2 == 0 else (False, True)):
            results[side].append(run(runtime, side, requests, args.rows))
            say(f"round {r + 1}: {'step graph' if side else 'with-past decoder'} "
                f"{results[side][-1]['tokens/s']:.0f} tokens/s")
    other = meter()
    table = []
    for side, name in ((True, "step graph (cache in place)"), (False, "with-past decoder (cache concatenated)")):
        table.append([name] + [f"{statistics.median(x[k] for x in results[side]):.1f}"
                               for k in ("tokens/s", "ms/step", "mean width")])
    ratio = (statistics.median(x["tokens/s"] for x in results[True])
             / statistics.median(x["tokens/s"] for x in results[False]))
    print(markdown_table(["in-flight decoder", "tokens/s", "ms/step", "mean cache width"], table))
    print(f"\nstep graph / with-past decoder: {ratio:.2f}x tokens/s ({args.rows} rows, {args.requests} requests of "
          f"4-128 forced tokens, {args.threads} threads, median of {args.rounds} rounds); "
          f"other processes' CPU meanwhile: {other:.1f} s")


if __name__ == "__main__":
    main()
