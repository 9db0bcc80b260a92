"""Three ONNX layouts of the t5-small-shaped model: optimum's split and merged decoders against t5ort's export.

    /work/venv/bin/python benchmarks/layouts.py [--repeats 7] [--threads 2] [--json FILE]

The same seeded checkpoint, exported twice:

- ``optimum split``: optimum's ``encoder_model.onnx``, ``decoder_model.onnx`` for
  the first step (it also computes the cross-attention keys/values) and
  ``decoder_with_past_model.onnx`` for the others;
- ``optimum merged``: the same encoder and ``decoder_model_merged.onnx``, an If
  on ``use_cache_branch`` over both decoders (the first step gets False and
  zero-length [1, heads, 0, d_kv] past inputs);
- ``t5ort``: ``t5ort.export``'s encoder, which also outputs every decoder layer's
  cross-attention keys/values (``present.{i}.encoder.key/value``), optimum's
  with-past decoder for every step (the first with zero-length self-attention
  pasts and the encoder's cross keys/values), and one ``weights.bin`` holding
  each distinct tensor of both graphs once, memory-mapped by ONNX Runtime.

What is measured, with ONNX Runtime directly (the session options t5ort's
runtime sets: ``threads`` intra-op threads, one inter-op thread, sequential
execution, full graph optimisation, dynamic work blocks). MB are 2**20 bytes; memory is also given as a ratio to the
checkpoint's weights (the size of its ``model.safetensors``):

- size on disk: every file the layout reads (graphs and their external data);
- memory, in a fresh process per layout, from /proc/self/status: the growth of
  VmRSS after creating all the layout's sessions (the encoder's too) and the
  peak growth (VmHWM) while doing so; then the same after one encoder run and
  one 32-step greedy decode (the peak then covers loading too);
- time: batch 1, 32 seeded random input tokens, 32 greedy decoding steps with
  the KV cache (plain ``session.run`` on numpy arrays); before each decode the
  encoder runs once, timed on its own and outside the step times (t5ort's
  encoder does the cross-attention projections the optimum layouts do in their
  first step). The layouts run interleaved ``repeats`` times after one warm-up
  each, with a pause before each run so that another session's idle threads
  have stopped spinning; medians of ms per step (loop time / 32), of the first
  step alone and of the later steps;
- checks: the largest absolute difference of the raw logits of each layout from
  ``optimum merged``'s and whether the greedy tokens are the same, and the CPU
  time other processes took during the run (clean when ~0).

The checkpoint and both exports are cached in ``--workdir`` (default
benchmarks/.work; delete it to rebuild): optimum's in ``optimum/``, t5ort's in
``t5ort-layout/`` (re-exported when its manifest format is not the current one).
Progress goes to stderr, results to stdout.
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
    current_t5ort_export,
    input_ids,
    machine,
    markdown_table,
    median_ms,
    ort_session_options,
    other_cpu_meter,
    proc_status_mb,
    say,
)

MB = 2**20
ENCODER = "encoder_model.onnx"
FIRST_STEP = "decoder_model.onnx"
WITH_PAST = "decoder_with_past_model.onnx"
MERGED = "decoder_model_merged.onnx"
WEIGHTS = "weights.bin"
REFERENCE = "optimum merged"


@dataclass(frozen=True)
class Files:
    """A layout on disk: its directory, the graphs for the encoder, the first and the later decoder steps, and any
    shared weights file the graphs point to (optimum's own external data, ``<graph>_data``, is found beside them)."""

    directory: Path
    encoder: str
    first: str
    rest: str
    data: tuple[str, ...] = ()

    @property
    def graphs(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.encoder, self.first, self.rest)))

    def paths(self) -> list[Path]:
        """Every file the layout reads."""
        graphs = [p for name in self.graphs for p in sorted(self.directory.glob(name + "*"))]
        return graphs + [self.directory / name for name in self.data]


