"""Load test on loopback: ``t5ort serve`` vs the library in-process vs a per-request Optimum FastAPI server.

    python benchmarks/serve_load.py [--concurrency 1 4 16 64] [--duration 12] [--threads 2] [--json FILE]
    python benchmarks/serve_load.py --paired-only [--pairs 16]    # the concurrency-1 overhead alone

All systems run the seeded t5-small-shaped checkpoint of ``_model.py`` (32128-token vocabulary,
6+6 layers) with ``--threads`` ONNX Runtime threads, in one run, on the same requests, taking
turns at each concurrency level (so that background load drifts hit them alike):

- ``t5ort serve``: a real server process with its default in-flight batching (``--max-batch-rows
  16``), requests to ``POST /generate_stream`` with ``details: true`` (every token's log-prob);
  time to first token is the first server-sent event;
- ``t5ort serve dynamic``: the same with ``--batching dynamic`` (``--max-batch-size 16``): compatible
  requests run as one batch until its longest ends;
- ``library``: the same requests through ``rt.stream`` in this process, one call per request, from
  as many threads as the concurrency (no batching);
- ``optimum server``: ``benchmarks/optimum_server.py``, a FastAPI app calling
  ``ORTModelForSeq2SeqLM.generate`` per request (per-token log-probs too); it cannot stream, so its
  time to first token is its whole latency.

Before the sweep, each server's own overhead at concurrency 1 is measured paired: 16 requests, each
streamed from the server by a lean keep-alive client (``StreamConnection``: the client shares these
cores, so its own CPU would count as the server's), run through the library, and streamed again by
httpx on a new connection (this benchmark's earlier method), back to back (wall time and CPU time per
request). ``--paired-only`` runs just that.

The model is random, so it has no tokenizer: the served copy of the export gets a word-level
tokenizer naming token i ``t{i}`` (inputs are such words; the Optimum server reads the same
tokenizer file). Requests: seeded inputs of 8..32 tokens, output lengths drawn from 4/8/16/32/64
(``min_new_tokens = max_new_tokens``, so every system generates exactly that many tokens).
Closed loop: ``c`` clients each send their next request when the last one is answered, until the
cell's request count (``max(12, 4c)``, at most 128) is sent or ``--duration`` seconds have passed.
The load generator runs on the same CPUs as the servers; the CPU time other processes took during
each cell is measured and printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _model import (DEFAULT_WORKDIR, checkpoint, current_t5ort_export, machine, markdown_table,  # noqa: E402
                    other_cpu_meter, say)

from t5ort.bench.server import ServerProcess, free_port, serve_command  # noqa: E402

LENGTHS = (4, 8, 16, 32, 64)
SYSTEMS = ("t5ort serve", "t5ort serve dynamic", "library", "optimum server")
BATCHING = {"t5ort serve": "inflight", "t5ort serve dynamic": "dynamic"}  # the server's --batching
EOS_ID = 1  # the word-level tokenizer's </s> (word_tokenizer) and the checkpoint's eos_token_id


@dataclass(frozen=True)
class Request:
    text: str
    new_tokens: int
    ban_eos: bool = False  # force the length by suppressing EOS (equal options for every request), not min_new_tokens

    def body(self) -> dict:
        """The TGI request: ``text`` in, exactly ``new_tokens`` tokens out."""
        forced = {"suppress_tokens": [EOS_ID]} if self.ban_eos else {"min_new_tokens": self.new_tokens}
        return {"inputs": self.text, "parameters": {"max_new_tokens": self.new_tokens, **forced, "details": True}}


@dataclass
class Cell:
    system: str
    concurrency: int
    requests: int
    seconds: float
    tokens: int
    ttft: list
    latency: list
    other_cpu_s: float
    errors: int = 0

    def row(self) -> dict:
        lat, ttft = np.array(self.latency) * 1000, np.array(self.ttft) * 1000
        return {
            "system": self.system, "concurrency": self.concurrency, "requests": self.requests,
            "errors": self.errors, "requests_per_s": self.requests / self.seconds,
            "tokens_per_s": self.tokens / self.seconds,
            "ttft_p50_ms": float(np.percentile(ttft, 50)), "p50_ms": float(np.percentile(lat, 50)),
            "p90_ms": float(np.percentile(lat, 90)), "p99_ms": float(np.percentile(lat, 99)),
            "other_cpu_s": self.other_cpu_s, "seconds": self.seconds,
        }


def make_requests(n: int, seed: int = 0) -> list[Request]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ids = rng.integers(3, 32000, size=int(rng.integers(8, 33)))
        out.append(Request(" ".join(f"t{i}" for i in ids), int(rng.choice(LENGTHS))))
    return out


def cell_count(concurrency: int) -> int:
    return min(128, max(12, 4 * concurrency))


# ---- artifacts ---------------------------------------------------------------------------


def word_tokenizer(path: Path, vocab_size: int) -> None:
    """A word-level tokenizer.json: token i is ``t{i}`` (0, 1, 2: <pad>, </s>, <unk>), EOS appended."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, processors

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{f"t{i}": i for i in range(3, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens([AddedToken(t, special=True) for t in ("<pad>", "</s>", "<unk>")])
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tok.save(str(path))


def serving_machine(threads: int) -> dict:
    """The machine and the versions of the serving stack (for the load tests' reports)."""
    import fastapi
    import uvicorn

    try:
        import optimum.version

        versions = {"optimum": optimum.version.__version__}
    except ImportError:  # a run without the Optimum baseline (--quick, --systems without it)
        versions = {}
    return machine(threads, fastapi=fastapi.__version__, uvicorn=uvicorn.__version__, **versions)


def prepare(workdir: Path, name: str = "serve", optimum_baseline: bool = True) -> tuple[Path, Path, Path]:
    """The t5ort export with a word tokenizer (for serving, or for a corpus: ``name``), optimum's export (unless
    ``optimum_baseline`` is False), and the tokenizer file; the export's served copy is ``t5ort-<name>``, its
    tokenizer ``<name>-tokenizer.json``."""
    ckpt = checkpoint(workdir)
    export = workdir / "t5ort"
    if not current_t5ort_export(export):
        import t5ort

        say(f"exporting {ckpt} with t5ort to {export}")
        t5ort.export(ckpt, export, force=True, progress=lambda m: say(f"t5ort export: {m}"))
    optimum = workdir / "optimum"
    if optimum_baseline and not all((optimum / f).is_file() for f in ("encoder_model.onnx",
                                                                       "decoder_model_merged.onnx")):
        say(f"exporting {ckpt} with optimum to {optimum}")
        subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); import _compare_systems "
                        "as cs; cs.prepare('optimum', sys.argv[2])", str(HERE), str(workdir)], check=True)
    served = served_copy(export, workdir / f"t5ort-{name}")
    tokenizer = workdir / f"{name}-tokenizer.json"
    shutil.copy(served / "tokenizer.json", tokenizer)
    return served, optimum, tokenizer


