"""Is a decoder step's cost flat in the generated length? ms/step over steps 1-32 and 481-512 of one
512-token generation (forced: min_new_tokens), at batch 1 and batch 16, on a random t5-small-shaped model.

    python benchmarks/length_flatness.py [--threads 2] [--steps 512] [--workdir benchmarks/.work] [--quick]

Each row runs the whole 512-step loop through ``graphs.step`` (no search, no processors), timing every step.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from _model import current_t5ort_export  # the scripts' folder is on sys.path


def checkpoint(workdir: Path) -> Path:
    path = workdir / "t5-small-random"
    if not (path / "config.json").is_file():
        import torch
        from transformers import T5Config, T5ForConditionalGeneration

        torch.manual_seed(0)
        config = T5Config(vocab_size=32128, d_model=512, d_kv=64, num_heads=8, d_ff=2048, num_layers=6,
                          num_decoder_layers=6, feed_forward_proj="relu", decoder_start_token_id=0, pad_token_id=0,
                          eos_token_id=1)
        T5ForConditionalGeneration(config).eval().save_pretrained(path)
    return path


def main() -> None:
    import t5ort

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=512)
    parser.add_argument("--workdir", type=Path, default=Path(__file__).parent / ".work")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 24 steps (not a measurement)")
    args = parser.parse_args()
    if args.quick:
        args.steps = 24
    export = args.workdir / "t5-small-random-onnx"
    if not current_t5ort_export(export):
        t5ort.export(checkpoint(args.workdir), export, force=True)  # first run, or an export of an older format
    g = t5ort.load(export, threads=args.threads).graphs
    rng = np.random.default_rng(0)
    window = min(32, args.steps // 2)
    print(f"t5-small shape, {args.threads} threads, {args.steps} forced steps, 128-token sources\n")
    print(f"| batch | ms/step, steps 1-{window} | ms/step, last {window} | ratio |\n|---|---|---|---|")
    for batch in (1, 16):
        ids = rng.integers(3, 32000, (batch, 128)).astype(np.int64)
        state = g.start(g.encode(ids, np.ones_like(ids)))
        tokens = np.full(batch, 5, np.int64)
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            _, state = g.step(tokens, state)
            times.append(time.perf_counter() - start)
        first, last = 1e3 * np.mean(times[:window]), 1e3 * np.mean(times[-window:])
        print(f"| {batch} | {first:.2f} | {last:.2f} | {last / first:.2f} |")


if __name__ == "__main__":
    main()
