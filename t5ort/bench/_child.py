"""``python -m t5ort.bench._child worker KIND DIR THREADS`` / ``prepare KIND CHECKPOINT WORK_DIR`` /
``floor STEP_SHAPE_JSON WORK_DIR``: the entry
point of t5ort.bench's worker and preparation processes (a module of its own, which the package does not
import, so that running it as ``__main__`` does not load it twice)."""

import sys

from t5ort.bench.systems import prepare, worker

if __name__ == "__main__":
    if sys.argv[1] == "worker":
        worker(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif sys.argv[1] == "prepare":
        prepare(sys.argv[2], sys.argv[3], sys.argv[4])
    elif sys.argv[1] == "floor":
        import json

        from t5ort.bench import floor

        floor.build(floor.StepShape(**json.loads(sys.argv[2])), sys.argv[3])
    else:
        raise SystemExit(f"unknown command {sys.argv[1]!r}")
