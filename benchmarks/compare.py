"""t5ort against PyTorch, Optimum and CTranslate2, side by side, against the floor of a step, at T5 shapes on the CPU.

    python benchmarks/compare.py [--shape small|base|large|mt5-base[,...]] [--repeats 5] [--threads 2]
        [--new-tokens 32] [--int4] [--bare] [--quick] [--peers pytorch,optimum,ctranslate2,ctranslate2-int8]
        [--peer-python optimum=/path/to/python] [--json FILE] [--chart FILE.png] [--workdir benchmarks/.work]
    python benchmarks/compare.py --from-json small.json base.json large.json [--chart docs/assets/benchmark.png]

A thin caller of ``t5ort.bench`` (each system in its own process, interleaved
repetitions, medians; see ``t5ort bench --help``) on seeded random checkpoints of
``t5ort.bench.shapes``: ``small`` (t5-small), ``base`` (flan-t5-base), ``large``
(flan-t5-large, ~780M parameters) and ``mt5-base``. Each shape's checkpoint, its t5ort
exports (fp32, int8; int4 with ``--int4``), the peers' conversions and the floor graphs
are made on first use and cached in ``--workdir``/SHAPE. Every system uses ``--threads``
threads and returns the raw logits of every step; exactly ``--new-tokens`` tokens are
decoded per row (min = max length for every system).

Workloads: greedy batch 1 (a 128-token source), greedy ragged batch 8 (that source and
seven of seeded lengths 32..256, right-padded; CTranslate2 gets them unpadded), beam
search with 4 beams at batch 1. Every call of N new tokens is followed in the same round
by one of 1 token: decode ms/step = (t_N - t_1) / (N - 1), encoder ms = t_1 - one step,
encoder ms per source token = encoder ms / real source tokens. The floors: one pass of
onnxruntime MatMuls over the weights a decoder step reads (``t5ort.bench.floor``), fp32
and int8, timed the same way at each workload's rows.

Stdout: the README tables (decode ms/step with its ratio to the floor of the system's
precision; encoder ms per source token; issue 23's targets), then the full tables per
shape. Progress goes to stderr, everything to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import t5ort  # noqa: E402
import t5ort.bench as bench  # noqa: E402
from _model import DEFAULT_WORKDIR, checkpoint, current_t5ort_export, say  # noqa: E402
from t5ort.bench.machine import markdown_table  # noqa: E402
from t5ort.bench.shapes import SHAPES  # noqa: E402

NAMES = {"small": "t5-small", "base": "flan-t5-base", "large": "flan-t5-large", "mt5-base": "mt5-base"}
EXPORTS = {"t5ort": None, "t5ort-int8": "int8", "t5ort-int4": "int4"}  # work-dir name -> quantize
WORKLOADS = [(1, 1), (8, 1), (1, 4)]  # (batch, beams)
QUICK_WORKLOADS = [(1, 1), (8, 1)]
ROW_NAMES = {(1, 1): "batch 1", (8, 1): "ragged batch 8", (1, 4): "beam 4, batch 1"}
SOURCE_LENGTH = 128
RAGGED_LENGTHS = (32, 256)
COLUMNS = ["t5ort fp32", "t5ort int8", "t5ort int4", "PyTorch", "Optimum", "CT2 fp32", "CT2 int8", "floor fp32",
           "floor int8"]
QUICK_NEW_TOKENS = 12  # (t_N - t_1) / (N - 1) must stand above the encoder's noise (~40 ms at the ragged batch)


def inputs(rows: int = 8) -> list[list[int]]:
    """Row 0: SOURCE_LENGTH seeded random ids; rows 1..: seeded lengths in RAGGED_LENGTHS (inclusive)."""
    rng = np.random.default_rng(1)
    first = np.random.default_rng(0).integers(3, 32000, size=SOURCE_LENGTH).tolist()
    lengths = rng.integers(RAGGED_LENGTHS[0], RAGGED_LENGTHS[1] + 1, size=rows - 1)
    return [first] + [rng.integers(3, 32000, size=int(n)).tolist() for n in lengths]


def exports(ckpt: Path, workdir: Path, int4: bool) -> list[Path]:
    out = []
    for name, quantize in EXPORTS.items():
        if quantize == "int4" and not int4:
            continue
        d = workdir / name
        if not current_t5ort_export(d):
            say(f"exporting {ckpt} with t5ort ({quantize or 'fp32'}) to {d}")
            t5ort.export(ckpt, d, force=True, quantize=quantize, progress=lambda m: say(f"  {m}"))
        out.append(d)
    return out


# ---- the README tables ------------------------------------------------------------------------------------


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None or not math.isfinite(value) else format(value, fmt)


def readme_rows(results: dict[str, bench.BenchResult]) -> list[dict]:
    """One row per shape and workload: per system its decode ms/step, ratio to its floor and encoder ms per
    source token (the JSON's ``readme`` and the tables' source)."""
    rows = []
    for shape, res in results.items():
        for w in res.workloads:
            row = {"shape": shape, "model": NAMES[shape], "workload": ROW_NAMES.get((w.batch, w.num_beams), w.name),
                   "batch": w.batch, "num_beams": w.num_beams, "new_tokens": w.new_tokens, "systems": {}}
            for s in res.systems:
                m = res.measurement(s.label, w)
                if m is not None:
                    row["systems"][s.label] = {
                        "decode_ms_per_step": m.decode_ms_per_step, "floor_ratio": res.floor_ratio(s.label, w),
                        "encoder_ms": m.encoder_ms, "encoder_ms_per_source_token": m.encoder_ms_per_source_token,
                        "ms_per_step": m.ms_per_step, "source_tokens": m.source_tokens}
            rows.append(row)
    return rows


def readme_tables(rows: list[dict]) -> str:
    columns = [c for c in COLUMNS if any(c in r["systems"] for r in rows)]
    decode, encoder = [], []
    for r in rows:
        name = f"{r['model']}, {r['workload']}"
        cells = []
        for c in columns:
            v = r["systems"].get(c)
            ratio = v and v["floor_ratio"]
            cells.append("-" if v is None else _cell(v["decode_ms_per_step"], ".2f")
                         + (f" ({ratio:.2f}x)" if ratio else ""))
        decode.append([name] + cells)
        encoder.append([name] + [_cell((r["systems"].get(c) or {}).get("encoder_ms_per_source_token"), ".4f")
                                 for c in columns if not c.startswith("floor")])
    tokens = {}  # N per model, for the caption
    for r in rows:
        tokens.setdefault(r["new_tokens"], []).append(r["model"])
    n = ", ".join(f"{k} at {', '.join(dict.fromkeys(m))}" for k, m in tokens.items()) if len(tokens) > 1 else \
        str(next(iter(tokens), 0))
    return "\n\n".join([
        f"Decode ms/step ((t_N - t_1) / (N - 1), N = {n}; in brackets: / the floor of the system's precision, "
        "int8's for int8 and int4; the floor at the workload's rows)",
        markdown_table(["shape, workload"] + columns, decode),
        "Encoder ms per real source token (t_1 less one step, / the batch's unpadded source tokens)",
        markdown_table(["shape, workload"] + [c for c in columns if not c.startswith("floor")], encoder)])


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else a / b


def targets(rows: list[dict]) -> list[list[str]]:
    """Issue 23's targets per shape: [shape, target, measured, met]."""
    out = []

    def check(model, target, value, ok):
        if value is not None:  # both systems ran
            out.append([model, target, _cell(value, ".2f") + "x", "yes" if ok(value) else "no"])

    for r in rows:
        s, model = r["systems"], r["model"]
        get = lambda label, key: (s.get(label) or {}).get(key)  # noqa: E731
        if (r["batch"], r["num_beams"]) == (1, 1):
            check(model, "batch 1 decode, t5ort fp32 / floor fp32 <= 1.25", get("t5ort fp32", "floor_ratio"),
                  lambda v: v <= 1.25)
            check(model, "batch 1 decode, t5ort int8 / floor int8 <= 1.6", get("t5ort int8", "floor_ratio"),
                  lambda v: v <= 1.6)
        if (r["batch"], r["num_beams"]) == (8, 1):
            check(model, "ragged 8 whole call, CT2 fp32 / t5ort fp32 >= 1.2",
                  _ratio(get("CT2 fp32", "ms_per_step"), get("t5ort fp32", "ms_per_step")), lambda v: v >= 1.2)
            check(model, "ragged 8 whole call, CT2 int8 / t5ort int8 >= 1.5",
                  _ratio(get("CT2 int8", "ms_per_step"), get("t5ort int8", "ms_per_step")), lambda v: v >= 1.5)
        if r["num_beams"] == 1:
            for mine, theirs in (("t5ort fp32", "CT2 fp32"), ("t5ort int8", "CT2 int8")):
                check(model, f"{r['workload']} encoder per source token, {mine} / {theirs} <= 1",
                      _ratio(get(mine, "encoder_ms_per_source_token"), get(theirs, "encoder_ms_per_source_token")),
                      lambda v: v <= 1)
    return out