def served_copy(export: Path, served: Path) -> Path:
    """``served``: ``export``'s files (linked) with a word-level tokenizer naming token i ``t{i}``, so that the
    random checkpoint takes text requests; made anew."""
    manifest = json.loads((export / "t5ort.json").read_text())
    shutil.rmtree(served, ignore_errors=True)
    served.mkdir()
    for f in export.iterdir():
        if f.name != "t5ort.json":
            (served / f.name).symlink_to(f.resolve())
    word_tokenizer(served / "tokenizer.json", manifest["geometry"]["vocab_size"])
    manifest["tokenizer"] = {**manifest["tokenizer"], "kind": "tokenizers", "file": "tokenizer.json"}
    (served / "t5ort.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return served


# ---- processes ---------------------------------------------------------------------------


def proc_cpu(pid: int) -> float:
    try:
        rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(v) for v in rest[11:15]) / os.sysconf("SC_CLK_TCK")


# ---- clients -------------------------------------------------------------------------------


async def send(http, url: str, route: str, stream: bool, r: Request) -> tuple[float, float, int] | None:
    """One TGI request of ``r`` through the httpx client ``http`` (streamed: counts the server-sent events).
    Returns (time to first token, latency, tokens) in seconds, or None if the server did not answer 200."""
    body = r.body()
    sent = time.perf_counter()
    first = None
    if stream:
        count = 0
        async with http.stream("POST", url + route, json=body) as response:
            if response.status_code != 200:
                await response.aread()
                return None
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    first = first or time.perf_counter()
                    count += 1
    else:
        response = await http.post(url + route, json=body)
        if response.status_code != 200:
            return None
        count = response.json()["details"]["generated_tokens"]
    done = time.perf_counter()
    return (first or done) - sent, done - sent, count


