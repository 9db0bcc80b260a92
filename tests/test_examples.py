"""The scripts in examples/ run as a user runs them, and print what they should.

The client starts nothing itself: the test starts a real ``t5ort serve`` (the bundled model) on a free
loopback port, as tests/test_serve.py does, and runs the script against it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def run(script: str, *args: str, timeout: float = 300) -> str:
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_client_against_a_real_server(tmp_path):
    pytest.importorskip("huggingface_hub")
    pytest.importorskip("openai")
    from test_serve import Server

    server = Server(tmp_path / "serve.log")
    try:
        out = run("client.py", "--url", server.url)
    finally:
        assert server.stop() == 0, server.output()
    lines = out.splitlines()
    assert lines[0] == "einundsiebzigtausendneun eos_token"
    assert "stream: ['', 'neunzehn', '</s>']" in lines
    assert "vierzigtausendneun stop 5" in lines  # the misspelt "sevnty": greedy through OpenAI's client
    assert lines[-2:] == ["neunzehn: 0.00", "neun: -31.83"]


def test_custom_decoder():
    out = run("custom_decoder.py")
    assert out.splitlines() == [
        "'three hundred forty-two' -> 'dreihundertzweiundvierzig' (generate: 'dreihundertzweiundvierzig')",
        "'three hundrd forty-two' -> 'dreihundertzweiundachtzig' (generate: 'dreihundertzweiundachtzig')",
        "  step 3: zweiundachtzig -0.85 vs zweiundsechzig -2.12 -> best",
        "'one million' -> 'eins' (generate: 'eins')",
        "  step 1: eins -0.67 vs ein -1.04 -> best",
    ]


def test_ray_data_job():
    pytest.importorskip("ray")
    out = run("ray_job.py", "--rows", "20")
    lines = out.splitlines()
    assert lines[0] == "21 rows translated by 2 actors"
    assert lines[1] == "  'eight hundred fifty thousand six hundred twenty-four' -> " \
                       "'achthundertfünfzigtausendsechshundertvierundzwanzig'"
    assert lines[-1] == "unsure: 'three hundrd forty-two' -> 'dreihundertzweiundachtzig', p = 0.56 at its least sure step"
