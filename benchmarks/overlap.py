"""Overlapping calls in one process: spinning threads against sleeping ones when more threads than cores run.

    python benchmarks/overlap.py [--rounds 4] [--calls 4] [--workdir benchmarks/.work]

Two Python threads each call ``generate`` ``--calls`` times (the int8 t5-small-shaped export
compare.py builds, beam 4 at batch 1, 32 forced tokens), at the same time, in three layouts,
each with ``load(spin=True)`` (t5ort's default) and ``spin=False``:

- two runtimes of 2 threads each (4 intra-op threads on a 2-core machine);
- two runtimes of 1 thread each (no intra-op pool at all);
- one 2-thread runtime shared by both calling threads.

Reports the wall time per decoding step of both threads together (total wall / all steps),
median over ``--rounds`` (spinning and sleeping runtimes loaded side by side, rounds interleaved, the
order alternating). Lower is better.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _model import DEFAULT_WORKDIR, NEW_TOKENS, input_ids, markdown_table, say  # noqa: E402

CALLERS = 2


def per_step_ms(runtimes, calls: int) -> float:
    """Wall ms per decoding step while CALLERS threads each run ``calls`` generations (thread i on runtimes[i])."""
    ids = input_ids(1)

    def caller(rt):
        for _ in range(calls):
            rt.generate(input_ids=ids, attention_mask=np.ones_like(ids), max_new_tokens=NEW_TOKENS,
                        min_new_tokens=NEW_TOKENS, num_beams=4)

    threads = [threading.Thread(target=caller, args=(rt,)) for rt in runtimes]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return 1000 * (time.perf_counter() - start) / (CALLERS * calls * NEW_TOKENS)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--calls", type=int, default=4)
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    args = p.parse_args()
    import t5ort

    directory = args.workdir / "t5ort-int8"
    if not (directory / "t5ort.json").is_file():
        raise SystemExit(f"no export at {directory}: run `python benchmarks/compare.py` first, which makes it.")
    layouts = {  # name: (each runtime's threads, one runtime shared by the callers)
        "two runtimes, 2 threads each": (2, False),
        "two runtimes, 1 thread each": (1, False),
        "one 2-thread runtime, shared": (2, True),
    }

    def make(threads: int, shared: bool, spin: bool) -> list:
        if shared:
            return [t5ort.load(directory, threads=threads, spin=spin)] * CALLERS
        return [t5ort.load(directory, threads=threads, spin=spin) for _ in range(CALLERS)]

    rows = []
    for name, (threads, shared) in layouts.items():
        runtimes = {spin: make(threads, shared, spin) for spin in (True, False)}
        for spin in runtimes:
            per_step_ms(runtimes[spin], 1)  # warm-up
        times: dict[bool, list[float]] = {True: [], False: []}
        for r in range(args.rounds):  # interleaved, the order alternating
            for spin in ((True, False) if r % 2 == 0 else (False, True)):
                time.sleep(0.3)
                times[spin].append(per_step_ms(runtimes[spin], args.calls))
        del runtimes
        on, off = statistics.median(times[True]), statistics.median(times[False])
        rows.append([name, f"{on:.2f}", f"{off:.2f}", f"{on / off:.2f}x"])
        say(f"{name}: done")
    print(f"int8, beam 4, {CALLERS} calling threads x {args.calls} calls, ms per step of both together "
          f"(median of {args.rounds})")
    print(markdown_table(["layout", "spin=True (default)", "spin=False", "spin / no spin"], rows))


if __name__ == "__main__":
    main()
