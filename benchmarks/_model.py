"""Shared by the benchmarks: the seeded t5-small-shaped checkpoint, the benchmark input and the machine.

The checkpoint is built from a config with ``torch.manual_seed(0)`` (no hub, no
tokenizer) and cached under the work directory; delete that directory to rebuild it.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Callable

import numpy as np

DEFAULT_WORKDIR = Path(__file__).resolve().parent / ".work"
T5_SMALL = dict(
    vocab_size=32128,
    d_model=512,
    d_kv=64,
    num_heads=8,
    d_ff=2048,
    num_layers=6,
    num_decoder_layers=6,
    feed_forward_proj="relu",
    tie_word_embeddings=True,
    decoder_start_token_id=0,
    pad_token_id=0,
    eos_token_id=1,
)
SOURCE_LENGTH = 32
NEW_TOKENS = 32
# Idle threads keep spinning for a while after a run (ONNX Runtime's workers, OpenMP's); on a
# small machine they slow down the next run of another session or library. Pausing before each
# timed run keeps one run's threads out of the next run's timing.
PAUSE_S = 0.2


def say(message: str) -> None:
    """Progress goes to stderr; stdout holds only the results."""
    print(message, file=sys.stderr, flush=True)


def checkpoint(workdir: Path) -> Path:
    """The seeded random checkpoint in ``workdir/checkpoint``, built and saved on first use."""
    path = workdir / "checkpoint"
    if (path / "config.json").is_file():
        return path
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    say(f"building the seeded t5-small-shaped checkpoint in {path}")
    torch.manual_seed(0)
    T5ForConditionalGeneration(T5Config(**T5_SMALL)).eval().save_pretrained(path)
    return path


def current_t5ort_export(directory: Path) -> bool:
    """True when ``directory`` holds a t5ort export in the manifest format this t5ort reads."""
    import json

    from t5ort.runtime.manifest import FORMAT_VERSION, MANIFEST_NAME

    path = directory / MANIFEST_NAME
    return path.is_file() and json.loads(path.read_text()).get("format_version") == FORMAT_VERSION


def proc_status_mb(field: str) -> float:
    """A field of /proc/self/status (VmRSS, VmHWM) in MB (2**20 bytes)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def ort_session_options(threads: int):
    """onnxruntime session options exactly as t5ort's runtime sets them, for the peers' and bare sessions."""
    from t5ort.runtime.graphs import session_options

    return session_options(threads)


def input_ids(batch: int = 1) -> np.ndarray:
    """The benchmark input: ``batch`` rows of SOURCE_LENGTH seeded random token ids in [3, 32000), int64 [batch, L]."""
    return np.random.default_rng(0).integers(3, 32000, size=(batch, SOURCE_LENGTH), dtype=np.int64)


def median_ms(seconds: list[float]) -> float:
    return 1000 * statistics.median(seconds)


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine(threads: int, **versions: str) -> dict[str, str]:
    """What the numbers were measured on; ``versions``: further packages and their versions."""
    import onnxruntime

    return {
        "cpu": cpu_name(),
        "logical cpus": str(os.cpu_count()),
        "threads used": str(threads),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        **versions,
    }


def _busy_minus_own() -> float:
    """CPU seconds the whole machine was busy since boot (/proc/stat) minus this process's and its reaped children's."""
    user, nice, system, _idle, _iowait, irq, softirq = map(int, Path("/proc/stat").read_text().split()[1:8])
    t = os.times()
    busy = (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")
    return busy - (t.user + t.system + t.children_user + t.children_system)


def other_cpu_meter() -> Callable[[], float]:
    """Returns a function that gives the CPU seconds other processes used since this call.

    Anything well above zero means the timings shared the CPUs with other work.
    """
    start = _busy_minus_own()
    return lambda: _busy_minus_own() - start


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