CHART_SYSTEMS = ["t5ort fp32", "t5ort int8", "Optimum", "CT2 fp32", "CT2 int8"]


def readme_chart(rows: list[dict], path: Path) -> None:
    """Decode ms/step per shape and workload, one bar per system (CHART_SYSTEMS), the fp32 and int8 floors as
    lines: the README's chart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(shapes), figsize=(4.2 * len(shapes), 3.6), squeeze=False)
    width = 0.8 / len(CHART_SYSTEMS)
    for ax, shape in zip(axes[0], shapes):
        mine = [r for r in rows if r["model"] == shape]
        for i, label in enumerate(CHART_SYSTEMS):
            values = [(r["systems"].get(label) or {}).get("decode_ms_per_step") or 0 for r in mine]
            ax.bar(np.arange(len(mine)) + (i - len(CHART_SYSTEMS) / 2 + 0.5) * width, values, width, label=label)
        for j, r in enumerate(mine):
            for label, style in (("floor fp32", "-"), ("floor int8", ":")):
                floor = (r["systems"].get(label) or {}).get("decode_ms_per_step")
                if floor:
                    ax.hlines(floor, j - 0.42, j + 0.42, colors="black", linestyles=style, linewidth=1)
        ax.set_xticks(np.arange(len(mine)), [r["workload"].replace(", batch 1", "") for r in mine], fontsize=8)
        ax.set_title(f"{shape} shape", fontsize=10)
        ax.set_ylabel("decode ms/step (lower is better)", fontsize=8)
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.text(0.5, 0.005, "lines: the floor (fp32 solid, int8 dotted): onnxruntime MatMuls over a step's weights",
             ha="center", fontsize=7)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- the run ---------------------------------------------------------------------------------------------


def run_shape(shape: str, args, peer_python: dict[str, str]) -> bench.BenchResult:
    workdir = args.workdir / shape
    workdir.mkdir(parents=True, exist_ok=True)
    ckpt = checkpoint(workdir, SHAPES[shape], NAMES[shape])
    peers = [x for x in args.peers.split(",") if x]
    new_tokens = args.new_tokens or (QUICK_NEW_TOKENS if args.quick else 32)
    return bench.run(exports(ckpt, workdir, args.int4), checkpoint=ckpt, peers=peers, inputs=inputs(),
                     workloads=QUICK_WORKLOADS if args.quick else WORKLOADS, max_new_tokens=new_tokens,
                     threads=args.threads, repeats=args.repeats or (1 if args.quick else 5), bare=args.bare,
                     work_dir=workdir, peer_python={p: py for p, py in peer_python.items() if p in peers} or None,
                     floors=True, progress=say)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="small", help=f"comma-separated, any of {', '.join(SHAPES)} (default small)")
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                   help="cache for each shape's checkpoint and artifacts, in WORKDIR/SHAPE (default benchmarks/.work)")
    p.add_argument("--repeats", type=int, default=None, help="interleaved timed rounds (default 5; 1 with --quick)")
    p.add_argument("--threads", type=int, default=2, help="threads of every system (default 2)")
    p.add_argument("--new-tokens", type=int, default=None,
                   help=f"tokens decoded per row, at least 2 (default 32; {QUICK_NEW_TOKENS} with --quick)")
    p.add_argument("--peers", default=",".join(bench.PEERS), help=f"default {','.join(bench.PEERS)}")
    p.add_argument("--peer-python", action="append", default=[], metavar="PEER=PATH",
                   help="run PEER under another environment's Python, e.g. optimum=/work/venvold/bin/python")
    p.add_argument("--int4", action="store_true", help="also export and time t5ort int4 (slow to export at large)")
    p.add_argument("--bare", action="store_true", help="also time each export's bare decoder loop")
    p.add_argument("--quick", action="store_true",
                   help=f"one round, {QUICK_NEW_TOKENS} new tokens, no beam search: a check that it runs, not a figure")
    p.add_argument("--chart", type=Path, help="write a chart per shape (FILE, or FILE-SHAPE.png with several shapes)")
    p.add_argument("--json", type=Path, help="write every timing and the README rows to this JSON file")
    p.add_argument("--from-json", type=Path, nargs="+", metavar="FILE",
                   help="measure nothing: join the README rows of earlier --json files (shapes run apart) into one "
                        "set of README tables, and with --chart one chart of them")
    args = p.parse_args()
    if args.from_json:
        rows = [r for path in args.from_json for r in json.loads(path.read_text())["readme"]]
        print(readme_tables(rows))
        print("\nIssue 23's targets\n")
        print(markdown_table(["shape", "target", "measured", "met"], targets(rows)))
        if args.chart:
            readme_chart(rows, args.chart)
            say(f"chart written to {args.chart}")
        return
    shapes = [s.strip() for s in args.shape.split(",") if s.strip()]
    if not shapes or any(s not in SHAPES for s in shapes):
        p.error(f"--shape: expected any of {', '.join(SHAPES)} (comma-separated), got {args.shape!r}")
    if args.new_tokens is not None and args.new_tokens < 2:
        p.error("--new-tokens must be at least 2: the decode step is (t_N - t_1) / (N - 1)")
    peer_python = {}
    for item in args.peer_python:
        peer, sep, path = item.partition("=")
        if not sep or not peer or not path:
            p.error(f"--peer-python: expected PEER=PATH, got {item!r}")
        peer_python[peer] = path

    results = {}
    for shape in shapes:
        say(f"== {NAMES[shape]} shape ==")
        results[shape] = res = run_shape(shape, args, peer_python)
        if args.chart:
            chart = args.chart if len(shapes) == 1 else args.chart.with_name(f"{args.chart.stem}-{shape}.png")
            bench.plot(res, chart)
            say(f"chart written to {chart}")
    rows = readme_rows(results)
    print(readme_tables(rows))
    print("\nIssue 23's targets\n")
    print(markdown_table(["shape", "target", "measured", "met"], targets(rows)))
    for shape, res in results.items():
        print(f"\n## {NAMES[shape]} shape, all figures\n")
        print(bench.format_table(res))
    if args.json:
        data = {"shapes": {shape: res.to_dict() for shape, res in results.items()}, "readme": rows,
                "targets": targets(rows)}
        args.json.write_text(json.dumps(data, indent=1) + "\n")
        say(f"results written to {args.json}")


if __name__ == "__main__":
    sys.exit(main())
