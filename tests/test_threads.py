"""The sessions' thread pools: threads spin within runs and sleep soon after one (graphs.session_options)."""

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


def _config(session, key: str) -> str | None:
    """A session's config entry (or a SessionOptions' own), None where it was never set."""
    options = session.get_session_options() if hasattr(session, "get_session_options") else session
    try:
        return options.get_session_config_entry(key)
    except Exception:  # onnxruntime raises when the entry was never set
        return None


def test_encoder_threads_sleep_after_a_run_and_decoder_threads_spin_for_a_bounded_time(sp_export):
    """The default: every session's threads spin within a run; the encoder's sleep once it ends, the
    decoder's after at most SPIN_US."""
    g = t5ort.load(sp_export, threads=2).graphs
    assert [_config(s, "session.intra_op.allow_spinning")
            for s in (g.encoder_session, g.decoder_session)] == ["1", "1"]
    assert _config(g.encoder_session, "session.force_spinning_stop") == "1"
    assert _config(g.encoder_session, "session.intra_op.spin_duration_us") is None
    assert _config(g.decoder_session, "session.intra_op.spin_duration_us") == str(graphs.SPIN_US)
    assert _config(g.decoder_session, "session.force_spinning_stop") is None


def test_spin_false_never_spins_and_gives_the_same_results(sp_export):
    """load(spin=False): no session's threads spin; the tokens and logits are those of the default."""
    spinning, blocking = t5ort.load(sp_export, threads=2), t5ort.load(sp_export, threads=2, spin=False)
    g = blocking.graphs
    assert [_config(s, "session.intra_op.allow_spinning")
            for s in (g.encoder_session, g.decoder_session)] == ["0", "0"]
    ids = spinning.encode_texts(["one two three"])[0]
    a = spinning.generate(input_ids=ids, max_new_tokens=6, output_logits=True)
    b = blocking.generate(input_ids=ids, max_new_tokens=6, output_logits=True)
    assert (a.sequences == b.sequences).all() and abs(a.logits - b.logits).max() < 1e-5


def test_session_options_refuses_an_unknown_role():
    with pytest.raises(ValueError, match="role='cross'"):
        graphs.session_options(2, "cross")


def test_an_idle_runtime_costs_no_cpu(monkeypatch):
    """With onnxruntime's default (spinning, unbounded), the pools keep a core busy after the call; with
    t5ort's options (spinning for at most 1 ms) they cost (almost) nothing."""
    rt = t5ort.load(BUNDLED, threads=2)
    quiet = min(_idle_cpu_ms(rt) for _ in range(3))
    assert quiet < 10, f"{quiet:.1f} ms of CPU in 200 ms idle"

    def spinning(threads, role="decoder", spin=True):
        so = graphs.common_session_options(threads)
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
