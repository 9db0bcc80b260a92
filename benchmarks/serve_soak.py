"""Soak: ``t5ort serve`` under a long mixed load on loopback, its memory, descriptors and threads every 1,000 requests.

    python benchmarks/serve_soak.py [--requests 20000] [--threads 2] [--clients 6] [--burst 128] [--json FILE] [--quick]

Starts ``t5ort serve`` on the bundled model (``t5ort.demo.bundled("onnx")``) with ``--threads`` ONNX
Runtime threads and every other flag at its default (in-flight batching, 32 rows, a queue of 64, at
most 256 new tokens, access log at info: into a temporary file), then sends ``--requests`` requests
from ``--clients`` client threads (httpx, one keep-alive client each), drawn at random (seeded):

- ``/generate``, greedy (answer checked against the library's), with details and top tokens, beam
  search (2 beams) or seeded sampling;
- ``/generate_stream`` read to the end (last event checked against the library's answer);
- ``/generate_stream`` of 256 forced tokens dropped by the client after 1-3 events;
- OpenAI ``/v1/completions``: one prompt, two prompts, or streamed to ``[DONE]`` (checked);
- ``/score``: pairs, or one source with two targets;
- bad bodies (invalid JSON, wrong types, missing fields: 4xx, mostly 422);
- over-limit requests (max_new_tokens / max_tokens over the cap, top_n_tokens, num_beams, an input
  over 512 tokens, a body over 1 MiB: 4xx);
- once per 1,000 requests, a burst of ``--burst`` streams of 256 forced tokens opened at once (one
  event loop, one connection each) so that the 32 rows and the queue of 64 fill: the rest get 429;
  once every status is in, half the admitted streams are read to the end and half dropped.

Inputs are the bundled model's sources for 200 seeded random numbers (so the encoder cache both hits
and evicts). The requests go in blocks of 1,000: the client threads share a block's budget; when it
is spent the clients stop, the server is left to settle (no rows, no queue on /metrics, then 1 s),
and its RSS (VmRSS), open file descriptors and threads are read from ``/proc/<pid>``. Responses are
counted by status class (2xx, 4xx other than 429, 429, 5xx).

Exit status: 1 on any 5xx, transport error, error event inside a 200 stream, wrong answer, status
outside what the request kind allows (e.g. a 4xx for a good request other than 429), a server that
does not settle, logs a traceback or does not stop cleanly; 2 if none of that happened but RSS, fds
or threads grew more than 5% after the first 2,000 requests (the target); 0 otherwise. The table is
printed (stdout, markdown) either way; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import math
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _model import markdown_table, say  # noqa: E402

from t5ort.bench.machine import busy_minus_own, machine, process_cpu_seconds  # noqa: E402
from t5ort.bench.server import ServerProcess, free_port, metric, serve_command  # noqa: E402

BLOCK = 1000  # requests between two readings
BASELINE = 2000  # growth is judged against the reading after this many requests
TARGET_GROWTH = 0.05
LONG = 256  # forced tokens of the dropped and burst streams (the server's default cap)
CHECKED_TOKENS = 64  # max_new_tokens of the requests whose answers are checked
KINDS = {  # kind: weight (the bursts come on top: one per block)
    "generate": 24, "stream": 14, "stream_dropped": 10, "completions": 12, "score": 10, "bad": 10, "over": 8,
}
GOOD = {"generate", "stream", "stream_dropped", "completions", "score", "burst"}


# ---- the server ------------------------------------------------------------------------------------------


def process_figures(pid: int) -> dict:
    """RSS (MB), open file descriptors (and how many are sockets) and threads of ``pid``, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    fds = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            fds.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:  # closed meanwhile
            pass
    return {"rss_mb": int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1)) / 1024,
            "fds": len(fds), "sockets": sum(f.startswith("socket:") for f in fds),
            "threads": int(re.search(r"^Threads:\s+(\d+)", status, re.M).group(1))}


# ---- what is sent ------------------------------------------------------------------------------------------


