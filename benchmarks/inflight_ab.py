"""A/B: generate/score/stream before and after the self-attention mask (manifest format 3), side by side.

    python benchmarks/inflight_ab.py --old-code DIR --old-export DIR [--rounds 5] [--reps 3] [--threads 2]

``--old-code``: a git worktree of the commit before in-flight batching (format 2 runtime);
``--old-export``: the seeded t5-small-shaped checkpoint (``_model.py``) exported by that code. The
new side is this checkout with its own export of the same checkpoint (made if missing). Each side
runs in its own worker process (its own code on ``sys.path``, its runtime loaded once); the driver
alternates the sides in every round (A B, then B A) on the same inputs, so both see the same
machine. Prints the median ms per call of each workload and the ratio new/old, and the CPU seconds
other processes took meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _model import (DEFAULT_WORKDIR, NEW_TOKENS, checkpoint, current_t5ort_export, input_ids,  # noqa: E402
                    markdown_table, other_cpu_meter, say)

WORKLOADS = ("greedy batch 1", "ragged batch 16", "beam 4", "stream batch 1", "score batch 16")


def _ragged(batch: int) -> tuple[np.ndarray, np.ndarray]:
    ids = input_ids(batch)
    lengths = np.random.default_rng(1).integers(8, ids.shape[1] + 1, size=batch)
    mask = (np.arange(ids.shape[1])[None, :] < lengths[:, None]).astype(np.int64)  # [batch, L], right-padded
    return np.where(mask == 1, ids, 0), mask


def run_workload(rt, name: str) -> None:
    forced = dict(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)
    if name == "greedy batch 1":
        rt.generate(input_ids=input_ids(1), **forced)
    elif name == "ragged batch 16":
        ids, mask = _ragged(16)
        rt.generate(input_ids=ids, attention_mask=mask, **forced)
    elif name == "beam 4":
        rt.generate(input_ids=input_ids(1), num_beams=4, **forced)
    elif name == "stream batch 1":
        for _ in rt.stream(input_ids=input_ids(1), **forced):
            pass
    elif name == "score batch 16":
        ids, mask = _ragged(16)
        targets = np.random.default_rng(2).integers(3, 32000, size=(16, NEW_TOKENS))
        rt.score(input_ids=ids, attention_mask=mask, target_ids=targets)
    else:
        raise ValueError(name)


def worker(code: str, export: str, threads: int) -> None:
    """Serve the driver: one line "WORKLOAD<TAB>REPS" in, one JSON line of seconds per call out."""
    sys.path.insert(0, code)
    import t5ort

    if not Path(t5ort.__file__).resolve().is_relative_to(Path(code).resolve()):
        raise SystemExit(f"worker imported t5ort from {t5ort.__file__}, not from {code}")
    rt = t5ort.load(export, threads=threads)
    for name in WORKLOADS:  # warm-up
        run_workload(rt, name)
    print(json.dumps({"ready": t5ort.__file__, "format": rt.manifest.format_version}), flush=True)
    for line in sys.stdin:
        name, reps = line.rstrip("\n").split("\t")
        seconds = []
        for _ in range(int(reps)):
            time.sleep(0.2)  # idle threads out of the next timing (as _model.PAUSE_S)
            start = time.perf_counter()
            run_workload(rt, name)
            seconds.append(time.perf_counter() - start)
        print(json.dumps(seconds), flush=True)


class Side:
    def __init__(self, label: str, code: Path, export: Path, threads: int):
        self.label = label
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--worker", str(code), str(export), "--threads", str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=str(code),
            env={**os.environ, "PYTHONPATH": str(code)})  # its own t5ort, whatever the benchmarks import
        self.ready = json.loads(self.process.stdout.readline())
        say(f"{label}: t5ort from {self.ready['ready']}, manifest format {self.ready['format']}")

    def run(self, name: str, reps: int) -> list[float]:
        self.process.stdin.write(f"{name}\t{reps}\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old-code", type=Path)
    parser.add_argument("--old-export", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--worker", nargs=2, metavar=("CODE", "EXPORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker, args.threads)
        return 0
    if args.old_code is None or args.old_export is None:
        parser.error("--old-code and --old-export are required")
    new_export = args.workdir / "t5ort"
    if not current_t5ort_export(new_export):
        import t5ort

        say(f"exporting {checkpoint(args.workdir)} to {new_export}")
        t5ort.export(checkpoint(args.workdir), new_export, force=True)
    others = other_cpu_meter()
    sides = [Side("old (format 2)", args.old_code, args.old_export, args.threads),
             Side("new (format 3)", HERE.parent, new_export, args.threads)]
    times: dict[tuple[str, str], list[float]] = {}
    ratios: dict[str, list[float]] = {name: [] for name in WORKLOADS}
    try:
        for r in range(args.rounds):
            order = sides if r % 2 == 0 else sides[::-1]
            for name in WORKLOADS:
                medians = {}
                for side in order:
                    seconds = side.run(name, args.reps)
                    times.setdefault((side.label, name), []).extend(seconds)
                    medians[side.label] = float(np.median(seconds))
                ratios[name].append(medians[sides[1].label] / medians[sides[0].label])
            say(f"round {r + 1}/{args.rounds} done")
    finally:
        for side in sides:
            side.close()
    other = others()
    rows = []
    for name in WORKLOADS:
        old, new = (1000 * float(np.median(times[(s.label, name)])) for s in sides)
        per_round = ratios[name]
        rows.append([name, f"{old:.1f}", f"{new:.1f}", f"{new / old:.3f}",
                     f"{min(per_round):.3f}-{max(per_round):.3f}"])
    print(f"{NEW_TOKENS} forced new tokens, {args.threads} threads, {args.rounds} rounds x {args.reps} calls per side "
          f"(sides alternated each round); other processes used {other:.1f} CPU s during the run\n")
    print(markdown_table(["workload", "old ms/call", "new ms/call", "new/old", "new/old per round"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
