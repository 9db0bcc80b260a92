"""`t5ort serve` with the encoder cache on and off, on a workload where half the requests repeat a recent input.

    python benchmarks/serve_encoder_cache.py [--requests 64] [--concurrency 4] [--threads 2] [--quick]

The flan-t5-base-shaped random checkpoint of ``benchmarks/decoder_api.py`` (built and exported on first
use), served with a word-level tokenizer (token i is ``t{i}``): sources of 128 tokens, 16 new tokens per
request, streamed (``/generate_stream``). Every other request repeats one of the 4 latest inputs. Each
server (``--encoder-cache-mb 0``, then the default) gets the same requests from ``--concurrency`` client
threads (``benchmarks/serve_load.py``'s lean streaming client); requests/s and the median time to first token.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _model import current_t5ort_export  # noqa: E402
from serve_load import StreamConnection, served_copy  # noqa: E402

from t5ort.bench.server import ServerProcess, free_port, serve_command  # noqa: E402


def served_export(workdir: Path, shape: str = "flan-t5-base") -> Path:
    """The export of the ``shape``-shaped random checkpoint (flan-t5-base, or t5-small with --quick) with a word
    tokenizer, for text requests."""
    import t5ort
    from t5ort.bench.shapes import SHAPES, build_checkpoint

    export = workdir / f"{shape}-random-onnx"
    if not current_t5ort_export(export):
        t5ort.export(build_checkpoint(workdir / f"{shape}-random", shape=SHAPES[
            "small" if shape == "t5-small" else "base"]), export, force=True)  # first run, or an older format
    return served_copy(export, workdir / f"{shape}-random-served")


def workload(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    texts: list[str] = []
    for i in range(n):
        if i % 2 and texts:  # every other request repeats one of the 4 latest inputs
            texts.append(texts[-1 - int(rng.integers(0, min(4, len(texts))))])
        else:
            texts.append(" ".join(f"t{t}" for t in rng.integers(3, 32000, 127)))  # 127 words + EOS
    return texts


def run(served: Path, cache_mb: str | None, texts: list[str], concurrency: int, threads: int) -> dict:
    port = free_port()
    cache = [] if cache_mb is None else ["--encoder-cache-mb", cache_mb]
    server = ServerProcess(serve_command(served, port, "--threads", str(threads), "--max-input-tokens", "512",
                                         "--quiet", *cache), port)
    url = server.url
    try:
        body = lambda text: {"inputs": text, "parameters": {"max_new_tokens": 16, "min_new_tokens": 16}}  # noqa: E731
        warm = StreamConnection(url)
        warm.stream("/generate_stream", body("t5 t6 t7"))
        warm.close()
        ttft, lock, queue = [], threading.Lock(), list(enumerate(texts))

        def client():
            conn = StreamConnection(url)
            while True:
                with lock:
                    if not queue:
                        break
                    _, text = queue.pop(0)
                first, _, _ = conn.stream("/generate_stream", body(text))
                with lock:
                    ttft.append(first)
            conn.close()

        start = time.perf_counter()
        workers = [threading.Thread(target=client) for _ in range(concurrency)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        seconds = time.perf_counter() - start
        hits = server.metric("t5ort_encoder_cache_hits_total")
        return {"requests_per_s": len(texts) / seconds, "ttft_p50_ms": 1e3 * statistics.median(ttft), "hits": hits}
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=HERE / ".work")
    parser.add_argument("--quick", action="store_true", help="a smoke run: the t5-small shape, 8 requests")
    args = parser.parse_args()
    shape = "t5-small" if args.quick else "flan-t5-base"
    if args.quick:
        args.requests = 8
    served = served_export(args.workdir, shape)
    texts = workload(args.requests)
    rows = {name: run(served, mb, texts, args.concurrency, args.threads) for name, mb in (("off", "0"), ("on", None))}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=HERE).stdout.strip()
    print(f"t5ort serve, {shape} shape (random weights), {args.requests} streamed requests of 128-token "
          f"sources and 16 new tokens, half repeating one of the 4 latest inputs, {args.concurrency} clients, "
          f"{args.threads} threads; {date.today()}, commit {commit}\n")
    print("| encoder cache | requests/s | p50 time to first token | cache hits |\n|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['requests_per_s']:.2f} | {r['ttft_p50_ms']:.0f} ms | {r['hits']:.0f} |")
    print(f"\non / off: {rows['on']['requests_per_s'] / rows['off']['requests_per_s']:.2f}x requests/s")


if __name__ == "__main__":
    main()