class Inputs:
    """Sources for seeded random numbers and the library's greedy answers to them (the reference)."""

    def __init__(self, model: Path, count: int = 200, seed: int = 0):
        import t5ort
        from t5ort.training.numbers import german, source

        rng = random.Random(seed)
        self.numbers = [rng.choice([rng.randrange(100), rng.randrange(1000), rng.randrange(100_000),
                                    rng.randrange(1_000_000)]) for _ in range(count)]
        self.sources = [source(n) for n in self.numbers]
        self.targets = [german(n) for n in self.numbers]
        rt = t5ort.load(model, threads=1)
        self.answers = {s: rt.generate([s], max_new_tokens=CHECKED_TOKENS).texts[0] for s in self.sources}

    def pick(self, rng: random.Random) -> tuple[str, str]:
        i = rng.randrange(len(self.sources))
        return self.sources[i], self.targets[i]


class Outcome:
    """One request's status and, if it went wrong, why (``problem``)."""

    __slots__ = ("kind", "status", "problem")

    def __init__(self, kind: str, status: int, problem: str | None = None):
        self.kind, self.status, self.problem = kind, status, problem


def _sse_data(line: str):
    if not line.startswith("data:"):
        return None
    data = line[5:].strip()
    return data if data == "[DONE]" else json.loads(data)


