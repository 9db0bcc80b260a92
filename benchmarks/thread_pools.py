"""Which thread-pool policy for the encoder and decoder sessions: measured against a bare decoder loop.

    python benchmarks/thread_pools.py [--repeats 7] [--threads 2] [--policies ...] [--busy-cores N] [--json FILE]

Every policy runs in its own worker process (onnxruntime's global thread pools are
process-wide) on the t5-small-shaped exports that compare.py uses (fp32 and int8).
Each worker times ``rt.generate(..., output_logits=True)`` with min = max = 32 new
tokens at greedy batch 1, ragged batch 16 and beam 4. The ``bare`` workers load the
same export with each of ``--bare-policies`` and time the decoder session alone: one
encode *before* the clock starts, then 32 ``graphs.step`` calls that feed each
step's cache into the next (a fixed token; no search, no logits kept), so no
encoder run ever precedes a timed step. Repeats are interleaved (each repeat runs
every worker once, rotating the order, 0.2 s pause before each run); medians.

Policies: what each session's intra-op threads do when they run out of work (``session.*`` are
onnxruntime session config entries; every policy but t5ort's own sets them on both sessions
explicitly, over ``graphs.common_session_options``):

- ``t5ort``, ``t5ort-nospin``: the runtime's own options, ``load(spin=True)`` (the default: ``stop`` on
  the encoder, ``spin-1000us`` on the decoder) and ``load(spin=False)`` (``nospin``);
- ``spin``: onnxruntime's default: spin (for ~20 ms per thread after a run, 40 ms of CPU at 2 threads);
- ``nospin``: ``session.intra_op.allow_spinning=0``: block at once, also between the ops of one run;
- ``stop``: spin, with ``session.force_spinning_stop=1``: spin between the ops of a run, block once it ends;
- ``spin-Nus``: spin for at most N microseconds (``session.intra_op.spin_duration_us``), then block;
- ``enc-X-dec-Y``: policy X on the encoder's session, Y on the decoder's;
- ``dec-1``: one intra-op thread for the decoder (no pool to wake, no parallelism either);
- ``global``: onnxruntime's global thread pools (``set_global_thread_pool_sizes`` before the first
  session, ``use_per_session_threads=False``), spinning: one pool for both sessions.

Before this script set ``allow_spinning`` explicitly, its ``spin`` and ``enc-nospin`` policies inherited
t5ort's own ``allow_spinning=0`` and measured blocking under other names (round 5's tables).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _model import (DEFAULT_WORKDIR, NEW_TOKENS, input_ids, markdown_table, other_cpu_meter,  # noqa: E402
                    own_cpu_seconds, say)

POLICIES = ["t5ort", "t5ort-nospin", "spin", "nospin", "stop", "spin-500us", "spin-1000us", "spin-2000us",
            "enc-nospin-dec-spin", "enc-stop-dec-spin-1000us", "enc-stop-dec-spin-2000us", "enc-nospin-dec-1", "global"]
AFTER_S = 0.2  # each worker's CPU time is read again this long after its call
BUSY_LOOP = "import time\nend = time.monotonic() + 3600\nwhile time.monotonic() < end: pass"  # stops by itself
WORKLOADS = {"greedy-1": (1, 1, False), "ragged-16": (16, 1, True), "beam4-1": (1, 4, False)}
PRECISIONS = {"fp32": "t5ort", "int8": "t5ort-int8"}


def inputs(name: str) -> tuple[np.ndarray, np.ndarray]:
    batch, _beams, ragged = WORKLOADS[name]
    if not ragged:
        ids = input_ids(batch)
        return ids, np.ones_like(ids)
    rng = np.random.default_rng(1)
    lengths = rng.integers(8, 65, size=batch)
    ids = np.zeros((batch, int(lengths.max())), dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n] = rng.integers(3, 32000, size=n)
        mask[row, :n] = 1
    return ids, mask


# ---- worker ------------------------------------------------------------------------------------------


def _entries(rule: str) -> dict[str, str]:
    """The session config entries of one graph's rule (``spin``, ``nospin``, ``stop``, ``spin-Nus``, ``1``)."""
    if rule in ("nospin", "1"):
        return {"session.intra_op.allow_spinning": "0", "session.force_spinning_stop": "0"}
    entries = {"session.intra_op.allow_spinning": "1", "session.force_spinning_stop": "1" if rule == "stop" else "0"}
    if rule.startswith("spin-"):
        entries["session.intra_op.spin_duration_us"] = rule.removeprefix("spin-").removesuffix("us")
    return entries


def _rules(policy: str) -> tuple[str, str]:
    """(the encoder's rule, the decoder's rule) of a policy."""
    if policy == "global":
        return "spin", "spin"
    if policy.startswith("enc-"):
        encoder, decoder = policy.removeprefix("enc-").split("-dec-")
        return encoder, decoder
    return policy, policy


def _options_for(policy: str):
    """A replacement for graphs.session_options applying ``policy`` to one graph ("encoder" or "decoder")."""
    from t5ort.runtime import graphs

    def options(threads, graph: str):
        if policy.startswith("t5ort"):
            return graphs.session_options(threads, graph, spin=policy == "t5ort")
        rule = _rules(policy)[graph == "decoder"]
        so = graphs.common_session_options(1 if rule == "1" else threads)
        for key, value in _entries(rule).items():
            so.add_session_config_entry(key, value)
        if policy == "global":
            so.use_per_session_threads = False
        return so

    return options


