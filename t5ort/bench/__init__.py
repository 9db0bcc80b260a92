"""``t5ort bench``: time your exports, and optionally the same checkpoint in PyTorch, Optimum and CTranslate2.

    import t5ort.bench
    result = t5ort.bench.run(["out/fp32", "out/int8"], checkpoint="ckpt", batch_sizes=(1, 8), repeats=3)
    print(t5ort.bench.format_table(result))
    t5ort.bench.write_json(result, "bench.json"); t5ort.bench.plot(result, "bench.png")

Every system runs in its own worker process; repetitions are interleaved; the result
holds every raw timing with its medians and spreads, tokens/s, time to first token,
peak RSS, artifact size and whether every system's tokens agree. Nothing is printed:
``progress`` receives the stage messages. The peers' packages (torch, optimum,
ctranslate2) are imported only inside their own workers, which may run under another
environment's Python: ``peer_python={"optimum": ".venv-optimum/bin/python"}``.
"""

from __future__ import annotations

from .harness import DEFAULT_PEERS, run
from .report import format_table, plot, write_json
from .results import BenchResult, Measurement, SystemInfo, Workload
from .systems import PEERS

__all__ = ["BenchResult", "DEFAULT_PEERS", "Measurement", "PEERS", "SystemInfo", "Workload", "format_table", "plot",
           "run", "write_json"]