class Client:
    """One client thread's requests (an httpx.Client, keep-alive)."""

    def __init__(self, url: str, inputs: Inputs, model_name: str, seed: int):
        import httpx

        self.http = httpx.Client(base_url=url, timeout=120)
        self.inputs = inputs
        self.model_name = model_name
        self.rng = random.Random(seed)

    def close(self) -> None:
        self.http.close()

    def one(self, kind: str) -> Outcome:
        return getattr(self, "_" + kind)()

    # -- good requests --

    def _generate(self) -> Outcome:
        text, _ = self.inputs.pick(self.rng)
        variant = self.rng.randrange(4)
        parameters = {"max_new_tokens": CHECKED_TOKENS}
        if variant == 1:
            parameters.update(details=True, top_n_tokens=2)
        elif variant == 2:
            parameters.update(num_beams=2, max_new_tokens=self.rng.choice([8, 32]))
        elif variant == 3:
            parameters.update(do_sample=True, seed=self.rng.randrange(1000), top_k=20, max_new_tokens=16)
        r = self.http.post("/generate", json={"inputs": text, "parameters": parameters})
        if r.status_code != 200:
            return Outcome("generate", r.status_code)
        answer = r.json()["generated_text"]
        if variant in (0, 1) and answer != self.inputs.answers[text]:
            return Outcome("generate", 200, f"/generate {text!r}: {answer!r}, the library: "
                                            f"{self.inputs.answers[text]!r}")
        return Outcome("generate", 200)

    def _stream(self) -> Outcome:
        text, _ = self.inputs.pick(self.rng)
        body = {"inputs": text, "parameters": {"max_new_tokens": CHECKED_TOKENS, "details": True,
                                                "top_n_tokens": self.rng.choice([0, 2])}}
        with self.http.stream("POST", "/generate_stream", json=body) as r:
            if r.status_code != 200:
                r.read()
                return Outcome("stream", r.status_code)
            events = [e for e in map(_sse_data, r.iter_lines()) if e is not None]
        if not events or "error" in events[-1]:
            return Outcome("stream", 200, f"/generate_stream {text!r}: {events[-1:]!r}")
        if events[-1]["generated_text"] != self.inputs.answers[text]:
            return Outcome("stream", 200, f"/generate_stream {text!r}: {events[-1]['generated_text']!r}, the "
                                          f"library: {self.inputs.answers[text]!r}")
        return Outcome("stream", 200)

    def _stream_dropped(self) -> Outcome:
        text, _ = self.inputs.pick(self.rng)
        leave_after = self.rng.randint(1, 3)
        body = {"inputs": text, "parameters": {"max_new_tokens": LONG, "min_new_tokens": LONG}}
        with self.http.stream("POST", "/generate_stream", json=body) as r:
            if r.status_code != 200:
                r.read()
                return Outcome("stream_dropped", r.status_code)
            seen = 0
            for line in r.iter_lines():
                event = _sse_data(line)
                if event is None:
                    continue
                if "error" in event:
                    return Outcome("stream_dropped", 200, f"stream error event: {event!r}")
                seen += 1
                if seen >= leave_after:
                    break  # the connection is closed unread: the client went away
        return Outcome("stream_dropped", 200)

    def _completions(self) -> Outcome:
        text, _ = self.inputs.pick(self.rng)
        other, _ = self.inputs.pick(self.rng)
        variant = self.rng.randrange(3)
        body = {"model": self.model_name, "prompt": text if variant != 1 else [text, other],
                "max_tokens": CHECKED_TOKENS, "temperature": 0}
        if variant == 2:
            body["stream"] = True
            with self.http.stream("POST", "/v1/completions", json=body) as r:
                if r.status_code != 200:
                    r.read()
                    return Outcome("completions", r.status_code)
                events = [e for e in map(_sse_data, r.iter_lines()) if e is not None]
            if events[-1:] != ["[DONE]"] or any("error" in e for e in events[:-1]):
                return Outcome("completions", 200, f"/v1/completions stream {text!r}: {events[-3:]!r}")
            got = "".join(c["text"] for e in events[:-1] for c in e["choices"])
            want = self.inputs.answers[text]
        else:
            r = self.http.post("/v1/completions", json=body)
            if r.status_code != 200:
                return Outcome("completions", r.status_code)
            got = [c["text"] for c in sorted(r.json()["choices"], key=lambda c: c["index"])]
            want = [self.inputs.answers[text]] + ([self.inputs.answers[other]] if variant == 1 else [])
        if got != want:
            return Outcome("completions", 200, f"/v1/completions {text!r}: {got!r}, the library: {want!r}")
        return Outcome("completions", 200)

    def _score(self) -> Outcome:
        text, target = self.inputs.pick(self.rng)
        _, other = self.inputs.pick(self.rng)
        if self.rng.random() < 0.5:
            body, count = {"pairs": [{"source": text, "target": target}]}, 1
        else:
            body, count = {"inputs": text, "targets": [target, other]}, 2
        r = self.http.post("/score", json=body)
        if r.status_code != 200:
            return Outcome("score", r.status_code)
        scores = r.json()["scores"]
        if len(scores) != count or not all(math.isfinite(s["total_logprob"]) and s["total_logprob"] <= 0
                                           for s in scores):
            return Outcome("score", 200, f"/score {body!r}: {scores!r}")
        return Outcome("score", 200)

    # -- refused requests --

    def _bad(self) -> Outcome:
        text, _ = self.inputs.pick(self.rng)
        variant = self.rng.randrange(6)
        if variant == 0:
            r = self.http.post("/generate", content=b'{"inputs": "' + text.encode() + b'", ',
                               headers={"content-type": "application/json"})
        elif variant == 1:
            r = self.http.post("/generate", json={"inputs": 3})
        elif variant == 2:
            r = self.http.post("/generate_stream", json={"parameters": {"max_new_tokens": 4}})
        elif variant == 3:
            r = self.http.post("/score", json={"pairs": []})
        elif variant == 4:
            r = self.http.post("/v1/completions", json={"model": self.model_name, "max_tokens": 4})
        else:
            r = self.http.post("/generate", json={"inputs": text, "parameters": {"max_new_tokens": "many"}})
        return Outcome("bad", r.status_code)

    def _over(self) -> Outcome:
        text, _ = self.inputs.pick(self.rng)
        variant = self.rng.randrange(6)
        if variant == 0:
            r = self.http.post("/generate", json={"inputs": text, "parameters": {"max_new_tokens": LONG + 1}})
        elif variant == 1:
            r = self.http.post("/v1/completions", json={"model": self.model_name, "prompt": text,
                                                        "max_tokens": LONG + 44})
        elif variant == 2:
            r = self.http.post("/generate_stream", json={"inputs": text, "parameters": {"top_n_tokens": 6}})
        elif variant == 3:
            r = self.http.post("/generate", json={"inputs": text, "parameters": {"num_beams": 5}})
        elif variant == 4:
            r = self.http.post("/generate", json={"inputs": " ".join([text] * 150)})  # over 1,000 tokens; cap 512
        else:
            r = self.http.post("/generate", content=b'{"inputs": "' + b"x" * (1 << 20) + b'"}',
                               headers={"content-type": "application/json"})  # over 1 MiB
        return Outcome("over", r.status_code)


