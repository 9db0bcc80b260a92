"""The sessions' thread pools: idle threads block instead of spinning (graphs.session_options)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import t5ort
from t5ort.runtime import graphs

BUNDLED = Path(t5ort.__file__).parent / "assets" / "numbers" / "onnx"
TEXTS = ["three hundred and twelve", "seven"]


def _idle_cpu_ms(rt, gap_s: float = 0.2) -> float:
    """This process's CPU time (ms) during a ``gap_s`` sleep right after a generate call."""
    rt.generate(TEXTS, max_new_tokens=8)
    start = time.process_time()
    time.sleep(gap_s)
    return 1000 * (time.process_time() - start)


def test_both_sessions_block_when_idle():
    rt = t5ort.load(BUNDLED, threads=2)
    for session in (rt.graphs.encoder_session, rt.graphs.decoder_session):
        assert session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_spin_lets_only_the_decoder_sessions_spin(sp_export):
    """load(spin=True): the decoder and the in-flight step graph spin between steps, the encoder blocks;
    the results are the same."""
    entry = "session.intra_op.allow_spinning"
    spinning, blocking = t5ort.load(sp_export, threads=2, spin=True), t5ort.load(sp_export, threads=2)
    g = spinning.graphs
    assert [s.get_session_options().get_session_config_entry(entry)
            for s in (g.encoder_session, g.decoder_session, g.step_session)] == ["0", "1", "1"]
    assert blocking.graphs.step_session.get_session_options().get_session_config_entry(entry) == "0"
    ids = spinning.encode_texts(["one two three"])[0]
    a = spinning.generate(input_ids=ids, max_new_tokens=6, output_logits=True)
    b = blocking.generate(input_ids=ids, max_new_tokens=6, output_logits=True)
    assert (a.sequences == b.sequences).all() and abs(a.logits - b.logits).max() < 1e-5


def test_an_idle_runtime_costs_no_cpu(monkeypatch):
    """With spinning allowed (onnxruntime's default), the pools keep a core busy after the call; with
    t5ort's options they cost (almost) nothing."""
    rt = t5ort.load(BUNDLED, threads=2)
    quiet = min(_idle_cpu_ms(rt) for _ in range(3))
    assert quiet < 10, f"{quiet:.1f} ms of CPU in 200 ms idle"

    base = graphs.session_options

    def spinning(threads):
        so = base(threads)
        so.add_session_config_entry("session.intra_op.allow_spinning", "1")
        return so

    monkeypatch.setattr(graphs, "session_options", spinning)
    spinning_rt = t5ort.load(BUNDLED, threads=2)
    busy = max(_idle_cpu_ms(spinning_rt) for _ in range(3))
    assert busy > 3 * max(quiet, 1.0), (busy, quiet)  # the measurement can see spinning at all


@pytest.mark.parametrize("runtimes", [4])
def test_many_runtimes_in_one_process_stay_idle(runtimes):
    """Several loaded runtimes (a server's workers, tests) cost no CPU while none of them runs."""
    loaded = [t5ort.load(BUNDLED, threads=2) for _ in range(runtimes)]
    for rt in loaded:
        rt.generate(TEXTS, max_new_tokens=4)
    start = time.process_time()
    time.sleep(0.2)
    assert 1000 * (time.process_time() - start) < 10
