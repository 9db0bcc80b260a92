"""Load test of in-flight batching: ``t5ort serve --batching inflight|dynamic|none`` vs the per-request Optimum server.

    python benchmarks/inflight_load.py [--concurrency 1 4 16 64] [--rates 2 4 8 16] [--duration 20] [--threads 2]
        [--mixes loadtest uniform]
    python benchmarks/inflight_load.py --policy [--rates ...]   # admission policies, scheduler in-process

The seeded t5-small-shaped checkpoint of ``_model.py`` served as ``benchmarks/serve_load.py`` serves it
(its export, word-level tokenizer, client code and the Optimum server are reused from there), on the
same requests for every system, one system after the other in one run:

- mixed output lengths, forced by suppressing EOS (``suppress_tokens``; every request has the same generation
  options, so that the dynamic batcher may batch any of them together, as with real traffic whose rows end at
  EOS; forcing by ``min_new_tokens``, a per-request option, kept it to requests of equal length), one
  ``--mixes`` after the other: ``loadtest``
  (the default), sources of 8-32 tokens and 4, 8, 16, 32, 64 or 128 new tokens; ``uniform``, sources of
  8-60 tokens and 4-96 new tokens drawn uniformly (a flatter mix). Each mix's ceiling,
  the most in-flight batching can gain over dynamic batching at concurrency c with the step cost equal,
  E[longest of c] / E[length], is printed beside the measured ratio;
- closed loop at each ``--concurrency`` (each client sends its next request when answered);
- open loop: Poisson arrivals at each ``--rates`` (requests/s) for ``--duration`` s, whatever the answers;
- t5ort serve streams (``/generate_stream``, time to first token = first event); the Optimum server
  cannot stream, so its TTFT is its whole latency.

Reported per cell: requests/s, tokens/s, TTFT p50/p99, latency p50/p99, the CPU seconds other processes
took, and per system the server's peak RSS (VmHWM) after its cells. Idle TTFT is the concurrency-1
TTFT p50 of the same system. An open-loop rate counts as sustained when every request was answered
and the latency p50 stayed within 2x the concurrency-1 p50 (no queue building up); the rate sweep of
a system stops at its first unsustained rate (its saturation point lies below it).

``--policy`` drives the in-flight scheduler in-process (no HTTP) with Poisson arrivals and compares
admission policies: eager (admit whatever fits at every step) and TGI's (admit only once waiting >=
1.2 x running or the oldest waited 20 steps).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import serve_load as sl  # noqa: E402
from _model import DEFAULT_WORKDIR, markdown_table, other_cpu_meter, say  # noqa: E402

from t5ort.bench.server import ServerProcess, free_port, serve_command  # noqa: E402

LENGTHS = (4, 8, 16, 32, 64, 128)
SYSTEMS = ("inflight", "dynamic", "none", "optimum server")


MIXES = ("loadtest", "uniform")


def new_tokens(rng: np.random.Generator, mix: str, size=None):
    """Forced output lengths of ``mix``."""
    return rng.choice(LENGTHS, size=size) if mix == "loadtest" else rng.integers(4, 97, size=size)


def make_requests(n: int, seed: int = 0, mix: str = "loadtest") -> list[sl.Request]:
    rng = np.random.default_rng(seed)
    longest = 33 if mix == "loadtest" else 61
    out = []
    for _ in range(n):
        ids = rng.integers(3, 32000, size=int(rng.integers(8, longest)))
        out.append(sl.Request(" ".join(f"t{i}" for i in ids), int(new_tokens(rng, mix)), ban_eos=True))
    return out


def ceiling(mix: str, concurrency: int, batches: int = 20000) -> float:
    """E[longest of ``concurrency``] / E[length] for ``mix``: dynamic batching runs each batch to its longest
    request, in-flight batching keeps every row busy (a simulation of ``batches`` batches)."""
    lengths = new_tokens(np.random.default_rng(0), mix, size=(batches, concurrency)).astype(float)
    return float(lengths.max(axis=1).mean() / lengths.mean())


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _open_loop(url: str, route: str, stream: bool, requests: list[sl.Request], rate: float, duration: float,
                     seed: int = 0):
    """Poisson arrivals at ``rate``/s for ``duration`` s (or until the requests run out); waits for all answers."""
    import httpx

    rng = np.random.default_rng(seed)
    ttft, latency, tokens, errors = [], [], [0], [0]

    async def one(http, r):
        try:
            answer = await sl.send(http, url, route, stream, r)
        except httpx.HTTPError:
            answer = None
        if answer is None:
            errors[0] += 1
            return
        ttft.append(answer[0])
        latency.append(answer[1])
        tokens[0] += answer[2]

    limits = httpx.Limits(max_connections=1024, max_keepalive_connections=256)
    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        tasks, at = [], 0.0
        for r in requests:
            at += float(rng.exponential(1.0 / rate))
            if at > duration:
                break
            await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
            tasks.append(asyncio.create_task(one(http, r)))
        offered = len(tasks)
        await asyncio.gather(*tasks)
    return time.perf_counter() - start, offered, tokens[0], ttft, latency, errors[0]


def _row(system, kind, load, seconds, requests, tokens, ttft, latency, errors, other, offered=None) -> dict:
    ttft_ms, lat_ms = np.array(ttft) * 1000, np.array(latency) * 1000
    pct = (lambda a, q: float(np.percentile(a, q)) if len(a) else float("nan"))  # noqa: E731
    return {"system": system, "mix": None, "kind": kind, "load": load, "requests": requests, "offered": offered,
            "errors": errors, "seconds": seconds, "requests_per_s": requests / seconds, "tokens_per_s": tokens / seconds,
            "ttft_p50_ms": pct(ttft_ms, 50), "ttft_p99_ms": pct(ttft_ms, 99), "p50_ms": pct(lat_ms, 50),
            "p99_ms": pct(lat_ms, 99), "other_cpu_s": other}


def run_system(system: str, args, served: Path, optimum: Path, tokenizer: Path, requests) -> tuple[list[dict], float]:
    port = free_port()
    if system == "optimum server":
        command = [sys.executable, str(HERE / "optimum_server.py"), str(optimum), str(tokenizer), "--port", str(port),
                   "--threads", str(args.threads)]
    else:
        command = serve_command(served, port, "--threads", str(args.threads), "--batching", system,
                                "--max-batch-size", "16", "--max-batch-rows", str(args.max_batch_rows), "--max-queue",
                                "1024", "--max-new-tokens", str(max(LENGTHS)), "--request-timeout", "600",
                                "--log-level", "warning", "--quiet")
    say(f"starting {system}")
    target = ServerProcess(command, port)
    route, stream = ("/generate", False) if system == "optimum server" else ("/generate_stream", True)
    rows = []
    try:
        asyncio.run(sl._http_cell(target.url, route, stream, make_requests(4, seed=1), 2, 60))  # warm-up
        for c in args.concurrency:
            meter, cpu = other_cpu_meter(), sl.proc_cpu(target.process.pid)
            cell = requests[: sl.cell_count(c)]
            seconds, tokens, ttft, latency, errors = asyncio.run(
                sl._http_cell(target.url, route, stream, cell, c, args.duration))
            other = meter() - (sl.proc_cpu(target.process.pid) - cpu)
            rows.append(_row(system, "closed", c, seconds, len(latency), tokens, ttft, latency, errors, other))
            _say(rows[-1])
        idle = next((r for r in rows if r["load"] == 1), None)
        for rate in sorted(args.rates):
            meter, cpu = other_cpu_meter(), sl.proc_cpu(target.process.pid)
            seconds, offered, tokens, ttft, latency, errors = asyncio.run(
                _open_loop(target.url, route, stream, requests, rate, args.duration))
            other = meter() - (sl.proc_cpu(target.process.pid) - cpu)
            rows.append(_row(system, "poisson", rate, seconds, len(latency), tokens, ttft, latency, errors, other,
                             offered))
            _say(rows[-1])
            if idle is not None and not sustained(rows[-1], idle):
                say(f"{system}: saturated at {rate:g}/s; higher rates skipped")
                break
        rss = peak_rss_mb(target.process.pid)
    finally:
        target.stop()
    return rows, rss


def sustained(r: dict, idle: dict) -> bool:
    return r["errors"] == 0 and r["requests"] == r["offered"] and r["p50_ms"] <= 2 * idle["p50_ms"]


def _say(r: dict) -> None:
    errors = f", {r['errors']} errors" if r["errors"] else ""
    load = f"c={r['load']}" if r["kind"] == "closed" else f"{r['load']:g}/s"
    say(f"{r['system']:>15} {load:>7} {r['requests']:4d} req {r['requests_per_s']:6.2f} req/s {r['tokens_per_s']:7.1f} "
        f"tok/s ttft p50 {r['ttft_p50_ms']:7.1f} p99 {r['ttft_p99_ms']:7.1f} ms, latency p50 {r['p50_ms']:7.1f} "
        f"p99 {r['p99_ms']:7.1f} ms (other CPU {r['other_cpu_s']:.1f} s{errors})")


def report(rows: list[dict], rss: dict[str, float], info: dict) -> str:
    def fmt(r):
        load = str(r["load"]) if r["kind"] == "closed" else f"{r['load']:g}/s"
        ttft = f"{r['ttft_p50_ms']:.0f} / {r['ttft_p99_ms']:.0f}" + (" (no stream)" if r["system"] == "optimum server"
                                                                   else "")
        return [r["mix"], r["kind"], load, r["system"], str(r["requests"]), f"{r['requests_per_s']:.2f}",
                f"{r['tokens_per_s']:.0f}", ttft, f"{r['p50_ms']:.0f}", f"{r['p99_ms']:.0f}", f"{r['other_cpu_s']:.1f}"]

    header = ["mix", "loop", "load", "system", "requests", "req/s", "tokens/s", "TTFT p50 / p99 ms", "p50 ms",
              "p99 ms", "other CPU s"]
    order = sorted(rows, key=lambda r: (MIXES.index(r["mix"]), r["kind"], r["load"], SYSTEMS.index(r["system"])))
    lines = [markdown_table(header, [fmt(r) for r in order]), ""]
    lines.append("peak RSS under load (VmHWM of the server process): "
                 + ", ".join(f"{s} {mb:.0f} MB" for s, mb in rss.items()))
    by = {(r["mix"], r["system"], r["kind"], r["load"]): r for r in rows}
    for mix in (m for m in MIXES if any(r["mix"] == m for r in rows)):
        if (mix, "inflight", "closed", 16) in by and (mix, "dynamic", "closed", 16) in by:
            i, d = by[mix, "inflight", "closed", 16], by[mix, "dynamic", "closed", 16]
            ratio = i["tokens_per_s"] / d["tokens_per_s"]
            met = ratio >= 2 and i["p99_ms"] <= d["p99_ms"]
            lines.append(f"- {mix} mix, concurrency 16: in-flight {ratio:.2f}x dynamic's tokens/s (the mix's ceiling "
                         f"{ceiling(mix, 16):.2f}x), p99 {i['p99_ms']:.0f} vs {d['p99_ms']:.0f} ms (target >= 2x at no "
                         f"worse p99): **{'met' if met else 'not met'}**")
        for system in SYSTEMS:
            idle = by.get((mix, system, "closed", 1))
            rates = sorted(r["load"] for r in rows if (r["mix"], r["system"], r["kind"]) == (mix, system, "poisson"))
            if not rates or idle is None:
                continue
            kept = [x for x in rates if sustained(by[mix, system, "poisson", x], idle)]
            above = [x for x in rates if x not in kept]
            sat = (f"sustains {max(kept):g}/s" if kept else "sustains none of the rates") + (
                f", saturated at {min(above):g}/s" if above else " (the highest rate tried)")
            line = f"- {mix} mix, {system}: {sat}"
            if system != "optimum server":
                within = [x for x in kept if by[mix, system, "poisson", x]["ttft_p50_ms"] <= 2 * idle["ttft_p50_ms"]]
                line += (f"; idle TTFT p50 {idle['ttft_p50_ms']:.0f} ms; TTFT p50 within 2x idle at "
                         f"{', '.join(f'{x:g}/s' for x in within) or 'no sustained rate'}")
            lines.append(line)
    lines.append("")
    lines.append("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    return "\n".join(lines)


# ---- admission policies, in-process ----------------------------------------------------------


def policy_run(served: Path, threads: int, rates: list[float], duration: float) -> str:
    import t5ort
    from t5ort.serve.config import ServeConfig
    from t5ort.serve.inflight import InflightScheduler
    from t5ort.serve.metrics import ServeMetrics
    from t5ort.serve.scheduler import Failed, Finished, GenerateJob, TokenEvent

    rt = t5ort.load(served, threads=threads)

    class Channel:
        closed = False

        def __init__(self):
            self.sent, self.first, self.done, self.tokens = time.perf_counter(), None, None, 0
            self.finished = threading.Event()

        def send(self, event):
            now = time.perf_counter()
            if isinstance(event, TokenEvent):
                self.first = self.first or now
                self.tokens += 1
            elif isinstance(event, (Finished, Failed)):
                self.done = now
                self.finished.set()
            return True

    policies = {"eager": {}, "TGI (1.2, 20 steps)": {"waiting_served_ratio": 1.2, "max_waiting_steps": 20}}
    rows = []
    requests = make_requests(4096)
    for rate in rates:
        for name, kwargs in policies.items():
            scheduler = InflightScheduler(rt, ServeConfig(max_queue=4096, max_new_tokens=max(LENGTHS)).validate(),
                                          ServeMetrics(), **kwargs)
            scheduler.start()
            rng = np.random.default_rng(0)
            meter, channels, start, at = other_cpu_meter(), [], time.perf_counter(), 0.0
            for i, r in enumerate(requests):
                at += float(rng.exponential(1.0 / rate))
                if at > duration:
                    break
                time.sleep(max(0.0, start + at - time.perf_counter()))
                ids = rt.encode_texts([r.text])[0][0]
                channel = Channel()
                scheduler.submit(GenerateJob(f"r{i}", ids, (("min_new_tokens", r.new_tokens),), r.new_tokens), channel)
                channels.append(channel)
            for channel in channels:
                channel.finished.wait(600)
            seconds = time.perf_counter() - start
            scheduler.stop(5)
            ttft = [c.first - c.sent for c in channels]
            latency = [c.done - c.sent for c in channels]
            rows.append(_row(name, "poisson", rate, seconds, len(channels), sum(c.tokens for c in channels), ttft,
                             latency, 0, meter()))
            _say(rows[-1])
    header = ["rate", "policy", "requests", "req/s", "tokens/s", "TTFT p50 / p99 ms", "p50 ms", "p99 ms", "other CPU s"]
    table = [[f"{r['load']:g}/s", r["system"], str(r["requests"]), f"{r['requests_per_s']:.2f}",
              f"{r['tokens_per_s']:.0f}", f"{r['ttft_p50_ms']:.0f} / {r['ttft_p99_ms']:.0f}", f"{r['p50_ms']:.0f}",
              f"{r['p99_ms']:.0f}", f"{r['other_cpu_s']:.1f}"] for r in rows]
    return markdown_table(header, table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--rates", type=float, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per cell at most (default 20)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-batch-rows", type=int, default=64)
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    parser.add_argument("--mixes", nargs="+", choices=MIXES, default=["loadtest"],
                        help="request mixes, one after the other (default: loadtest)")
    parser.add_argument("--policy", action="store_true", help="compare admission policies in-process instead")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--json", type=Path, help="write every cell's figures here")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run (not a measurement): in-flight and dynamic batching only (no Optimum "
                             "baseline), concurrency 1 and 4, one rate, 2 s cells")
    args = parser.parse_args()
    if args.quick:
        args.systems = [s for s in args.systems if s in ("inflight", "dynamic")]
        args.concurrency, args.rates, args.duration = [1, 4], [2.0], 2.0

    started = time.perf_counter()
    served, optimum, tokenizer = sl.prepare(args.workdir, optimum_baseline="optimum server" in args.systems)
    if args.policy:
        print(policy_run(served, args.threads, args.rates, args.duration))
        say(f"done in {time.perf_counter() - started:.0f} s")
        return
    rows, rss = [], {}
    for mix in args.mixes:
        requests = make_requests(4096, mix=mix)
        say(f"mix {mix}")
        for system in args.systems:
            system_rows, peak = run_system(system, args, served, optimum, tokenizer, requests)
            rss[system] = max(peak, rss.get(system, 0.0))
            rows.extend({**row, "mix": mix} for row in system_rows)
    info = sl.serving_machine(args.threads)
    print(report(rows, rss, info))
    say(f"done in {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "peak_rss_mb": rss, "machine": info}, indent=2) + "\n")


if __name__ == "__main__":
    main()