async def _http_cell(url: str, route: str, stream: bool, requests: list[Request], concurrency: int,
                     duration: float) -> tuple[float, int, list, list, int]:
    import httpx

    queue = list(reversed(requests))
    ttft, latency, tokens, errors = [], [], 0, 0
    start = time.perf_counter()

    async def client(http):
        nonlocal tokens, errors
        while queue and time.perf_counter() - start < duration:
            answer = await send(http, url, route, stream, queue.pop())
            if answer is None:
                errors += 1
                continue
            ttft.append(answer[0])
            latency.append(answer[1])
            tokens += answer[2]

    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
    return time.perf_counter() - start, tokens, ttft, latency, errors


class StreamConnection:
    """One keep-alive HTTP/1.1 connection that reads a server-sent-event stream doing next to nothing per event.

    The paired measurement's client. The load generator shares this machine's cores with the server, so
    whatever CPU the client spends while a request runs lands on the server's latency: httpx spends ~10 ms
    per 20-token stream (h11 parsing and line splitting in Python, and a new connection each time), about a
    third of the overhead it was measuring. This client sends the request, then reads each chunk as it comes
    and counts its ``data:`` events, nothing else.
    """

    def __init__(self, url: str):
        self.host, port = url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((self.host, int(port)))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def close(self) -> None:
        self.sock.close()

    def _read_until(self, delimiter: bytes) -> bytes:
        while (end := self.buffer.find(delimiter)) < 0:
            self._receive()
        part, self.buffer = self.buffer[:end], self.buffer[end + len(delimiter):]
        return part

    def _read(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._receive()
        part, self.buffer = self.buffer[:size], self.buffer[size:]
        return part

    def _receive(self) -> None:
        data = self.sock.recv(1 << 16)
        if not data:
            raise ConnectionError("the server closed the connection")
        self.buffer += data

    def stream(self, route: str, body: dict) -> tuple[float, float, int]:
        """POST ``body`` to ``route``: (seconds to the first event, seconds to the end, events)."""
        payload = json.dumps(body).encode()
        head = (f"POST {route} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n\r\n").encode()
        sent = time.perf_counter()
        self.sock.sendall(head + payload)
        status_line, *headers = self._read_until(b"\r\n\r\n").split(b"\r\n")
        fields = dict(h.lower().split(b": ", 1) for h in headers)
        if fields.get(b"transfer-encoding") != b"chunked":
            answer = self._read(int(fields.get(b"content-length", b"0")))
            raise RuntimeError(f"{route}: {status_line.decode()}: {answer[:300].decode(errors='replace')}")
        first, events = None, 0
        while size := int(self._read_until(b"\r\n").split(b";")[0], 16):
            chunk = self._read(size + 2)  # the chunk and its CRLF
            first = first or time.perf_counter()
            events += chunk.count(b"data:")
        self._read_until(b"\r\n")  # the end of the last chunk (no trailers)
        done = time.perf_counter()
        if not status_line.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"{route}: {status_line.decode()}")
        return (first or done) - sent, done - sent, events


def library_cell(rt, requests: list[Request], concurrency: int, duration: float):
    lock = threading.Lock()
    queue = list(reversed(requests))
    ttft, latency, totals = [], [], [0]
    start = time.perf_counter()

    def client():
        while True:
            with lock:
                if not queue or time.perf_counter() - start >= duration:
                    return
                r = queue.pop()
            sent = time.perf_counter()
            first, count = None, 0
            for _event in rt.stream([r.text], max_new_tokens=r.new_tokens, min_new_tokens=r.new_tokens):
                first = first or time.perf_counter()
                count += 1
            done = time.perf_counter()
            with lock:
                ttft.append(first - sent)
                latency.append(done - sent)
                totals[0] += count

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start, totals[0], ttft, latency, 0


