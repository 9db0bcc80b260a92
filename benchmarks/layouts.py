"""optimum's two decoder layouts for the t5-small-shaped model: split (first-step + with-past) against merged.

    /work/venv/bin/python benchmarks/layouts.py [--repeats 7] [--threads 2] [--json FILE]

One ``optimum.exporters.onnx.main_export`` (task text2text-generation-with-past)
writes both layouts beside one encoder:

- split: ``decoder_model.onnx`` for the first step (it also computes the
  cross-attention keys/values), ``decoder_with_past_model.onnx`` for the others;
- merged: ``decoder_model_merged.onnx``, both branches over one copy of the
  weights, chosen by ``use_cache_branch`` (the first step gets False and
  zero-length [1, heads, 0, d_kv] past inputs).

What is measured, with ONNX Runtime directly (``threads`` intra-op threads, full
graph optimisation, as t5ort's runtime sets it):

- size on disk: the encoder plus the layout's decoder file(s);
- decoder RSS: the growth of VmRSS (and the peak, VmHWM) in a fresh process
  when it creates the layout's decoder session(s), read from /proc/self/status;
- step time: 32 greedy decoding steps with the KV cache (batch 1, 32 seeded
  random input tokens, the encoder run once beforehand, plain
  ``session.run`` on numpy arrays), both layouts interleaved ``repeats`` times
  after one warm-up each, with a 0.2 s pause before each run so that the other
  layout's idle threads have stopped spinning; medians of ms per step (loop
  time / 32), of the first step alone and of the later steps. The logits of the two layouts are compared as a check, and
  the CPU time other processes took during the run is reported (clean when ~0).

The checkpoint and optimum's export are cached in ``--workdir`` (default
benchmarks/.work; delete it to rebuild). Progress goes to stderr, results to stdout.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
import onnxruntime as ort

from _model import (
    DEFAULT_WORKDIR,
    NEW_TOKENS,
    PAUSE_S,
    T5_SMALL,
    checkpoint,
    input_ids,
    machine,
    markdown_table,
    median_ms,
    other_cpu_meter,
    say,
)

ENCODER = "encoder_model.onnx"
LAYOUTS = {
    "split": ("decoder_model.onnx", "decoder_with_past_model.onnx"),
    "merged": ("decoder_model_merged.onnx",),
}


def optimum_export(workdir: Path) -> Path:
    """optimum's export of the checkpoint (all three decoder files) in ``workdir/optimum``, made on first use."""
    out = workdir / "optimum"
    files = [ENCODER, *(f for files in LAYOUTS.values() for f in files)]
    if not all((out / f).is_file() for f in files):
        from optimum.exporters.onnx import main_export

        say(f"exporting with optimum to {out}")
        main_export(str(checkpoint(workdir)), out, task="text2text-generation-with-past", do_validation=False)
    return out


def file_mb(directory: Path, names: tuple[str, ...]) -> float:
    """Size of the graphs ``names`` with any external-data files beside them, in MB (1e6 bytes)."""
    return sum(p.stat().st_size for name in names for p in directory.glob(name + "*")) / 1e6


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


# ---- memory ------------------------------------------------------------------


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def decoder_rss_mb(paths: list[Path], threads: int) -> tuple[float, float]:
    """(RSS growth, peak RSS growth) in MB from creating sessions for ``paths``; run in a fresh process."""
    before = status_kb("VmRSS")
    _sessions = [session(p, threads) for p in paths]  # alive until the memory is read
    grown, peak = status_kb("VmRSS") - before, status_kb("VmHWM") - before
    return grown / 1024, peak / 1024


def fresh_process_rss(paths: list[Path], threads: int) -> tuple[float, float]:
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
        return pool.submit(decoder_rss_mb, paths, threads).result()


# ---- decoding ----------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """The session for the first step and the one for the others (the same one when merged)."""

    first: ort.InferenceSession
    rest: ort.InferenceSession

    @property
    def merged(self) -> bool:
        return self.first is self.rest


def load_layout(directory: Path, files: tuple[str, ...], threads: int) -> Layout:
    sessions = [session(directory / f, threads) for f in files]
    return Layout(first=sessions[0], rest=sessions[-1])


def run_step(sess: ort.InferenceSession, feed: dict, outputs: list[str]) -> dict[str, np.ndarray]:
    wanted = {i.name for i in sess.get_inputs()}
    return dict(zip(outputs, sess.run(outputs, {k: v for k, v in feed.items() if k in wanted})))


def empty_pasts(layout: Layout) -> dict[str, np.ndarray]:
    """The merged graph's first-step placeholders: a zero-length [1, heads, 0, d_kv] array per past input."""
    if not layout.merged:
        return {}
    empty = np.zeros((1, T5_SMALL["num_heads"], 0, T5_SMALL["d_kv"]), dtype=np.float32)
    return {i.name: empty for i in layout.first.get_inputs() if i.name.startswith("past_key_values.")}