def optimum_export(workdir: Path) -> Path:
    """optimum's export of the checkpoint (encoder, all three decoders) in ``workdir/optimum``, made on first use."""
    out = workdir / "optimum"
    if not all((out / f).is_file() for f in (ENCODER, FIRST_STEP, WITH_PAST, MERGED)):
        from optimum.exporters.onnx import main_export

        say(f"exporting with optimum to {out}")
        main_export(str(checkpoint(workdir)), out, task="text2text-generation-with-past", do_validation=False)
    return out


def t5ort_export(workdir: Path) -> Path:
    """t5ort's export of the checkpoint in ``workdir/t5ort-layout``, made on first use or when its format is old."""
    out = workdir / "t5ort-layout"
    if not current_t5ort_export(out):
        import t5ort

        t5ort.export(checkpoint(workdir), out, force=True, progress=lambda m: say(f"t5ort export: {m}"))
    return out


def layout_files(workdir: Path) -> dict[str, Files]:
    """The three layouts, by name, exported on first use."""
    optimum, t5ort_dir = optimum_export(workdir), t5ort_export(workdir)
    return {
        "optimum split": Files(optimum, ENCODER, FIRST_STEP, WITH_PAST),
        "optimum merged": Files(optimum, ENCODER, MERGED, MERGED),
        "t5ort": Files(t5ort_dir, ENCODER, WITH_PAST, WITH_PAST, data=(WEIGHTS,)),
    }


def session(path: Path, threads: int) -> ort.InferenceSession:
    """A CPU session with the options t5ort's runtime uses."""
    return ort.InferenceSession(str(path), sess_options=ort_session_options(threads), providers=["CPUExecutionProvider"])


# ---- decoding ----------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """A layout's sessions: the encoder, the first decoder step and the later ones (one session for one graph)."""

    encoder: ort.InferenceSession
    first: ort.InferenceSession
    rest: ort.InferenceSession


def load_layout(files: Files, threads: int) -> Layout:
    """One session per distinct graph of ``files``."""
    sessions = {name: session(files.directory / name, threads) for name in files.graphs}
    return Layout(encoder=sessions[files.encoder], first=sessions[files.first], rest=sessions[files.rest])


def run(sess: ort.InferenceSession, feed: dict, outputs: list[str]) -> dict[str, np.ndarray]:
    """``outputs`` by name, feeding ``sess`` only the entries of ``feed`` it has inputs for."""
    wanted = {i.name for i in sess.get_inputs()}
    return dict(zip(outputs, sess.run(outputs, {k: v for k, v in feed.items() if k in wanted})))