def run_cell(system: str, concurrency: int, requests: list[Request], duration: float, target) -> Cell:
    meter = other_cpu_meter()
    pid = getattr(target, "process", None)
    pid = pid.pid if pid is not None else None
    server_cpu = proc_cpu(pid) if pid else 0.0
    if system == "library":
        seconds, tokens, ttft, latency, errors = library_cell(target, requests, concurrency, duration)
    else:
        route, stream = ("/generate_stream", True) if system in BATCHING else ("/generate", False)
        seconds, tokens, ttft, latency, errors = asyncio.run(
            _http_cell(target.url, route, stream, requests, concurrency, duration))
    other = meter() - ((proc_cpu(pid) - server_cpu) if pid else 0.0)
    cell = Cell(system, concurrency, len(latency), seconds, tokens, ttft, latency, other, errors)
    r = cell.row()
    say(f"{system:>15} c={concurrency:<3} {r['requests']:4d} req  {r['requests_per_s']:7.2f} req/s  "
        f"{r['tokens_per_s']:8.1f} tok/s  ttft p50 {r['ttft_p50_ms']:7.1f} ms  p50 {r['p50_ms']:7.1f}  "
        f"p99 {r['p99_ms']:7.1f} ms  (other CPU {other:.1f} s{f', {errors} errors' if errors else ''})")
    return cell


# ---- report --------------------------------------------------------------------------------


def report(rows: list[dict], info: dict, paired: dict | None = None) -> str:
    """The table, then each target, met or not."""
    header = ["concurrency", "system", "requests", "req/s", "tokens/s", "TTFT p50 ms", "p50 ms", "p90 ms", "p99 ms",
              "other CPU s"]
    table = [[str(r["concurrency"]), r["system"], str(r["requests"]), f"{r['requests_per_s']:.2f}",
              f"{r['tokens_per_s']:.0f}", f"{r['ttft_p50_ms']:.1f}" + (" (no stream)" if r["system"] ==
                                                                        "optimum server" else ""),
              f"{r['p50_ms']:.1f}", f"{r['p90_ms']:.1f}", f"{r['p99_ms']:.1f}", f"{r['other_cpu_s']:.1f}"]
             for r in sorted(rows, key=lambda r: (r["concurrency"], SYSTEMS.index(r["system"])))]
    lines = [markdown_table(header, table), ""] if table else []
    by = {(r["system"], r["concurrency"]): r for r in rows}
    for system in BATCHING:
        batches = [f"{r['concurrency']}: {r['mean_batch']:.1f}" for r in rows if r["system"] == system
                   and "mean_batch" in r]
        if batches:
            lines.append(f"- {system}: mean requests per batch (dynamic) or in the batch after each admission "
                         "(in-flight), by concurrency: " + ", ".join(batches))
    for system, pair in (paired or {}).items():
        met = pair["median_excess_over_bound_ms"] <= 0
        lines.append(f"- concurrency 1, {system} within 5% + 1 ms of the library ({pair['pairs']} requests, each "
                     f"through both back to back; client: {pair['client']}; judged per pair: served <= 1.05 x "
                     f"library + 1 ms on the median pair): median {pair['server_median_ms']:.1f} ms vs "
                     f"{pair['library_median_ms']:.1f} ms, median paired difference "
                     f"{pair['median_difference_ms']:+.1f} ms, ratio {pair['median_ratio']:.3f}, median excess over "
                     f"the bound {pair['median_excess_over_bound_ms']:+.1f} ms: "
                     f"**{'met' if met else 'not met'}**; CPU time per request (median): server process "
                     f"{pair['server_cpu_ms_per_request']:.1f} ms, library "
                     f"{pair['library_cpu_ms_per_request']:.1f} ms, "
                     f"client {pair['client_cpu_ms_per_request']:.1f} ms. The same requests from httpx on a new "
                     f"connection each: median {pair['httpx_server_median_ms']:.1f} ms, paired difference "
                     f"{pair['httpx_median_difference_ms']:+.1f} ms, ratio {pair['httpx_median_ratio']:.3f}, excess "
                     f"{pair['httpx_median_excess_over_bound_ms']:+.1f} ms (httpx's "
                     f"own CPU {pair['httpx_client_cpu_ms_per_request']:.1f} ms per request, on the same cores)")
    for system in BATCHING:
        if (system, 16) in by and ("optimum server", 16) in by:
            s, o = by[system, 16], by["optimum server", 16]
            ratio = s["requests_per_s"] / o["requests_per_s"]
            met = ratio >= 3 and s["p99_ms"] <= o["p99_ms"]
            lines.append(f"- concurrency 16, {system} >= 3x the Optimum server's requests/s at no worse p99: "
                         f"{ratio:.2f}x, p99 {s['p99_ms']:.0f} vs {o['p99_ms']:.0f} ms: **{'met' if met else 'not met'}**")
    lines.append("")
    lines.append("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    return "\n".join(lines)


def start_system(system: str, args, served: Path, optimum: Path, tokenizer: Path):
    if system in BATCHING:
        port = free_port()
        window = ["--batch-window-ms", str(args.batch_window_ms)] if args.batch_window_ms is not None else []
        return ServerProcess(serve_command(served, port, "--batching", BATCHING[system], "--threads", str(args.threads),
                                           "--max-batch-size", str(args.max_batch_size), "--max-batch-rows",
                                           str(args.max_batch_size), "--max-queue", "512", "--max-new-tokens",
                                           str(max(LENGTHS)), "--log-level", "warning", "--quiet", *window), port)
    if system == "optimum server":
        port = free_port()
        return ServerProcess([sys.executable, str(HERE / "optimum_server.py"), str(optimum), str(tokenizer),
                              "--port", str(port), "--threads", str(args.threads)], port)
    import t5ort

    return t5ort.load(served, threads=args.threads)


def server_batches(server: ServerProcess) -> tuple[float, float]:
    """(requests batched, batches) so far, from the server's /metrics."""
    import re

    import httpx

    text = httpx.get(server.url + "/metrics").text
    value = lambda name: float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))  # noqa: E731
    return value("t5ort_batch_size_sum"), value("t5ort_batch_size_count")


