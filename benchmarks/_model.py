"""Shared by the benchmark scripts: the seeded checkpoints (t5-small-shaped by default), the input, the machine.

The model builder, the machine description and the other-process CPU meter live in
``t5ort.bench`` (``t5ort/bench/shapes.py`` and ``machine.py``); this module keeps the
names the scripts import. The checkpoint is built with ``torch.manual_seed(0)`` (no hub,
no tokenizer) and cached under the work directory; delete that directory to rebuild it.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from t5ort.bench.machine import busy_minus_own as _busy_minus_own
from t5ort.bench.machine import cpu_name, machine, markdown_table, own_cpu_seconds, proc_status_mb
from t5ort.bench.shapes import T5_SMALL, build_checkpoint, parameter_count

DEFAULT_WORKDIR = Path(__file__).resolve().parent / ".work"
SOURCE_LENGTH = 32
NEW_TOKENS = 32
# Idle threads keep spinning for a while after a run (OpenMP's; ONNX Runtime's before t5ort turned that
# off); on a small machine they slow down the next run of another session or library. Pausing before each
# timed run keeps one run's threads out of the next run's timing.
PAUSE_S = 0.2

__all__ = ["DEFAULT_WORKDIR", "NEW_TOKENS", "PAUSE_S", "SOURCE_LENGTH", "T5_SMALL", "checkpoint", "cpu_name",
           "current_t5ort_export", "input_ids", "machine", "markdown_table", "median_ms", "ort_session_options",
           "other_cpu_meter", "own_cpu_seconds", "proc_status_mb", "say"]


def say(message: str) -> None:
    """Progress goes to stderr; stdout holds only the results."""
    print(message, file=sys.stderr, flush=True)


def checkpoint(workdir: Path, shape: dict = T5_SMALL, name: str = "t5-small") -> Path:
    """The seeded random checkpoint of ``shape`` (a ``t5ort.bench.shapes`` dict, called ``name`` in
    messages) in ``workdir/checkpoint``, built and saved on first use."""
    path = workdir / "checkpoint"
    if not (path / "config.json").is_file():
        say(f"building the seeded {name}-shaped checkpoint in {path} "
            f"({parameter_count(shape) / 1e6:.0f}M parameters, {parameter_count(shape) * 4 / 1e9:.1f} GB)")
    return build_checkpoint(path, shape=shape)


def current_t5ort_export(directory: Path) -> bool:
    """True when ``directory`` holds a t5ort export in the manifest format this t5ort reads."""
    from t5ort.runtime.manifest import FORMAT_VERSION, MANIFEST_NAME

    path = directory / MANIFEST_NAME
    return path.is_file() and json.loads(path.read_text()).get("format_version") == FORMAT_VERSION


def ort_session_options(threads: int):
    """onnxruntime session options exactly as t5ort's runtime sets them, for the peers' and bare sessions."""
    from t5ort.runtime.graphs import session_options

    return session_options(threads)


def input_ids(batch: int = 1) -> np.ndarray:
    """The benchmark input: ``batch`` rows of SOURCE_LENGTH seeded random token ids in [3, 32000), int64 [batch, L]."""
    return np.random.default_rng(0).integers(3, 32000, size=(batch, SOURCE_LENGTH), dtype=np.int64)


def median_ms(seconds: list[float]) -> float:
    return 1000 * statistics.median(seconds)


def other_cpu_meter() -> Callable[[], float]:
    """Returns a function that gives the CPU seconds other processes used since this call.

    Anything well above zero means the timings shared the CPUs with other work.
    """
    start = _busy_minus_own()
    return lambda: _busy_minus_own() - start
