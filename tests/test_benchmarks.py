"""Every maintained script in benchmarks/ runs: a ``--quick`` smoke run each (seconds, not a measurement).

Each run is bounded well under a minute on 2 cores; what a script prints is checked only for its shape.
Scripts without a ``--quick`` mode yet are listed in NO_QUICK with the reason, so that a new script cannot
go untested silently.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"

QUICK = {
    "parity_matrix.py": ["--quick"],
    "speculative.py": ["--quick", "--workdir", "{workdir}"],
    "serve_soak.py": ["--quick"],
    "gpu_check.py": ["--provider", "cpu", "--quick", "--workdir", "{workdir}"],
    "length_flatness.py": ["--quick", "--workdir", "{workdir}"],
    "decoder_api.py": ["--quick", "--workdir", "{workdir}"],
    "serve_load.py": ["--quick", "--workdir", "{workdir}"],
    "inflight_load.py": ["--quick", "--workdir", "{workdir}"],
    "corpus.py": ["--quick", "--workdir", "{workdir}"],
    "serve_encoder_cache.py": ["--quick", "--workdir", "{workdir}"],
    "attention_kernels.py": ["--quick"],
    "loop_overhead.py": ["--quick"],
}
# Scripts kept but not yet run here, and why (see the report of the docs change, 2026-12-05).
NO_QUICK = {
    "_compare_systems.py": "a helper module of compare.py, not a script",
    "_model.py": "a helper module of the scripts, not a script",
    "compare.py": "its --quick run is tests/test_bench.py's (--shape small --quick --peers ctranslate2, then "
                  "--from-json)",
    "optimum_server.py": "the Optimum baseline server of serve_load.py; needs optimum-onnx",
}


def test_every_script_is_run_or_listed():
    scripts = {p.name for p in BENCHMARKS.iterdir() if p.suffix == ".py"}
    assert scripts == set(QUICK) | set(NO_QUICK)


@pytest.mark.parametrize("script", sorted(QUICK))
def test_quick_run(script, tmp_path):
    args = [a.format(workdir=tmp_path) for a in QUICK[script]]
    proc = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0, f"{script} {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "|" in proc.stdout, f"{script} printed no table:\n{proc.stdout[-2000:]}"
