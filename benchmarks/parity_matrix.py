"""Parity of every T5-family variant t5ort exports against transformers, as one markdown table.

    /work/venv/bin/python benchmarks/parity_matrix.py [--workdir DIR] [--json FILE] [--variants NAME ...]

The variants are the tiny seeded checkpoints of the parity tests (``tests/variants.py``:
T5 v1.0 and v1.1, mT5, ByT5, LongT5 local and transient-global, UMT5; the script puts
tests/ on sys.path to import that module, so the table and the tests measure the same
models). Each is built, exported with ``t5ort.export`` into ``--workdir`` (default: a
temporary directory, removed afterwards) and compared with transformers on

- greedy: ``rt.generate(texts, max_new_tokens=12)`` against ``model.generate(...,
  output_logits=True, return_dict_in_generate=True)``;
- beam-3: the same with ``num_beams=3, num_return_sequences=2, max_new_tokens=10``;
  "sequences equal" there means sequences and beam_indices equal and sequences_scores
  within 1e-4;
- score: ``rt.score(texts, targets)`` against ``model(**enc, labels=labels).logits``
  (teacher-forced: no sequences to compare);

each on a batch of one row and on a right-padded batch of three rows of different
lengths, plus one long input (600 seeded token ids -> 64 new tokens, greedy) on
LongT5 transient-global. Every cell gives the max absolute difference of the raw
logits; a row is within tolerance when every cell is <= ``1e-4 + 2e-6 * max|logit|``
(the project's fp32 bound). Exit status 1 when any cell fails. Progress goes to
stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from variants import (  # noqa: E402
    BATCHES,
    LONG_INPUT_TOKENS,
    LONG_INPUT_VARIANT,
    LONG_NEW_TOKENS,
    TARGET_BATCHES,
    VARIANTS,
    build,
    hf_generate,
    hf_score,
    load_torch,
    long_input_ids,
)

import t5ort  # noqa: E402

STRATEGIES = ("greedy", "beam-3", "score")
BEAM = dict(max_new_tokens=10, num_beams=3, num_return_sequences=2)
GREEDY = dict(max_new_tokens=12)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def tolerance(reference: np.ndarray) -> float:
    """As tests/conftest.py: 1e-4 plus 2e-6 times the largest logit magnitude."""
    return 1e-4 + 2e-6 * float(np.abs(reference).max())


def logit_cell(ours: np.ndarray, ref: np.ndarray, sequences_equal: bool | None) -> dict:
    same_shape = ours.shape == ref.shape
    diff = float(np.abs(ours - ref).max()) if same_shape else math.nan
    tol = tolerance(ref)
    return {
        "max_abs_diff": diff,
        "tolerance": tol,
        "within_tolerance": bool(diff <= tol),  # NaN (shapes differ) is not
        "sequences_equal": sequences_equal,
        "steps": int(ref.shape[1]),
    }


def equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool((a == b).all())


def measure(rt, model, tokenizer, strategy: str, batch: str) -> dict:
    texts = BATCHES[batch]
    if strategy == "greedy":
        ref = hf_generate(model, tokenizer, texts, **GREEDY)
        res = rt.generate(texts, **GREEDY)
        same = equal(res.sequences, ref["sequences"]) and list(res.texts) == ref["texts"]
        return logit_cell(res.logits, ref["logits"], same)
    if strategy == "beam-3":
        ref = hf_generate(model, tokenizer, texts, **BEAM)
        res = rt.generate(texts, **BEAM)
        same = (
            equal(res.sequences, ref["sequences"])
            and equal(res.beam_indices, ref["beam_indices"])
            and bool(np.abs(res.sequences_scores - ref["sequences_scores"]).max() <= 1e-4)
        )
        cell = logit_cell(res.logits, ref["logits"], same)
        cell["max_abs_sequences_scores_diff"] = float(np.abs(res.sequences_scores - ref["sequences_scores"]).max())
        return cell
    logits, labels = hf_score(model, tokenizer, texts, TARGET_BATCHES[batch])
    res = rt.score(texts, TARGET_BATCHES[batch])
    cell = logit_cell(res.logits, logits, None)
    cell["labels_equal"] = equal(res.target_ids, labels)
    cell["within_tolerance"] = cell["within_tolerance"] and cell["labels_equal"]
    return cell


def long_input(rt, model) -> dict:
    ids = long_input_ids(rt.vocab_size)
    options = dict(max_new_tokens=LONG_NEW_TOKENS, min_new_tokens=LONG_NEW_TOKENS)
    ref = hf_generate(model, input_ids=ids, **options)
    res = rt.generate(input_ids=ids, **options)
    return logit_cell(res.logits, ref["logits"], equal(res.sequences, ref["sequences"]))


def run(names: list[str], workdir: Path) -> list[dict]:
    records = []
    for name in names:
        t0 = time.perf_counter()
        root = workdir / name
        say(f"{name}: building the seeded checkpoint")
        checkpoint = build(name, root / "checkpoint")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's and optimum's warnings: noise for this table
            t5ort.export(checkpoint, root / "onnx", force=True, progress=lambda m, n=name: say(f"{n}: {m}"))
        rt = t5ort.load(root / "onnx")
        model, tokenizer = load_torch(checkpoint)
        for strategy in STRATEGIES:
            for batch in BATCHES:
                records.append({"variant": name, "strategy": strategy, "batch": batch,
                                **measure(rt, model, tokenizer, strategy, batch)})
        if name == LONG_INPUT_VARIANT:
            say(f"{name}: long input ({LONG_INPUT_TOKENS} -> {LONG_NEW_TOKENS})")
            records.append({"variant": name, "strategy": f"greedy, long input ({LONG_INPUT_TOKENS} -> {LONG_NEW_TOKENS})",
                            "batch": "batch1", **long_input(rt, model)})
        say(f"{name}: done in {time.perf_counter() - t0:.1f}s")
    return records


def yes_no(value: bool | None) -> str:
    return "n/a" if value is None else ("yes" if value else "**NO**")


def markdown(records: list[dict]) -> str:
    batches = list(BATCHES)
    head = ["variant", "strategy"]
    for b in batches:
        head += [f"{b}: max abs logit diff", f"{b}: sequences equal"]
    head.append("within tolerance")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows: dict[tuple[str, str], dict[str, dict]] = {}
    for r in records:
        rows.setdefault((r["variant"], r["strategy"]), {})[r["batch"]] = r
    for (variant, strategy), cells in rows.items():
        line = [variant, strategy]
        for b in batches:
            c = cells.get(b)
            line += ["—", "—"] if c is None else [f"{c['max_abs_diff']:.2e}", yes_no(c["sequences_equal"])]
        line.append("yes" if all(c["within_tolerance"] for c in cells.values()) else "**NO**")
        lines.append("| " + " | ".join(line) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where checkpoints and exports go (default: a temporary directory, removed afterwards)")
    parser.add_argument("--json", type=Path, default=None, help="also write the measurements to this JSON file")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                        help="variants to run (default: all)")
    args = parser.parse_args(argv)

    import onnxruntime
    import torch
    import transformers

    transformers.logging.set_verbosity_error()  # LongT5's "recovering a missing tied weight" notes
    with tempfile.TemporaryDirectory(prefix="t5ort-parity-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        records = run(args.variants, workdir)

    versions = {"torch": torch.__version__, "transformers": transformers.__version__,
                "onnxruntime": onnxruntime.__version__}
    print(markdown(records))
    print()
    print("Max abs difference of the raw logits, t5ort against transformers (fp32, CPU); tolerance per cell "
          "1e-4 + 2e-6 x max|logit|. beam-3: num_beams=3, num_return_sequences=2 (sequences equal = sequences "
          "and beam_indices equal, sequences_scores within 1e-4); score: teacher-forced against "
          "model(..., labels=...). " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".")
    if args.json:
        args.json.write_text(json.dumps({"versions": versions, "records": records}, indent=2) + "\n")
        say(f"wrote {args.json}")
    ok = all(r["within_tolerance"] and r["sequences_equal"] is not False for r in records)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
