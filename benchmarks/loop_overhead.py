"""What does the decoding loop cost on top of the decoder graph? ``generate`` against the bare decoder, in one
process on the same sessions, interleaved call by call, so that the ratio is not moved by which process got
which memory or by drift between rounds (``compare.py --bare`` times them in separate processes).

    python benchmarks/loop_overhead.py [--shape small] [--repeats 30] [--new-tokens 32] [--threads 2]
                                       [--workdir benchmarks/.work] [--json FILE] [--quick]

Workloads (a 128-token source, forced lengths): greedy batch 1, greedy batch 16, beam search with 4 beams.
``generate`` keeps every step's raw logits (``output_logits=True``); the bare decoder encodes, expands the
rows and runs ``graphs.step`` on a fixed token, keeping nothing. Each repeat times one call of each, in
alternating order; the figure is the median of the per-repeat ratios, with its interquartile range. The
ratio includes the encoder in both (it is the same work), so it understates the loop's share of decoding
alone; the per-step difference is also printed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _model import DEFAULT_WORKDIR, checkpoint, current_t5ort_export, say  # noqa: E402

WORKLOADS = {"batch 1": (1, 1), "batch 16": (16, 1), "beam 4": (1, 4)}  # name: (inputs, beams)


def main() -> None:
    import t5ort
    from t5ort.bench.shapes import SHAPES
    from t5ort.bench.systems import Request, T5ort, T5ortBare

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="small", choices=sorted(SHAPES))
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--quick", action="store_true", help="a smoke run on the bundled model: 3 repeats, 4 tokens")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.new_tokens = 3, 4
        from t5ort.demo import bundled

        export = bundled()  # the bundled numbers model
    else:
        workdir = args.workdir / args.shape
        workdir.mkdir(parents=True, exist_ok=True)
        export = workdir / "t5ort"
        if not current_t5ort_export(export):
            say(f"exporting the {args.shape} shape's random checkpoint to {export}")
            t5ort.export(checkpoint(workdir, SHAPES[args.shape], args.shape), export, force=True)
    loop = T5ort(export, args.threads)  # generate(), keeping every step's raw logits
    bare = T5ortBare(export, args.threads, runtime=loop.rt)  # the same sessions, stepped on a fixed token
    n = args.new_tokens
    rng = np.random.default_rng(0)
    source = rng.integers(5, loop.rt.vocab_size - 1, 128)

    print(f"{'the bundled numbers model' if args.quick else args.shape + ' shape'}, {args.threads} threads, "
          f"{n} forced new tokens, 128-token sources, {args.repeats} paired repeats\n")
    print("| workload | generate ms | bare decoder ms | generate / bare, median (IQR) | per step, ms |\n"
          "|---|---|---|---|---|")
    figures = {}
    for name, (inputs, beams) in WORKLOADS.items():
        ids = np.tile(source, (inputs, 1))
        request = Request(ids, np.ones_like(ids), beams, n)
        for _ in range(2):  # warm-up: sessions, buffers
            loop.generate(request), bare.generate(request)
        pairs = []
        for i in range(args.repeats):
            if i % 2:
                b, g = bare.generate(request)[0], loop.generate(request)[0]
            else:
                g, b = loop.generate(request)[0], bare.generate(request)[0]
            pairs.append((g, b))
        g, b = np.array(pairs).T
        ratio = g / b
        q1, med, q3 = np.percentile(ratio, [25, 50, 75])
        figures[name] = {"generate_ms": float(np.median(g) * 1e3), "bare_ms": float(np.median(b) * 1e3),
                         "ratio_median": float(med), "ratio_q1": float(q1), "ratio_q3": float(q3),
                         "extra_ms_per_step": float((np.median(g) - np.median(b)) / n * 1e3)}
        f = figures[name]
        print(f"| {name} | {f['generate_ms']:.1f} | {f['bare_ms']:.1f} | {med:.3f} ({q1:.3f}-{q3:.3f}) | "
              f"{f['extra_ms_per_step']:+.3f} |")
    if args.json:
        args.json.write_text(json.dumps({"shape": args.shape, "threads": args.threads, "new_tokens": n,
                                         "repeats": args.repeats, "figures": figures}, indent=1))


if __name__ == "__main__":
    main()
