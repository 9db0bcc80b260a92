"""Why int4 is (or is not) faster than int8 at batch 1: the weights' memory traffic, and the ops it does not touch.

    python benchmarks/int4_memory.py [--threads 2] [--rounds 6] [--evict-mb 400] [--workdir benchmarks/.work]

Two measurements on the t5-small-shaped int8 and int4 exports that compare.py builds
(``t5ort-int8`` and ``t5ort-int4`` in ``--workdir``), both in this one process:

1. **Bare decoder steps, cached and evicted.** Encode once, then 24 ``graphs.step`` calls at batch 1;
   each step's decoder run is timed alone (median of steps 3..24, then median over ``--rounds``
   rounds, int8 and int4 alternating). "evicted": before each step, ``--evict-mb`` MB of memory are
   written, more than the last-level cache holds, so the step reads its weights from memory. If
   int8/int4 grows once evicted, the cached case was not bound by reading the weights.
2. **Where a step's time goes**, from onnxruntime's profiler (5 x 32 steps per export): kernel time
   per run of the quantized matmuls (int8: ``DynamicQuantizeMatMul`` and ``MatMulIntegerToFloat``;
   int4: ``MatMulNBits``) and of everything else. The profiler adds time to every op, so compare
   shares and ratios, not absolute figures.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _model import DEFAULT_WORKDIR, input_ids, markdown_table, say  # noqa: E402

EXPORTS = {"int8": "t5ort-int8", "int4": "t5ort-int4"}
MATMULS = {"DynamicQuantizeMatMul", "MatMulIntegerToFloat", "MatMulInteger", "MatMulNBits"}
STEPS = 24


def step_ms(rt, junk: np.ndarray | None) -> float:
    """Median ms of one decoder run over steps 3..STEPS at batch 1, ``junk`` written before each if given."""
    g = rt.graphs
    ids = input_ids(1)
    state = g.start(g.encode(ids, np.ones_like(ids)))
    tokens = np.zeros(1, dtype=np.int64)
    runs = []
    for i in range(STEPS):
        if junk is not None:
            junk[:] = i & 1
        start = time.perf_counter()
        _, state = g.step(tokens, state)
        runs.append(time.perf_counter() - start)
        tokens = np.full(1, 5, dtype=np.int64)
    return 1000 * float(np.median(runs[2:]))


def profile(directory: Path, threads: int) -> dict[str, float]:
    """Kernel microseconds per decoder run: the quantized matmuls and the rest (onnxruntime's profiler)."""
    import t5ort
    from t5ort.runtime import graphs

    base = graphs.common_session_options
    with tempfile.TemporaryDirectory() as tmp:
        def profiling(n):
            so = base(n)
            so.enable_profiling = True
            so.profile_file_prefix = str(Path(tmp) / "profile")
            return so

        graphs.common_session_options = profiling
        try:
            rt = t5ort.load(directory, threads=threads)
        finally:
            graphs.common_session_options = base
        for _ in range(5):
            step_ms(rt, None)
        events = json.loads(Path(rt.graphs.decoder_session.end_profiling()).read_text())
        rt.graphs.encoder_session.end_profiling()
    by_op: collections.Counter = collections.Counter()
    runs = sum(1 for e in events if e.get("cat") == "Session" and e["name"] == "model_run")
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by_op[e["args"]["op_name"]] += e["dur"]
    matmul = sum(v for k, v in by_op.items() if k in MATMULS)
    return {"matmul_us": matmul / runs, "other_us": (sum(by_op.values()) - matmul) / runs}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--evict-mb", type=int, default=400)
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    args = p.parse_args()
    import t5ort

    dirs = {name: args.workdir / sub for name, sub in EXPORTS.items()}
    missing = [str(d) for d in dirs.values() if not (d / "t5ort.json").is_file()]
    if missing:
        raise SystemExit(f"no export at {', '.join(missing)}: run `python benchmarks/compare.py` first, "
                         "which makes them.")
    runtimes = {name: t5ort.load(d, threads=args.threads) for name, d in dirs.items()}
    junk = np.ones(args.evict_mb << 20, dtype=np.uint8)
    times: dict = collections.defaultdict(list)
    for r in range(args.rounds):
        for evicted in (False, True):
            for name, rt in runtimes.items():
                time.sleep(0.1)
                times[(name, evicted)].append(step_ms(rt, junk if evicted else None))
        say(f"round {r + 1}/{args.rounds}")
    rows = []
    for evicted in (False, True):
        int8, int4 = (float(np.median(times[(n, evicted)])) for n in ("int8", "int4"))
        rows.append([f"evicted ({args.evict_mb} MB written before each step)" if evicted else "cached",
                     f"{int8:.2f}", f"{int4:.2f}", f"{int8 / int4:.2f}x"])
    print(f"bare decoder run at batch 1, ms, medians over {args.rounds} rounds; {args.threads} threads")
    print(markdown_table(["weights", "int8", "int4", "int8 / int4"], rows))
    say("profiling")
    prof = {name: profile(d, args.threads) for name, d in dirs.items()}
    rows = [[name, f"{v['matmul_us']:.0f}", f"{v['other_us']:.0f}",
             f"{100 * v['other_us'] / (v['matmul_us'] + v['other_us']):.0f}%"] for name, v in prof.items()]
    print("\nonnxruntime profiler, kernel us per decoder run (profiling inflates small ops)")
    print(markdown_table(["export", "quantized matmuls", "all other ops", "other share"], rows))
    print(f"\nint8 / int4, matmuls alone: {prof['int8']['matmul_us'] / prof['int4']['matmul_us']:.2f}x")


if __name__ == "__main__":
    main()