def _server_cpu(pid: int) -> float:
    """CPU seconds of every thread of process ``pid`` so far, at nanosecond resolution (schedstat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


async def _httpx_stream(url: str, route: str, body: dict) -> tuple[float, float]:
    """One streamed request as :func:`_http_cell` sends it (httpx, a new client and connection): (seconds to
    the end, CPU seconds this process spent meanwhile)."""
    import httpx

    async with httpx.AsyncClient(timeout=600) as http:
        cpu, sent = time.process_time(), time.perf_counter()
        async with http.stream("POST", url + route, json=body) as response:
            if response.status_code != 200:
                raise RuntimeError(f"{route}: {response.status_code}: {(await response.aread())[:300]!r}")
            async for _line in response.aiter_lines():
                pass
        return time.perf_counter() - sent, time.process_time() - cpu


def paired_overhead(server: ServerProcess, rt, requests: list[Request]) -> dict:
    """Concurrency 1, the same request through the server and the library back to back: the server's own
    overhead, measured so that background load drifts hit both sides alike.

    Each request runs three times in turn: streamed from the server by :class:`StreamConnection` (one
    keep-alive connection, opened and warmed first), through the library (``rt.stream`` in this process,
    its caller's thread), and streamed by httpx on a new connection (this benchmark's method before: what
    a plain Python client on the same cores adds). The target is judged on the first.
    """
    pid = server.process.pid
    connection = StreamConnection(server.url)
    try:
        for r in requests[:2]:  # warm: the connection, and the first requests' one-time work
            connection.stream("/generate_stream", r.body())
        lean, library, httpx_ms, lean_cpu, library_cpu, client_cpu, httpx_cpu = ([] for _ in range(7))
        for r in requests:
            cpu, client = _server_cpu(pid), time.process_time()
            _, latency, events = connection.stream("/generate_stream", r.body())
            lean_cpu.append(_server_cpu(pid) - cpu)
            client_cpu.append(time.process_time() - client)
            if events != r.new_tokens:
                raise RuntimeError(f"the server streamed {events} events for {r.new_tokens} tokens")
            lean.append(latency)
            cpu = time.process_time()
            library.append(library_cell(rt, [r], 1, 60)[3][0])
            library_cpu.append(time.process_time() - cpu)
            latency, cpu = asyncio.run(_httpx_stream(server.url, "/generate_stream", r.body()))
            httpx_ms.append(latency)
            httpx_cpu.append(cpu)
    finally:
        connection.close()
    served_ms, library_ms, httpx_ms = 1000 * np.array(lean), 1000 * np.array(library), 1000 * np.array(httpx_ms)
    ms = lambda values: 1000 * float(np.median(values))  # noqa: E731
    out = {"pairs": len(requests), "client": "StreamConnection (keep-alive)",
           "server_median_ms": float(np.median(served_ms)), "library_median_ms": float(np.median(library_ms)),
           "median_difference_ms": float(np.median(served_ms - library_ms)),
           "median_ratio": float(np.median(served_ms / library_ms)),
           "server_cpu_ms_per_request": ms(lean_cpu), "library_cpu_ms_per_request": ms(library_cpu),
           "client_cpu_ms_per_request": ms(client_cpu),
           "httpx_server_median_ms": float(np.median(httpx_ms)),
           "httpx_median_difference_ms": float(np.median(httpx_ms - library_ms)),
           "httpx_median_ratio": float(np.median(httpx_ms / library_ms)),
           "httpx_client_cpu_ms_per_request": ms(httpx_cpu),
           # the target, per request: served <= 1.05 x library + 1 ms, judged on the median pair
           "median_excess_over_bound_ms": float(np.median(served_ms - (1.05 * library_ms + 1.0))),
           "httpx_median_excess_over_bound_ms": float(np.median(httpx_ms - (1.05 * library_ms + 1.0))),
           "per_request_ms": {"server": served_ms.tolist(), "library": library_ms.tolist(),
                              "httpx": httpx_ms.tolist(), "new_tokens": [r.new_tokens for r in requests]}}
    say(f"paired, concurrency 1: server {out['server_median_ms']:.1f} ms, library {out['library_median_ms']:.1f} ms "
        f"(median difference {out['median_difference_ms']:+.1f} ms, ratio {out['median_ratio']:.3f}); CPU time per "
        f"request: server process {out['server_cpu_ms_per_request']:.1f} ms, library "
        f"{out['library_cpu_ms_per_request']:.1f} ms, client {out['client_cpu_ms_per_request']:.1f} ms; "
        f"httpx on a new connection: {out['httpx_server_median_ms']:.1f} ms "
        f"({out['httpx_median_difference_ms']:+.1f} ms, client CPU {out['httpx_client_cpu_ms_per_request']:.1f} ms)")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--duration", type=float, default=12.0, help="seconds per cell at most (default 12)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-batch-size", type=int, default=16,
                        help="t5ort serve's --max-batch-size (dynamic) and --max-batch-rows (in-flight)")
    parser.add_argument("--batch-window-ms", type=float, default=None, help="t5ort serve's (default: its own)")
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--json", type=Path, help="write every cell's figures here")
    parser.add_argument("--paired-only", action="store_true",
                        help="only the paired concurrency-1 overhead (of the t5ort servers among --systems; the "
                             "library is always started), no sweep")
    parser.add_argument("--pairs", type=int, default=16, help="requests in the paired measurement (default 16)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run (not a measurement): t5ort's servers and the library only (no Optimum "
                             "baseline), concurrency 1 and 4, 2 s cells, 4 pairs")
    args = parser.parse_args()
    if args.quick:
        args.systems = [s for s in args.systems if s != "optimum server"]
        args.concurrency, args.duration, args.pairs = [1, 4], 2.0, 4
    if args.paired_only:
        args.systems = [s for s in args.systems if s in BATCHING] + ["library"]

    started = time.perf_counter()
    served, optimum, tokenizer = prepare(args.workdir, optimum_baseline="optimum server" in args.systems)
    requests = make_requests(max(cell_count(c) for c in args.concurrency))
    targets = {}
    try:
        for system in args.systems:  # all started up front; idle ones take no CPU (threads block, no spinning)
            say(f"starting {system}")
            targets[system] = start_system(system, args, served, optimum, tokenizer)
            run_cell(system, 2, make_requests(4, seed=1), 30, targets[system])  # warm-up, not reported
        paired = {}
        for system in BATCHING:
            if system in targets and "library" in targets:
                paired[system] = paired_overhead(targets[system], targets["library"],
                                                 make_requests(args.pairs, seed=2))
        rows = []
        # the systems take turns at each level, so background load hits all alike
        for c in [] if args.paired_only else args.concurrency:
            for system in args.systems:
                batches = server_batches(targets[system]) if system in BATCHING else None
                row = run_cell(system, c, requests[: cell_count(c)], args.duration, targets[system]).row()
                if batches is not None:
                    after = server_batches(targets[system])
                    row["mean_batch"] = (after[0] - batches[0]) / max(after[1] - batches[1], 1)
                rows.append(row)
    finally:
        for target in targets.values():
            if isinstance(target, ServerProcess):
                target.stop()
    info = serving_machine(args.threads)
    print(report(rows, info, paired))
    say(f"done in {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "paired": paired, "machine": info}, indent=2) + "\n")


if __name__ == "__main__":
    main()