def encode(layout: Layout, ids: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """The encoder's outputs by name: last_hidden_state [1, L, d_model], and t5ort's cross keys/values.

    t5ort's encoder also outputs present.{i}.encoder.key/value, [1, heads, L, d_kv] each.
    """
    outputs = [o.name for o in layout.encoder.get_outputs()]
    return run(layout.encoder, {"input_ids": ids, "attention_mask": mask}, outputs)


def first_feed(layout: Layout, encoded: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, np.ndarray]:
    """The first decoder step's inputs besides input_ids and use_cache_branch.

    A past input the encoder computed (t5ort's cross-attention keys/values) comes
    from it; every other past input is zero-length (merged: all of them; t5ort:
    the self-attention ones). The split layout's first-step graph takes none.
    """
    empty = np.zeros((1, T5_SMALL["num_heads"], 0, T5_SMALL["d_kv"]), dtype=np.float32)  # [1, heads, 0, d_kv]
    cross = {k: v for k, v in encoded.items() if k != "last_hidden_state"}  # t5ort: present.{i}.encoder.key/value
    from_encoder = {k.replace("present.", "past_key_values.", 1): v for k, v in cross.items()}
    names = [i.name for i in layout.first.get_inputs() if i.name.startswith("past_key_values.")]
    pasts = {name: from_encoder.get(name, empty) for name in names}
    return {"encoder_attention_mask": mask, "encoder_hidden_states": encoded["last_hidden_state"], **pasts}


def decode(layout: Layout, feed: dict[str, np.ndarray]) -> tuple[list[float], np.ndarray]:
    """NEW_TOKENS greedy steps from ``feed`` (see first_feed): (seconds of each step, raw logits [steps, vocab]).

    The first step keeps every ``present.*`` output as the next ``past_key_values.*``
    input; later steps only refresh the self-attention (``.decoder.``) entries.
    ``use_cache_branch`` (False, then True) reaches only the merged graph.
    """
    first_outputs = [o.name for o in layout.first.get_outputs()]
    rest_outputs = [o.name for o in layout.rest.get_outputs() if o.name == "logits" or ".decoder." in o.name]
    feed = dict(feed)
    token = np.zeros((1, 1), dtype=np.int64)  # [1, 1]: decoder_start_token_id
    seconds, logits = [], []
    for step in range(NEW_TOKENS):
        sess, outputs = (layout.first, first_outputs) if step == 0 else (layout.rest, rest_outputs)
        start = time.perf_counter()
        out = run(sess, {**feed, "input_ids": token, "use_cache_branch": np.array([step > 0])}, outputs)
        seconds.append(time.perf_counter() - start)
        logits.append(out["logits"][0, -1])  # [vocab]
        token = np.array([[logits[-1].argmax()]], dtype=np.int64)  # [1, 1]
        feed.update((k.replace("present.", "past_key_values.", 1), v) for k, v in out.items() if k != "logits")
    return seconds, np.stack(logits)


def generate(layout: Layout, ids: np.ndarray, mask: np.ndarray) -> tuple[float, list[float], np.ndarray]:
    """One run: (encoder seconds, seconds of each decoder step, raw logits [steps, vocab])."""
    start = time.perf_counter()
    encoded = encode(layout, ids, mask)
    encoder_seconds = time.perf_counter() - start
    seconds, logits = decode(layout, first_feed(layout, encoded, mask))
    return encoder_seconds, seconds, logits


# ---- memory ------------------------------------------------------------------


def layout_memory(files: Files, threads: int) -> dict[str, float]:
    """RSS growth and peak growth in MB after loading the layout, then after one decode; run in a fresh process."""
    before = proc_status_mb("VmRSS")
    layout = load_layout(files, threads)  # alive until the memory is read
    loaded = dict(load_rss_mb=proc_status_mb("VmRSS") - before, load_peak_mb=proc_status_mb("VmHWM") - before)
    ids = input_ids()
    generate(layout, ids, np.ones_like(ids))
    decoded = dict(decode_rss_mb=proc_status_mb("VmRSS") - before, decode_peak_mb=proc_status_mb("VmHWM") - before)
    return {**loaded, **decoded}


def fresh_process_memory(files: Files, threads: int) -> dict[str, float]:
    """layout_memory in a newly spawned process, so that nothing loaded before counts."""
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
        return pool.submit(layout_memory, files, threads).result()


# ---- the benchmark -----------------------------------------------------------


def time_layouts(layouts: dict[str, Layout], repeats: int) -> tuple[dict[str, list], dict[str, np.ndarray]]:
    """Interleaved timed runs after one warm-up each.

    Returns, per layout, (encoder seconds, seconds of each step) for every repeat,
    and per layout the raw logits [steps, vocab] of its last run.
    """
    ids = input_ids()  # [1, L]
    mask = np.ones_like(ids)  # [1, L]
    say("warming up")
    logits = {name: generate(layout, ids, mask)[2] for name, layout in layouts.items()}
    runs = {name: [] for name in layouts}
    for i in range(repeats):
        say(f"repeat {i + 1}/{repeats}")
        for name in list(layouts)[:: 1 if i % 2 == 0 else -1]:
            time.sleep(PAUSE_S)
            encoder_seconds, seconds, logits[name] = generate(layouts[name], ids, mask)
            runs[name].append((encoder_seconds, seconds))
    return runs, logits


def timing_summary(runs: list[tuple[float, list[float]]]) -> dict:
    """Medians over the repeats of one layout's runs."""
    steps = [seconds for _, seconds in runs]
    return dict(
        encoder_ms=median_ms([encoder for encoder, _ in runs]),
        ms_per_step=median_ms([sum(run) for run in steps]) / NEW_TOKENS,
        first_step_ms=median_ms([run[0] for run in steps]),
        later_step_ms=median_ms([statistics.median(run[1:]) for run in steps]),
        encoder_seconds=[encoder for encoder, _ in runs],
        step_seconds=steps,
    )


def checks(logits: dict[str, np.ndarray]) -> dict[str, dict]:
    """Each layout's raw logits and greedy tokens against the reference layout's."""
    ref = logits[REFERENCE]
    return {
        name: dict(max_abs_logit_diff=float(np.abs(x - ref).max()),
                   tokens_equal=bool(np.array_equal(x.argmax(-1), ref.argmax(-1))))
        for name, x in logits.items() if name != REFERENCE
    }


def measure(workdir: Path, threads: int, repeats: int) -> dict:
    """Sizes, fresh-process memory and interleaved step times of the three layouts, and their agreement."""
    info = machine(threads, optimum_onnx=version("optimum-onnx"))
    other_cpu = other_cpu_meter()
    files = layout_files(workdir)
    weights_bytes = (checkpoint(workdir) / "model.safetensors").stat().st_size
    results = {
        name: dict(files=[p.name for p in f.paths()], disk_bytes=sum(p.stat().st_size for p in f.paths()))
        for name, f in files.items()
    }
    for name, f in files.items():
        say(f"memory of the {name} layout (fresh process)")
        results[name].update(fresh_process_memory(f, threads))
    runs, logits = time_layouts({name: load_layout(f, threads) for name, f in files.items()}, repeats)
    for name, layout_runs in runs.items():
        results[name].update(timing_summary(layout_runs))
    return {
        "machine": info,
        "other_processes_cpu_seconds": other_cpu(),
        "repeats": repeats,
        "steps": NEW_TOKENS,
        "checkpoint_weights_bytes": weights_bytes,
        "layouts": results,
        "reference": REFERENCE,
        "checks": checks(logits),
    }


def report(results: dict) -> str:
    """The machine, layouts and checks tables, in markdown."""
    weights_mb = results["checkpoint_weights_bytes"] / MB

    def mb(value: float) -> str:
        return f"{value:.1f} ({value / weights_mb:.2f}x)"

    header = [
        "layout", "files", "size on disk MB", "RSS after loading MB", "peak while loading MB",
        f"RSS after {results['steps']} steps MB", "peak by then MB", "encoder ms",
        f"ms/step (median of {results['repeats']})", "first step ms", "later steps ms (median)",
    ]
    rows = [
        [
            name, " + ".join(r["files"]), mb(r["disk_bytes"] / MB), mb(r["load_rss_mb"]), mb(r["load_peak_mb"]),
            mb(r["decode_rss_mb"]), mb(r["decode_peak_mb"]), f"{r['encoder_ms']:.2f}", f"{r['ms_per_step']:.2f}",
            f"{r['first_step_ms']:.2f}", f"{r['later_step_ms']:.2f}",
        ]
        for name, r in results["layouts"].items()
    ]
    rows_checks = []
    for name, c in results["checks"].items():
        rows_checks.append([f"max abs logit diff, {name} vs {results['reference']}", f"{c['max_abs_logit_diff']:.2e}"])
        rows_checks.append([f"same greedy tokens, {name} vs {results['reference']}", str(c["tokens_equal"])])
    other_cpu = f"{results['other_processes_cpu_seconds']:.1f} s"
    rows_checks.append(["CPU time of other processes during the run", other_cpu])
    note = (f"MB = 2**20 bytes; (Nx) = ratio to the checkpoint's weights (model.safetensors, {weights_mb:.1f} MB). "
            "RSS and peaks: growth in a fresh process per layout.")
    return "\n\n".join(
        [
            markdown_table(["machine", ""], [[k, v] for k, v in results["machine"].items()]),
            note,
            markdown_table(header, rows),
            markdown_table(["check", ""], rows_checks),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="cache for the checkpoint and exports")
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
