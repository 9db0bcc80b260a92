"""t5ort against Optimum, CTranslate2 and PyTorch, side by side, on a t5-small-shaped model on the CPU.

    python benchmarks/compare.py [--repeats 5] [--threads 2] [--new-tokens 32] [--quick]
        [--chart benchmarks/compare.png] [--json FILE] [--workdir benchmarks/.work]

A thin caller of ``t5ort.bench`` (the harness: each system in its own process,
interleaved repetitions, medians and spreads; see ``t5ort bench --help``) on the
seeded random t5-small-shaped checkpoint of ``_model.py``, exported here with
``t5ort export`` in fp32, int8 and int4 (cached in ``--workdir``), against PyTorch,
Optimum, CTranslate2 fp32 and CTranslate2 int8 on the same checkpoint, and each
export's bare decoder loop. Every system uses ``--threads`` threads and returns the
raw logits of every step; exactly ``--new-tokens`` tokens are decoded per row.

Workloads: greedy batch 1 (32 input tokens), greedy batch 16 (the first row of 32
tokens, then seeded lengths 8..64: ragged, right-padded; CTranslate2 gets unpadded
rows), beam search with 4 beams at batch 1. Progress goes to stderr, the tables
(markdown) to stdout, the chart to ``--chart``, everything to ``--json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import t5ort  # noqa: E402
import t5ort.bench as bench  # noqa: E402
from _model import DEFAULT_WORKDIR, SOURCE_LENGTH, checkpoint, current_t5ort_export, say  # noqa: E402

EXPORTS = {"t5ort": None, "t5ort-int8": "int8", "t5ort-int4": "int4"}  # work-dir name -> quantize
WORKLOADS = [(1, 1), (16, 1), (1, 4)]  # (batch, beams)


def inputs(rows: int = 16) -> list[list[int]]:
    """Row 0: SOURCE_LENGTH seeded random ids (as _model.input_ids); rows 1..: seeded lengths 8..64."""
    rng = np.random.default_rng(1)
    first = np.random.default_rng(0).integers(3, 32000, size=SOURCE_LENGTH).tolist()
    return [first] + [rng.integers(3, 32000, size=int(n)).tolist() for n in rng.integers(8, 65, size=rows - 1)]


def exports(workdir: Path) -> list[Path]:
    ckpt = checkpoint(workdir)
    out = []
    for name, quantize in EXPORTS.items():
        d = workdir / name
        if not current_t5ort_export(d):
            say(f"exporting {ckpt} with t5ort ({quantize or 'fp32'}) to {d}")
            t5ort.export(ckpt, d, force=True, quantize=quantize, progress=lambda m: say(f"  {m}"))
        out.append(d)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="cache for the checkpoint and artifacts")
    p.add_argument("--repeats", type=int, default=None, help="interleaved timed rounds (default 5; 1 with --quick)")
    p.add_argument("--threads", type=int, default=2, help="threads of every system (default 2)")
    p.add_argument("--new-tokens", type=int, default=32, help="tokens decoded per row (default 32)")
    p.add_argument("--peers", default=",".join(bench.PEERS), help=f"default {','.join(bench.PEERS)}")
    p.add_argument("--quick", action="store_true", help="one round, 8 new tokens")
    p.add_argument("--chart", type=Path, default=Path(__file__).resolve().parent / "compare.png")
    p.add_argument("--json", type=Path, help="also write every timing to this JSON file")
    args = p.parse_args()
    result = bench.run(exports(args.workdir), checkpoint=checkpoint(args.workdir),
                       peers=[x for x in args.peers.split(",") if x], inputs=inputs(), workloads=WORKLOADS,
                       max_new_tokens=8 if args.quick else args.new_tokens, threads=args.threads,
                       repeats=args.repeats or (1 if args.quick else 5), bare=True, work_dir=args.workdir,
                       progress=say)
    print(bench.format_table(result))
    bench.plot(result, args.chart)
    say(f"chart written to {args.chart}")
    if args.json:
        bench.write_json(result, args.json)
        say(f"results written to {args.json}")


if __name__ == "__main__":
    sys.exit(main())
