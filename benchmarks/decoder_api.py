"""The decoder API's two targets: multiple-choice scoring that reuses the encoder, and a hand-written greedy
loop on ``runtime.decoder`` against ``generate``.

    python benchmarks/decoder_api.py [--questions 64] [--answers 4] [--threads 2] [--workdir benchmarks/.work]
        [--quick]   # a smoke run on the t5-small shape: 4 questions, 1 round (not a measurement)

**Multiple choice** (lm-eval style), 
On a seeded random flan-t5-base-shaped checkpoint (d_model 768, 12+12 layers, gated-GELU, untied head):
sources of 256 tokens, answers of 8 tokens, 2 threads. Each system scores every (question, answer) pair
(the answers' total log-probabilities):

- ``score, every row encoded``: the K rows of a question in one teacher-forced batch, each row's source
  encoded again (what ``rt.score`` did before it encoded each distinct source once);
- ``score, one encoder pass``: ``rt.score(input_ids=[question], target_ids=answers)``;
- ``PyTorch``: ``model(input_ids, labels=...)`` over the K rows (the usual loop);
- ``PyTorch, encoder reused``: ``model.get_encoder()`` once, then ``model(encoder_outputs=..., labels=...)``.

Systems run interleaved in one process (``--repeats`` rounds); questions per second, medians.

**Greedy loop**: 32 forced greedy tokens of one 128-token source, ``generate(min_new_tokens=32)`` against a
loop of ``dec.append(dec.logits.argmax(-1))``, interleaved; ms per token, medians.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
from datetime import date
from pathlib import Path

import numpy as np
from _model import current_t5ort_export  # the scripts' folder is on sys.path

SOURCE, ANSWER = 256, 8


def score_every_row_encoded(rt, ids: np.ndarray, answers: np.ndarray) -> np.ndarray:
    """The K rows of one question scored with the source encoded once per row (no reuse)."""
    g, k = rt.graphs, len(answers)
    start = rt.manifest.special_tokens.decoder_start_token_id
    decoder_ids = np.concatenate([np.full((k, 1), start, np.int64), answers[:, :-1]], axis=1)
    state = g.start(g.encode(np.repeat(ids, k, axis=0), np.ones((k, ids.shape[1]), np.int64)),
                    capacity=decoder_ids.shape[1])
    logits, _ = g.forward(decoder_ids, state)
    shifted = logits - logits.max(-1, keepdims=True)
    logprobs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return np.take_along_axis(logprobs, answers[:, :, None], -1)[..., 0].sum(-1)


def main() -> None:
    import torch

    import t5ort
    from t5ort.bench.shapes import SHAPES, build_checkpoint

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--answers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path(__file__).parent / ".work")
    parser.add_argument("--quick", action="store_true", help="t5-small shape, 4 questions, 1 round: a smoke run")
    args = parser.parse_args()
    shape = "t5-small" if args.quick else "flan-t5-base"
    if args.quick:
        args.questions, args.repeats = 4, 1
    ckpt = build_checkpoint(args.workdir / f"{shape}-random", shape=SHAPES["small" if args.quick else "base"])
    export = args.workdir / f"{shape}-random-onnx"
    if not current_t5ort_export(export):
        t5ort.export(ckpt, export, force=True)  # first run, or an export of an older format
    rt = t5ort.load(export, threads=args.threads)
    from t5ort.export.exporter import load_float32

    torch.set_num_threads(args.threads)
    model = load_float32(ckpt)
    rng = np.random.default_rng(0)
    questions = rng.integers(3, 32000, (args.questions, 1, SOURCE)).astype(np.int64)
    answers = rng.integers(3, 32000, (args.questions, args.answers, ANSWER)).astype(np.int64)

    def pytorch(reuse: bool):
        def run(q, a):
            with torch.no_grad():
                ids, labels = torch.from_numpy(q), torch.from_numpy(a)
                if reuse:
                    enc = model.get_encoder()(input_ids=ids)
                    hidden = enc.last_hidden_state.expand(len(a), -1, -1)
                    out = model(encoder_outputs=(hidden,), labels=labels)
                else:
                    out = model(input_ids=ids.expand(len(a), -1), labels=labels)
                logprobs = torch.log_softmax(out.logits, -1)
                return logprobs.gather(-1, labels[..., None])[..., 0].sum(-1).numpy()
        return run

    systems = {
        "score, every row encoded": lambda q, a: score_every_row_encoded(rt, q, a),
        "score, one encoder pass": lambda q, a: rt.score(input_ids=q, target_ids=a, output_logits=False).total_logprob,
        "PyTorch": pytorch(False),
        "PyTorch, encoder reused": pytorch(True),
    }
    reference = [systems["PyTorch"](q, a) for q, a in zip(questions[:4], answers[:4])]
    for name, run in systems.items():  # every system gives the same scores
        got = [run(q, a) for q, a in zip(questions[:4], answers[:4])]
        assert np.allclose(np.concatenate(got), np.concatenate(reference), atol=1e-2), name
    rates: dict[str, list[float]] = {name: [] for name in systems}
    for _ in range(args.repeats):
        for name, run in systems.items():
            time.sleep(0.2)
            start = time.perf_counter()
            for q, a in zip(questions, answers):
                run(q, a)
            rates[name].append(args.questions / (time.perf_counter() - start))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    import onnxruntime
    import transformers

    print(f"{shape} shape (random weights), {args.questions} questions x {args.answers} answers of {ANSWER} "
          f"tokens, sources of {SOURCE} tokens, {args.threads} threads, {args.repeats} interleaved rounds; "
          f"{date.today()}, commit {commit}, onnxruntime {onnxruntime.__version__}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}\n")
    base = statistics.median(rates["score, every row encoded"])
    print("| system | questions/s | vs score, every row encoded |\n|---|---|---|")
    for name, values in rates.items():
        print(f"| {name} | {statistics.median(values):.2f} | {statistics.median(values) / base:.2f}x |")
    print()
    greedy_loop(rt, rng, args.repeats)


def greedy_loop(rt, rng, repeats: int, steps: int = 32) -> None:
    """ms per token: generate against the same greedy decoding written on runtime.decoder."""
    ids = rng.integers(3, 32000, (1, 128)).astype(np.int64)
    encoded = rt.encode(input_ids=ids)

    def generate():
        return rt.generate(encoder_output=encoded, max_new_tokens=steps, min_new_tokens=steps).sequences

    def loop():
        with rt.decoder(encoded) as dec:
            for _ in range(steps):
                dec.append(dec.logits.argmax(-1))
            return dec.sequences

    assert np.array_equal(generate(), loop())
    times: dict[str, list[float]] = {"generate": [], "decoder loop": []}
    for _ in range(max(repeats, 5)):
        for name, run in (("generate", generate), ("decoder loop", loop)):
            time.sleep(0.2)
            start = time.perf_counter()
            run()
            times[name].append(1e3 * (time.perf_counter() - start) / steps)
    a, b = statistics.median(times["generate"]), statistics.median(times["decoder loop"])
    print(f"greedy, 1 source of 128 tokens, {steps} forced tokens (encoder reused): generate {a:.2f} ms/token, "
          f"decoder loop {b:.2f} ms/token ({b / a:.2f}x)")


if __name__ == "__main__":
    main()