async def _burst(url: str, inputs: Inputs, size: int, rng: random.Random) -> list[Outcome]:
    """``size`` streams of LONG forced tokens opened at once; once every status is in, half the admitted ones
    are read to the end and half dropped after their first event."""
    import httpx

    texts = [inputs.pick(rng)[0] for _ in range(size)]
    answered, all_in = [0], asyncio.Event()

    async def one(http, i: int) -> Outcome:
        body = {"inputs": texts[i], "parameters": {"max_new_tokens": LONG, "min_new_tokens": LONG}}
        try:
            async with http.stream("POST", "/generate_stream", json=body) as r:
                answered[0] += 1
                if answered[0] == size:
                    all_in.set()
                await all_in.wait()  # the admitted ones hold their rows until every status is in
                if r.status_code != 200:
                    await r.aread()
                    return Outcome("burst", r.status_code)
                tokens = 0
                async for line in r.aiter_lines():
                    event = _sse_data(line)
                    if event is None:
                        continue
                    if "error" in event:
                        return Outcome("burst", 200, f"burst stream error event: {event!r}")
                    tokens += 1
                    if i % 2:
                        return Outcome("burst", 200)  # dropped after its first event
                if tokens != LONG:
                    return Outcome("burst", 200, f"burst stream read to the end: {tokens} events, not {LONG}")
                return Outcome("burst", 200)
        except httpx.HTTPError as exc:
            answered[0] += 1
            if answered[0] == size:
                all_in.set()
            return Outcome("burst", 0, f"burst: {type(exc).__name__}: {exc}")

    limits = httpx.Limits(max_connections=size + 8, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        return list(await asyncio.gather(*(one(http, i) for i in range(size))))


# ---- the run ---------------------------------------------------------------------------------------------


class Tally:
    """Statuses by class and kind, and the problems (the first 20 kept), shared by the client threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.classes = Counter()
        self.statuses = Counter()
        self.by_kind = Counter()
        self.problems: list[str] = []
        self.problem_count = 0

    def add(self, outcome: Outcome) -> None:
        status, kind = outcome.status, outcome.kind
        problem = outcome.problem
        if status == 0:
            cls = "transport"
        elif status >= 500:
            cls = "5xx"
            problem = problem or f"{kind}: {status}"
        elif status == 429:
            cls = "429"
        elif status >= 400:
            cls = "4xx"
        elif 200 <= status < 300:
            cls = "2xx"
        else:
            cls = "other"
        if problem is None:
            if kind in GOOD and cls not in ("2xx", "429"):
                problem = f"{kind}: unexpected status {status}"
            elif kind not in GOOD and cls != "4xx":
                problem = f"{kind}: status {status}, not a 4xx"
        with self.lock:
            self.classes[cls] += 1
            self.statuses[status] += 1
            self.by_kind[f"{kind} {status}"] += 1
            if problem:
                self.problem_count += 1
                if len(self.problems) < 20:
                    self.problems.append(problem)


class Budget:
    """A block's requests, taken one at a time, except for the block's burst (``burst`` at once, once the
    block is ``burst_at`` requests in)."""

    def __init__(self, size: int, burst: int, rng: random.Random):
        self.lock = threading.Lock()
        self.size = self.left = size
        self.burst = burst if 0 < burst <= size else 0
        self.burst_at = rng.randrange(size - self.burst + 1) if self.burst else None

    def take(self) -> int:
        """How many requests to send next (1, or the burst's size); 0: the block is spent."""
        with self.lock:
            if self.left <= 0:
                return 0
            if self.burst and self.size - self.left >= self.burst_at and self.left >= self.burst:
                n, self.burst = self.burst, 0
            else:
                n = 1
            self.left -= n
            return n


def run_block(server: ServerProcess, inputs: Inputs, model_name: str, size: int, args, tally: Tally, seed: int,
              deadline: float) -> None:
    import httpx

    rng = random.Random(seed)
    budget = Budget(size, args.burst, rng)
    kinds, weights = list(KINDS), list(KINDS.values())

    def worker(k: int) -> None:
        client = Client(server.url, inputs, model_name, seed * 1000 + k)
        try:
            while time.monotonic() < deadline:
                n = budget.take()
                if n == 0:
                    return
                if n > 1:
                    for outcome in asyncio.run(_burst(server.url, inputs, n, client.rng)):
                        tally.add(outcome)
                    continue
                kind = client.rng.choices(kinds, weights)[0]
                try:
                    outcome = client.one(kind)
                except httpx.HTTPError as exc:
                    outcome = Outcome(kind, 0, f"{kind}: {type(exc).__name__}: {exc}")
                    client.close()  # a fresh connection after a transport error
                    client = Client(server.url, inputs, model_name, client.rng.randrange(1 << 30))
                tally.add(outcome)
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(deadline - time.monotonic(), 0) + 300)


def settle(server: ServerProcess, timeout: float = 60) -> tuple[bool, dict]:
    """Waits until no rows run and nothing is queued, then 1 s more (connections closed, threads done); the
    /metrics figures of the moment it settled."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        text = httpx.get(server.url + "/metrics", timeout=30).text
        rows, queued = metric(text, "t5ort_batch_current_rows"), metric(text, "t5ort_queue_depth")
        if rows == 0 and queued == 0:
            break
        if time.monotonic() > deadline:
            return False, {"rows": rows, "queued": queued}
        time.sleep(0.2)
    extra = {"rows": rows, "queued": queued,
             "cancelled": metric(text, "t5ort_request_failures_total", 'reason="cancelled"'),
             "overloaded": metric(text, "t5ort_request_failures_total", 'reason="overloaded"'),
             "encoder_cache_entries": metric(text, "t5ort_encoder_cache_entries"),
             "encoder_cache_mb": metric(text, "t5ort_encoder_cache_bytes") / 2**20}
    time.sleep(1.0)  # this poll's connection and the clients' are closed, finished threads gone
    return True, extra


def growth(samples: list[dict]) -> dict:
    """Each figure's largest reading after BASELINE requests against its reading at BASELINE."""
    base = next((s for s in samples if s["requests"] == BASELINE), None)
    if base is None:
        return {}
    later = [s for s in samples if s["requests"] > BASELINE]
    out = {}
    for key in ("rss_mb", "fds", "threads"):
        top = max((s[key] for s in later), default=base[key])
        ratio = top / base[key] - 1
        out[key] = {"at_baseline": base[key], "max_after": top, "growth": ratio, "met": ratio <= TARGET_GROWTH,
                    "slope_per_1000": _slope([base, *later], key)}
    return out


def _slope(samples: list[dict], key: str) -> float:
    """The least-squares slope of ``key`` per 1,000 requests (a trend, where the maximum also shows noise)."""
    if len(samples) < 2:
        return 0.0
    xs, ys = [s["requests"] / 1000 for s in samples], [float(s[key]) for s in samples]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True,
                              timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def setup_line(args, info: dict) -> str:
    import fastapi
    import httpx
    import uvicorn

    import t5ort

    versions = (f"t5ort {t5ort.__version__}, onnxruntime {info['onnxruntime']}, fastapi {fastapi.__version__}, "
                f"uvicorn {uvicorn.__version__}, httpx {httpx.__version__}, python {info['python']}")
    return (f"{datetime.date.today().isoformat()}, commit {git_commit()}; {versions}; {info['cpu']}, "
            f"{info['logical cpus']} logical CPUs; `t5ort serve` on the bundled model, --threads {args.threads}, "
            f"default flags; {args.clients} client threads, "
            + (f"a burst of {args.burst} streams per 1,000 requests" if args.burst else "no bursts"))


def report(samples: list[dict], grown: dict, setup: str) -> str:
    header = ["requests", "RSS MB", "fds", "threads", "2xx", "4xx (not 429)", "429", "5xx", "seconds",
              "other CPU s"]
    rows = [[f"{s['requests']:,}", f"{s['rss_mb']:.1f}", str(s["fds"]), str(s["threads"]), str(s["2xx"]),
             str(s["4xx"]), str(s["429"]), str(s["5xx"]), f"{s['seconds']:.1f}", f"{max(s['other_cpu_s'], 0.0):.1f}"]
            for s in samples]
    lines = [setup, "", markdown_table(header, rows), ""]
    for key, label in (("rss_mb", "RSS"), ("fds", "open fds"), ("threads", "threads")):
        if key in grown:
            g, f = grown[key], ".1f" if key == "rss_mb" else ".0f"
            lines.append(f"- {label} after {BASELINE:,} requests: {g['at_baseline']:{f}} -> at most "
                         f"{g['max_after']:{f}} later ({100 * g['growth']:+.1f}%; target <= +5%): "
                         f"**{'met' if g['met'] else 'not met'}**; least-squares trend from {BASELINE:,} on: "
                         f"{g['slope_per_1000']:+.2f} per 1,000 requests")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000, help="requests in all (default 20000)")
    parser.add_argument("--threads", type=int, default=2, help="the server's --threads (default 2)")
    parser.add_argument("--clients", type=int, default=6, help="client threads (default 6)")
    parser.add_argument("--burst", type=int, default=128, help="streams per burst, one burst per 1,000 requests "
                                                               "(default 128; 0: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-minutes", type=float, default=90, help="stop sending after this long (default 90)")
    parser.add_argument("--json", type=Path, help="write the readings and counts here")
    parser.add_argument("--quick", action="store_true", help="smoke run: 300 requests from 2 clients, bursts of 16")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.clients, args.burst, args.max_minutes = 300, 2, 16, 5

    import httpx

    from t5ort.demo import bundled

    model = bundled("onnx")
    started = time.monotonic()
    deadline = started + 60 * args.max_minutes
    say("the library's answers to the inputs (the reference)")
    inputs = Inputs(model, seed=args.seed)
    info = machine(args.threads)
    setup = setup_line(args, info)
    tally, samples, failures = Tally(), [], []
    with tempfile.TemporaryDirectory(prefix="t5ort-soak-") as tmp:
        port = free_port()
        server = ServerProcess(serve_command(model, port, "--threads", str(args.threads)), port,
                               log=Path(tmp) / "server.log", ready_timeout=120, die_with_parent=True)
        say(f"started: {' '.join(server.command)} (pid {server.pid})")
        try:
            model_name = httpx.get(server.url + "/v1/models", timeout=30).json()["data"][0]["id"]
            ok, extra = settle(server)
            samples.append({"requests": 0, **process_figures(server.pid), "2xx": 0, "4xx": 0, "429": 0, "5xx": 0,
                            "seconds": 0.0, "other_cpu_s": 0.0, **extra})
            done = 0
            while done < args.requests and time.monotonic() < deadline:
                size = min(BLOCK, args.requests - done)
                t0, busy0, cpu0 = time.monotonic(), busy_minus_own(), process_cpu_seconds(server.pid)
                run_block(server, inputs, model_name, size, args, tally, args.seed * 100_003 + done, deadline)
                seconds = time.monotonic() - t0
                server_cpu = process_cpu_seconds(server.pid) - cpu0
                other = busy_minus_own() - busy0 - server_cpu
                ok, extra = settle(server)
                if not ok:
                    failures.append(f"after {done + size} requests the server did not settle: {extra}")
                done = sum(tally.classes.values())
                sample = {"requests": done, **process_figures(server.pid), **{c: tally.classes[c] for c in
                                                                              ("2xx", "4xx", "429", "5xx")},
                          "transport": tally.classes["transport"], "seconds": seconds, "server_cpu_s": server_cpu,
                          "other_cpu_s": other, **extra}
                samples.append(sample)
                say(f"{done:6d} requests  RSS {sample['rss_mb']:.1f} MB  fds {sample['fds']}  threads "
                    f"{sample['threads']}  {dict(tally.classes)}  {size / seconds:.0f} req/s  (other CPU "
                    f"{max(other, 0.0):.0f} s){'  PROBLEMS: ' + str(tally.problem_count) if tally.problem_count else ''}")
            if done < args.requests:
                failures.append(f"stopped after {args.max_minutes} minutes at {done} requests")
            r = httpx.post(server.url + "/generate", timeout=60,
                           json={"inputs": inputs.sources[0], "parameters": {"max_new_tokens": CHECKED_TOKENS}})
            if r.status_code != 200 or r.json()["generated_text"] != inputs.answers[inputs.sources[0]]:
                failures.append(f"the last request: {r.status_code} {r.text[:200]}")
        finally:
            code = server.stop()
        log = server.output()
    if code != 0:
        failures.append(f"the server exited with {code} on SIGTERM")
    if "Traceback" in log:
        failures.append("the server's log holds a traceback: " + log[log.index("Traceback"):][:1500])
    if tally.classes["5xx"] or tally.classes["transport"] or tally.problem_count:
        failures.append(f"{tally.problem_count} requests went wrong ({tally.classes['5xx']} 5xx, "
                        f"{tally.classes['transport']} transport errors); the first: {tally.problems}")

    grown = growth(samples)
    print(report(samples, grown, setup))
    say(f"statuses: {dict(sorted(tally.statuses.items()))}")
    say(f"by kind: {dict(sorted(tally.by_kind.items()))}")
    say(f"done in {time.monotonic() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"setup": setup, "machine": info, "args": vars(args) | {"json": str(args.json)},
                                         "samples": samples, "growth": grown, "statuses": dict(tally.statuses),
                                         "by_kind": dict(tally.by_kind), "problems": tally.problems,
                                         "failures": failures}, indent=2, default=str) + "\n")
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    if failures:
        return 1
    return 0 if all(g["met"] for g in grown.values()) else 2


if __name__ == "__main__":
    sys.exit(main())