def _load(directory: Path, policy: str, threads: int):
    import onnxruntime as ort

    from t5ort.runtime import graphs, load

    if policy == "global":
        ort.set_global_thread_pool_sizes(threads, 1)
    make = _options_for(policy)
    original = graphs.T5Graphs._open

    def _open(self, d, spec, options, providers):
        graph = "encoder" if spec is self.manifest.encoder else "decoder"
        return original(self, d, spec, make(threads, graph), providers)

    graphs.T5Graphs._open = _open
    return load(directory, threads=threads)


def worker(directory: str, policy: str, threads: int, bare: bool) -> None:
    rt = _load(Path(directory), policy, threads)
    data = {name: inputs(name) for name in WORKLOADS}
    print(f"ready {own_cpu_seconds()}", flush=True)
    for line in sys.stdin:
        name = line.strip()
        ids, mask = data[name]
        _batch, beams, _ragged = WORKLOADS[name]
        if bare:
            g = rt.graphs
            enc = g.expand(g.encode(ids, mask), beams)
            state = g.start(enc)
            tokens = np.zeros(enc.batch_size, dtype=np.int64)
            t0 = time.perf_counter()
            for _ in range(NEW_TOKENS):
                _logits, state = g.step(tokens, state)
                tokens = np.full(enc.batch_size, 5, dtype=np.int64)
            seconds = time.perf_counter() - t0
        else:
            t0 = time.perf_counter()
            rt.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                        num_beams=beams, output_logits=True)
            seconds = time.perf_counter() - t0
        done = own_cpu_seconds()
        time.sleep(AFTER_S)  # what the pools burn once the call is over (spinning threads)
        now = own_cpu_seconds()
        print(json.dumps({"ms_per_step": 1000 * seconds / NEW_TOKENS, "cpu_s": now, "after_ms": 1000 * (now - done)}),
              flush=True)


# ---- parent ------------------------------------------------------------------------------------------


class Worker:
    def __init__(self, key, directory: Path, policy: str, threads: int, bare: bool):
        self.key = key
        self.after_ms: list[float] = []  # CPU ms in the AFTER_S after each call
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", str(directory), policy, str(threads), "1" if bare else "0"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        # this worker's CPU time so far (the parent's meter counts unreaped children as others)
        word, cpu_s = self.proc.stdout.readline().split()
        assert word == "ready", key
        self.cpu_s = float(cpu_s)

    def run(self, workload: str) -> float:
        self.proc.stdin.write(workload + "\n")
        self.proc.stdin.flush()
        reply = json.loads(self.proc.stdout.readline())
        self.cpu_s = reply["cpu_s"]
        self.after_ms.append(reply["after_ms"])
        return reply["ms_per_step"]

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--policies", nargs="+", choices=POLICIES, default=POLICIES)
    p.add_argument("--bare-policies", nargs="+", choices=POLICIES, default=["spin", "nospin", "stop"],
                   help="the policies the bare decoder loop's workers load with")
    p.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    p.add_argument("--precisions", nargs="+", choices=list(PRECISIONS), default=list(PRECISIONS))
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    p.add_argument("--json", type=Path)
    p.add_argument("--busy-cores", type=int, default=0,
                   help="run this many busy-loop processes throughout (contention: other work on the cores)")
    args = p.parse_args()
    busy = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(args.busy_cores)]
    try:
        measure(args)
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()


def measure(args) -> None:
    workers = []
    for precision in args.precisions:
        d = args.workdir / PRECISIONS[precision]
        for policy in args.bare_policies:
            workers.append(Worker((precision, f"bare {policy}"), d, policy, args.threads, bare=True))
        for policy in args.policies:
            workers.append(Worker((precision, policy), d, policy, args.threads, bare=False))
    say(f"{len(workers)} workers loaded")

    def workers_cpu() -> float:
        return sum(w.cpu_s for w in workers)

    times: dict = {}
    for workload in args.workloads:
        other, own = other_cpu_meter(), workers_cpu()
        for w in workers:
            w.run(workload)  # warm-up
        for r in range(args.repeats + 1):
            order = workers[r % len(workers):] + workers[:r % len(workers)]
            for w in order:
                time.sleep(0.2)
                times.setdefault((workload, *w.key), []).append(w.run(workload))
        times[(workload, "other_cpu_s")] = other() - (workers_cpu() - own)
        say(f"{workload}: done; other processes took {times[(workload, 'other_cpu_s')]:.1f} CPU s")
    for w in workers:
        w.close()
    rows = []
    header = ["workload", "precision"] + [f"bare loop, {b}" for b in args.bare_policies] + args.policies
    for workload in args.workloads:
        for precision in args.precisions:
            bares = [statistics.median(times[(workload, precision, f"bare {b}")]) for b in args.bare_policies]
            bare = min(bares)
            row = [workload, precision] + [f"{b:.2f}" for b in bares]
            for policy in args.policies:
                t = times[(workload, precision, policy)]
                m = statistics.median(t)
                row.append(f"{m:.2f} ({m / bare:.2f}x) [{min(t):.2f}-{max(t):.2f}]")
            rows.append(row)
    print(f"ms/step, medians of {args.repeats + 1} interleaved runs (x: / the faster bare decoder loop) [min-max]; "
          f"{args.threads} threads")
    print(markdown_table(header, rows))
    after = {w.key: statistics.median(w.after_ms) for w in workers}
    print(f"CPU ms each worker spent in the {AFTER_S:.1f} s after a call (medians): "
          + "; ".join(f"{' '.join(k)} {v:.0f}" for k, v in after.items()))
    for workload in args.workloads:
        print(f"{workload}: other processes took {times[(workload, 'other_cpu_s')]:.1f} CPU s")
    if args.json:
        args.json.write_text(json.dumps({"|".join(k): v for k, v in times.items()}, indent=1))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1")
    else:
        main()
