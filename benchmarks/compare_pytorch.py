"""Decoding speed of t5ort against transformers' generate, on a t5-small-shaped model, on the CPU.

    /work/venv/bin/python benchmarks/compare_pytorch.py [--workload greedy-1 beam4-1 beam4-8]
                                                        [--repeats 7] [--threads 2] [--json FILE]

What is measured: the wall time of one whole generate call (encoder + 32
decoding steps, raw logits of every step kept), 32 seeded random input tokens
per row, exactly 32 new tokens (min_new_tokens = max_new_tokens = 32), for each
workload: greedy batch 1 (``greedy-1``), beam search with 4 beams at batch 1
(``beam4-1``) and batch 8 (``beam4-8``):

- t5ort: ``rt.generate(input_ids=..., max_new_tokens=32, min_new_tokens=32,
  num_beams=...)`` (``output_logits=True``), ONNX Runtime with ``threads``
  intra-op threads;
- PyTorch: ``model.generate(input_ids, max_new_tokens=32, min_new_tokens=32,
  num_beams=..., do_sample=False, output_logits=True, return_dict_in_generate=True)``
  under ``torch.no_grad()``, with ``torch.set_num_threads(threads)``.

Each side is warmed up once, then the two run interleaved ``repeats`` times
(alternating which goes first, with a 0.2 s pause before each run so that the
other side's idle threads have stopped spinning); the table shows medians, as
ms per step (total / 32), and the ratio PyTorch / t5ort (> 1: t5ort is faster).
The raw logits and sequences of the two are compared as a correctness check, and
the CPU time other processes took during the run is reported: timings are only
clean when it is ~0.

The seeded checkpoint and its t5ort export are cached in ``--workdir``
(default benchmarks/.work; delete it to rebuild). Progress goes to stderr,
results to stdout.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import T5ForConditionalGeneration

import t5ort
from _model import (
    DEFAULT_WORKDIR,
    NEW_TOKENS,
    PAUSE_S,
    checkpoint,
    current_t5ort_export,
    input_ids,
    machine,
    markdown_table,
    median_ms,
    other_cpu_meter,
    say,
)


def t5ort_export(workdir: Path) -> Path:
    """The t5ort export of the checkpoint in ``workdir/t5ort``, made on first use."""
    out = workdir / "t5ort"
    if not current_t5ort_export(out):
        t5ort.export(checkpoint(workdir), out, force=True, progress=lambda m: say(f"t5ort export: {m}"))
    return out


WORKLOADS = {  # name -> (batch, num_beams)
    "greedy-1": (1, 1),
    "beam4-1": (1, 4),
    "beam4-8": (8, 4),
}


def run_t5ort(rt, ids: np.ndarray, num_beams: int) -> tuple[float, np.ndarray, np.ndarray]:
    """One timed generate call: (seconds, sequences, raw logits [rows, 32, vocab])."""
    start = time.perf_counter()
    res = rt.generate(input_ids=ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, num_beams=num_beams,
                      output_logits=True)
    return time.perf_counter() - start, res.sequences, res.logits


def run_torch(model, ids: torch.Tensor, num_beams: int) -> tuple[float, np.ndarray, np.ndarray]:
    """One timed generate call: (seconds, sequences, raw logits [rows, 32, vocab])."""
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            ids,
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            num_beams=num_beams,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
        )
    seconds = time.perf_counter() - start
    return seconds, out.sequences.numpy(), torch.stack(out.logits, dim=1).numpy()


def measure(workdir: Path, threads: int, repeats: int, workload: str) -> dict:
    """Time both sides interleaved; return the medians and the agreement of their outputs."""
    batch, num_beams = WORKLOADS[workload]
    info = machine(threads, torch=torch.__version__, transformers=transformers.__version__)
    other_cpu = other_cpu_meter()
    export_dir = t5ort_export(workdir)
    torch.set_num_threads(threads)
    model = T5ForConditionalGeneration.from_pretrained(checkpoint(workdir)).eval()
    rt = t5ort.load(export_dir, threads=threads)
    ids = input_ids(batch)
    ids_torch = torch.from_numpy(ids)
    runs = {"t5ort": lambda: run_t5ort(rt, ids, num_beams), "pytorch": lambda: run_torch(model, ids_torch, num_beams)}

    say(f"{workload}: warming up")
    last = {name: run() for name, run in runs.items()}
    seconds = {name: [] for name in runs}
    for i in range(repeats):
        say(f"repeat {i + 1}/{repeats}")
        for name in list(runs)[:: 1 if i % 2 == 0 else -1]:
            time.sleep(PAUSE_S)
            last[name] = runs[name]()
            seconds[name].append(last[name][0])

    (_, ort_seq, ort_logits), (_, pt_seq, pt_logits) = last["t5ort"], last["pytorch"]
    ms_per_step = {name: median_ms(s) / NEW_TOKENS for name, s in seconds.items()}
    return {
        "workload": workload,
        "batch": batch,
        "num_beams": num_beams,
        "machine": info,
        "other_processes_cpu_seconds": other_cpu(),
        "repeats": repeats,
        "new_tokens": NEW_TOKENS,
        "ms_per_step": ms_per_step,
        "all_seconds": seconds,
        "ratio_pytorch_over_t5ort": ms_per_step["pytorch"] / ms_per_step["t5ort"],
        "max_abs_logit_diff": float(np.abs(ort_logits - pt_logits).max()),
        "max_abs_logit": float(np.abs(pt_logits).max()),
        "sequences_equal": bool(np.array_equal(ort_seq, pt_seq)),
    }


def report(all_results: list[dict]) -> str:
    """The machine once, then one timing row per workload and runtime, and the checks."""
    timing, checks = [], []
    for r in all_results:
        ms = r["ms_per_step"]
        for name in ("t5ort", "pytorch"):
            timing.append([r["workload"], name, f"{ms[name]:.2f}", f"{ms[name] * r['new_tokens']:.1f}", ""])
        timing.append([r["workload"], "pytorch / t5ort", "", "", f"{r['ratio_pytorch_over_t5ort']:.2f}x"])
        checks.append([r["workload"], f"{r['max_abs_logit_diff']:.2e}", f"{r['max_abs_logit']:.2f}",
                       str(r["sequences_equal"]), f"{r['other_processes_cpu_seconds']:.1f} s"])
    first = all_results[0]
    return "\n\n".join(
        [
            markdown_table(["machine", ""], [[k, v] for k, v in first["machine"].items()]),
            markdown_table(
                ["workload", "runtime", f"ms/step (median of {first['repeats']})",
                 f"ms per generate ({first['new_tokens']} steps)", "ratio"],
                timing,
            ),
            markdown_table(["workload", "max abs diff of raw logits", "max abs raw logit", "sequences equal",
                            "CPU time of other processes"], checks),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="cache for the checkpoint and export")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per side (default 7)")
    parser.add_argument("--threads", type=int, default=2, help="threads for each side (default 2)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--workload", nargs="+", choices=sorted(WORKLOADS), default=list(WORKLOADS),
                        help="workloads to run (default: all)")
    args = parser.parse_args()
    results = [measure(args.workdir, args.threads, args.repeats, w) for w in args.workload]
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