def decode(layout: Layout, hidden: np.ndarray, mask: np.ndarray) -> tuple[list[float], np.ndarray]:
    """NEW_TOKENS greedy steps: (seconds of each step, raw logits [steps, vocab]).

    The first step keeps every ``present.*`` output as the next ``past_key_values.*``
    input; later steps only refresh the self-attention (``.decoder.``) entries.
    ``use_cache_branch`` (False, then True) reaches only the merged graph.
    """
    first_outputs = [o.name for o in layout.first.get_outputs()]
    rest_outputs = [o.name for o in layout.rest.get_outputs() if o.name == "logits" or ".decoder." in o.name]
    feed = {"encoder_attention_mask": mask, "encoder_hidden_states": hidden, **empty_pasts(layout)}
    token = np.zeros((1, 1), dtype=np.int64)  # decoder_start_token_id
    seconds, logits = [], []
    for step in range(NEW_TOKENS):
        sess, outputs = (layout.first, first_outputs) if step == 0 else (layout.rest, rest_outputs)
        start = time.perf_counter()
        out = run_step(sess, {**feed, "input_ids": token, "use_cache_branch": np.array([step > 0])}, outputs)
        seconds.append(time.perf_counter() - start)
        logits.append(out["logits"][0, -1])
        token = np.array([[logits[-1].argmax()]], dtype=np.int64)
        feed.update((k.replace("present.", "past_key_values.", 1), v) for k, v in out.items() if k != "logits")
    return seconds, np.stack(logits)


# ---- the benchmark -----------------------------------------------------------


def measure(workdir: Path, threads: int, repeats: int) -> dict:
    """Sizes, decoder RSS and interleaved step times of both layouts, and their agreement."""
    info = machine(threads, optimum_onnx=version("optimum-onnx"))
    other_cpu = other_cpu_meter()
    directory = optimum_export(workdir)
    results = {name: {"file_mb": file_mb(directory, (ENCODER, *files))} for name, files in LAYOUTS.items()}
    for name, files in LAYOUTS.items():
        say(f"decoder RSS of the {name} layout (fresh process)")
        grown, peak = fresh_process_rss([directory / f for f in files], threads)
        results[name].update(rss_mb=grown, peak_rss_mb=peak)

    ids = input_ids()
    mask = np.ones_like(ids)
    (hidden,) = session(directory / ENCODER, threads).run(None, {"input_ids": ids, "attention_mask": mask})
    layouts = {name: load_layout(directory, files, threads) for name, files in LAYOUTS.items()}
    say("warming up")
    last = {name: decode(layout, hidden, mask) for name, layout in layouts.items()}
    steps = {name: [] for name in layouts}  # per repeat, the seconds of each step
    for i in range(repeats):
        say(f"repeat {i + 1}/{repeats}")
        for name in list(layouts)[:: 1 if i % 2 == 0 else -1]:
            time.sleep(PAUSE_S)
            last[name] = decode(layouts[name], hidden, mask)
            steps[name].append(last[name][0])

    for name, runs in steps.items():
        results[name].update(
            ms_per_step=median_ms([sum(run) for run in runs]) / NEW_TOKENS,
            first_step_ms=median_ms([run[0] for run in runs]),
            later_step_ms=median_ms([statistics.median(run[1:]) for run in runs]),
            step_seconds=runs,
        )
    split_logits, merged_logits = last["split"][1], last["merged"][1]
    return {
        "machine": info,
        "other_processes_cpu_seconds": other_cpu(),
        "repeats": repeats,
        "steps": NEW_TOKENS,
        "layouts": results,
        "max_abs_logit_diff": float(np.abs(split_logits - merged_logits).max()),
        "tokens_equal": bool(np.array_equal(split_logits.argmax(-1), merged_logits.argmax(-1))),
    }


def report(results: dict) -> str:
    header = [
        "layout",
        "files (encoder + decoders)",
        "size on disk MB",
        "decoder RSS MB (peak)",
        f"ms/step (median of {results['repeats']})",
        "first step ms",
        "later steps ms (median)",
    ]
    rows = [
        [
            name,
            " + ".join((ENCODER, *LAYOUTS[name])),
            f"{r['file_mb']:.1f}",
            f"{r['rss_mb']:.1f} ({r['peak_rss_mb']:.1f})",
            f"{r['ms_per_step']:.2f}",
            f"{r['first_step_ms']:.2f}",
            f"{r['later_step_ms']:.2f}",
        ]
        for name, r in results["layouts"].items()
    ]
    checks = [
        ["max abs logit diff, split vs merged", f"{results['max_abs_logit_diff']:.2e}"],
        ["same greedy tokens", str(results["tokens_equal"])],
        ["CPU time of other processes during the run", f"{results['other_processes_cpu_seconds']:.1f} s"],
    ]
    return "\n\n".join(
        [
            markdown_table(["machine", ""], [[k, v] for k, v in results["machine"].items()]),
            markdown_table(header, rows),
            markdown_table(["check", ""], checks),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="cache for the checkpoint and export")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per layout (default 7)")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads (default 2)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args()
    results = measure(args.workdir, args.threads, args.repeats)
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
