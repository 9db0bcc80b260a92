"""Greedy decoding speed of t5ort against transformers' generate, on a t5-small-shaped model, on the CPU.

    /work/venv/bin/python benchmarks/compare_pytorch.py [--repeats 7] [--threads 2] [--json FILE]

What is measured: the wall time of one whole generate call (encoder + 32
decoding steps, raw logits of every step kept), batch 1, 32 seeded random
input tokens, exactly 32 new tokens (min_new_tokens = max_new_tokens = 32):

- t5ort: ``rt.generate(input_ids=..., max_new_tokens=32, min_new_tokens=32)``
  (``output_logits=True``), ONNX Runtime with ``threads`` intra-op threads;
- PyTorch: ``model.generate(input_ids, max_new_tokens=32, min_new_tokens=32,
  do_sample=False, output_logits=True, return_dict_in_generate=True)`` under
  ``torch.no_grad()``, with ``torch.set_num_threads(threads)``.

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
    if not (out / "t5ort.json").is_file():
        t5ort.export(checkpoint(workdir), out, force=True, progress=lambda m: say(f"t5ort export: {m}"))
    return out


def run_t5ort(rt, ids: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """One timed generate call: (seconds, sequences [1, 33], raw logits [1, 32, vocab])."""
    start = time.perf_counter()
    res = rt.generate(input_ids=ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, output_logits=True)
    return time.perf_counter() - start, res.sequences, res.logits


def run_torch(model, ids: torch.Tensor) -> tuple[float, np.ndarray, np.ndarray]:
    """One timed generate call: (seconds, sequences [1, 33], raw logits [1, 32, vocab])."""
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            ids,
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
        )
    seconds = time.perf_counter() - start
    return seconds, out.sequences.numpy(), torch.stack(out.logits, dim=1).numpy()


def measure(workdir: Path, threads: int, repeats: int) -> dict:
    """Time both sides interleaved; return the medians and the agreement of their outputs."""
    info = machine(threads, torch=torch.__version__, transformers=transformers.__version__)
    other_cpu = other_cpu_meter()
    export_dir = t5ort_export(workdir)
    torch.set_num_threads(threads)
    model = T5ForConditionalGeneration.from_pretrained(checkpoint(workdir)).eval()
    rt = t5ort.load(export_dir, threads=threads)
    ids = input_ids()
    ids_torch = torch.from_numpy(ids)
    runs = {"t5ort": lambda: run_t5ort(rt, ids), "pytorch": lambda: run_torch(model, ids_torch)}

    say("warming up")
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


def report(results: dict) -> str:
    ms = results["ms_per_step"]
    timing = [[name, f"{ms[name]:.2f}", f"{ms[name] * results['new_tokens']:.1f}"] for name in ("t5ort", "pytorch")]
    timing.append(["pytorch / t5ort", f"{results['ratio_pytorch_over_t5ort']:.2f}x", ""])
    checks = [
        ["max abs diff of raw logits", f"{results['max_abs_logit_diff']:.2e}"],
        ["max abs raw logit", f"{results['max_abs_logit']:.2f}"],
        ["sequences equal", str(results["sequences_equal"])],
        ["CPU time of other processes during the run", f"{results['other_processes_cpu_seconds']:.1f} s"],
    ]
    return "\n\n".join(
        [
            markdown_table(["machine", ""], [[k, v] for k, v in results["machine"].items()]),
            markdown_table(
                ["runtime", f"ms/step (median of {results['repeats']})", f"ms per generate ({results['new_tokens']} steps)"],
                timing,
            ),
            markdown_table(["check", ""], checks),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="cache for the checkpoint and export")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per side (default 7)")
    parser.add_argument("--threads", type=int, default=2, help="threads for each side (default 2)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args()
    results = measure(args.workdir, args.threads, args.repeats)
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
