"""Parity of every T5-family variant t5ort exports against transformers, as one markdown table.

    python benchmarks/parity_matrix.py [--workdir DIR] [--json FILE] [--variants NAME ...] [--quick]

The variants are the tiny seeded checkpoints of the parity tests (``tests/variants.py``:
T5 v1.0 and v1.1, mT5, ByT5, LongT5 local and transient-global, UMT5; the script puts
tests/ on sys.path to import that module, so the table and the tests measure the same
models). Each is built, exported with ``t5ort.export`` into ``--workdir`` (default: a
temporary directory, removed afterwards) and compared with transformers on

- greedy: ``rt.generate(texts, max_new_tokens=12)`` against ``model.generate(...,
  output_logits=True, return_dict_in_generate=True)``;
- beam-3: the same with ``num_beams=3, num_return_sequences=2, max_new_tokens=10``;
  "sequences equal" there means sequences and beam_indices equal and sequences_scores
  within 1e-4 (the float64 reference is transformers' beam search on the float64 copy,
  used where its beams are fp32's);
- score: ``rt.score(texts, targets)`` against ``model(**enc, labels=labels).logits``
  (teacher-forced: no sequences to compare);

each on a batch of one row and on a right-padded batch of three rows of different
lengths, plus one long input (600 seeded token ids -> 64 new tokens, greedy) on
LongT5 transient-global. Every cell gives the max absolute difference of the raw
logits; a cell is within tolerance when it passes the export gate's rule
(``t5ort.export.parity.compare``: within ``1e-4 + 2e-6 * max|logit|`` of PyTorch fp32,
or within k times PyTorch fp32's own distance to float64 on the same tokens).

A second table gives, per variant, the three figures of the gate: t5ort's distance
to PyTorch float64 (a ``.double()`` copy, teacher-forced on the same tokens), PyTorch
fp32's own, and their ratio, on the export gate's inputs (from ``t5ort.json``), on
greedy (t5ort's tokens teacher-forced; positions after a row's EOS left out) and on
score. Besides the seven variants, ``--ill-conditioned`` (on by default) adds two
checkpoints with T5 v1.1-like activations (``tests/variants.py``:
``build_ill_conditioned``, T5 and UMT5). Exit status 1 when any cell fails.
Progress goes to stderr, the tables to stdout.
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
    ILL_VARIANTS,
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
from t5ort.export import parity  # noqa: E402

STRATEGIES = ("greedy", "beam-3", "score")
BEAM = dict(max_new_tokens=10, num_beams=3, num_return_sequences=2)
GREEDY = dict(max_new_tokens=12)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def logit_cell(ours: np.ndarray, ref: np.ndarray, sequences_equal: bool | None,
               fp64: np.ndarray | None = None) -> dict:
    """t5ort against transformers' fp32 logits, judged by the export gate's rule (with float64 where given)."""
    same_shape = ours.shape == ref.shape and (fp64 is None or fp64.shape == ref.shape)
    c = parity.compare(ours, ref, fp64 if same_shape else None, atol=1e-4, rel_tol=2e-6)
    return {
        "max_abs_diff": c.max_abs_diff if same_shape else math.nan,
        "tolerance": c.tolerance,
        "within_tolerance": bool(same_shape and c.passed),  # NaN (shapes differ) is not
        "passed_by": c.passed_by,
        "sequences_equal": sequences_equal,
        "steps": int(ref.shape[1]),
    }


def float64_cell(ours: np.ndarray, fp32: np.ndarray, fp64: np.ndarray, valid: np.ndarray) -> dict:
    """The gate's three figures on the positions ``valid`` (bool [rows, steps])."""
    c = parity.compare(ours[valid], fp32[valid], fp64[valid], atol=1e-4, rel_tol=2e-6)
    return {"onnx_vs_float64": c.max_abs_diff_vs_float64, "fp32_vs_float64": c.fp32_max_abs_diff_vs_float64,
            "ratio": c.ratio, "max_abs_logit": c.max_abs_logit, "positions": int(valid.sum())}


def before_eos(sequences: np.ndarray, eos: int) -> np.ndarray:
    """bool [rows, steps]: step t counts while no EOS was emitted before it."""
    emitted = np.cumsum(sequences[:, 1:] == eos, axis=1)  # EOS emitted up to and including step t
    return np.concatenate([np.ones((len(sequences), 1), bool), emitted[:, :-1] == 0], axis=1)


def equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool((a == b).all())


def teacher_forced_64(rt, model64, texts, sequences: np.ndarray) -> np.ndarray:
    ids, mask = rt.encode_texts(texts)
    return parity.torch_logits(model64, ids, mask, sequences[:, :-1])


def measure(rt, model, model64, tokenizer, strategy: str, batch: str) -> dict:
    texts = BATCHES[batch]
    if strategy == "greedy":
        ref = hf_generate(model, tokenizer, texts, **GREEDY)
        res = rt.generate(texts, **GREEDY)
        same = equal(res.sequences, ref["sequences"]) and list(res.texts) == ref["texts"]
        fp64 = teacher_forced_64(rt, model64, texts, res.sequences) if same else None
        return logit_cell(res.logits, ref["logits"], same, fp64)
    if strategy == "beam-3":
        ref = hf_generate(model, tokenizer, texts, **BEAM)
        res = rt.generate(texts, **BEAM)
        same = (
            equal(res.sequences, ref["sequences"])
            and equal(res.beam_indices, ref["beam_indices"])
            and bool(np.abs(res.sequences_scores - ref["sequences_scores"]).max() <= 1e-4)
        )
        with parity.keep_float64():  # float64 beam search: its running beams must be fp32's for a row-wise comparison
            ref64 = hf_generate(model64, tokenizer, texts, **BEAM)
        same64 = equal(ref64["sequences"], ref["sequences"]) and equal(ref64["beam_indices"], ref["beam_indices"])
        cell = logit_cell(res.logits, ref["logits"], same, ref64["logits"] if same64 else None)
        cell["float64_beams_equal"] = same64
        cell["max_abs_sequences_scores_diff"] = float(np.abs(res.sequences_scores - ref["sequences_scores"]).max())
        return cell
    logits, labels = hf_score(model, tokenizer, texts, TARGET_BATCHES[batch])
    res = rt.score(texts, TARGET_BATCHES[batch])
    ids, mask = rt.encode_texts(texts)
    start = np.full((len(labels), 1), model.config.decoder_start_token_id)
    decoder_ids = np.concatenate([start, np.where(labels == -100, model.config.pad_token_id, labels)[:, :-1]], 1)
    cell = logit_cell(res.logits, logits, None, parity.torch_logits(model64, ids, mask, decoder_ids))
    cell["labels_equal"] = equal(res.target_ids, labels)
    cell["within_tolerance"] = cell["within_tolerance"] and cell["labels_equal"]
    return cell


def long_input(rt, model, model64) -> dict:
    ids = long_input_ids(rt.vocab_size)
    options = dict(max_new_tokens=LONG_NEW_TOKENS, min_new_tokens=LONG_NEW_TOKENS)
    ref = hf_generate(model, input_ids=ids, **options)
    res = rt.generate(input_ids=ids, **options)
    same = equal(res.sequences, ref["sequences"])
    fp64 = parity.torch_logits(model64, ids, np.ones_like(ids), res.sequences[:, :-1]) if same else None
    return logit_cell(res.logits, ref["logits"], same, fp64)


def float64_figures(name: str, rt, model, model64, manifest: dict) -> list[dict]:
    """The gate's three figures of one variant: the export gate's inputs, greedy and score per batch."""
    gate = manifest["parity"]
    rows = [{"variant": name, "inputs": "export gate (2 rows, 8 steps)", "onnx_vs_float64": gate["max_abs_diff_vs_float64"],
             "fp32_vs_float64": gate["fp32_max_abs_diff_vs_float64"], "ratio": gate["ratio"],
             "max_abs_logit": gate["max_abs_logit"], "positions": None}]
    eos = model.config.eos_token_id
    for batch, texts in BATCHES.items():
        ids, mask = rt.encode_texts(texts)
        res = rt.generate(texts, **GREEDY)
        decoder_ids = res.sequences[:, :-1]
        fp32 = parity.torch_logits(model, ids, mask, decoder_ids)
        fp64 = parity.torch_logits(model64, ids, mask, decoder_ids)
        rows.append({"variant": name, "inputs": f"greedy {batch}",
                     **float64_cell(res.logits, fp32, fp64, before_eos(res.sequences, eos))})
        scored = rt.score(texts, TARGET_BATCHES[batch])
        labels = scored.target_ids
        start = np.full((len(labels), 1), model.config.decoder_start_token_id)
        decoder_ids = np.concatenate([start, np.where(labels == -100, model.config.pad_token_id, labels)[:, :-1]], 1)
        fp32 = parity.torch_logits(model, ids, mask, decoder_ids)
        fp64 = parity.torch_logits(model64, ids, mask, decoder_ids)
        rows.append({"variant": name, "inputs": f"score {batch}",
                     **float64_cell(scored.logits, fp32, fp64, labels != -100)})
    return rows


def run(names: list[str], workdir: Path) -> tuple[list[dict], list[dict]]:
    records, figures = [], []
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
        model64, why_not = parity.float64_copy(model)
        if model64 is None:
            raise SystemExit(f"{name}: no float64 reference: {why_not}")
        for strategy in STRATEGIES:
            for batch in BATCHES:
                records.append({"variant": name, "strategy": strategy, "batch": batch,
                                **measure(rt, model, model64, tokenizer, strategy, batch)})
        if name == LONG_INPUT_VARIANT:
            say(f"{name}: long input ({LONG_INPUT_TOKENS} -> {LONG_NEW_TOKENS})")
            records.append({"variant": name, "strategy": f"greedy, long input ({LONG_INPUT_TOKENS} -> {LONG_NEW_TOKENS})",
                            "batch": "batch1", **long_input(rt, model, model64)})
        say(f"{name}: float64 figures")
        figures += float64_figures(name, rt, model, model64, json.loads((root / "onnx" / "t5ort.json").read_text()))
        say(f"{name}: done in {time.perf_counter() - t0:.1f}s")
    return records, figures


def float64_markdown(figures: list[dict]) -> str:
    lines = ["| variant | inputs | t5ort vs float64 | PyTorch fp32 vs float64 | ratio | max \\|logit\\| |",
             "|---|---|---|---|---|---|"]
    for f in figures:
        lines.append(f"| {f['variant']} | {f['inputs']} | {f['onnx_vs_float64']:.2e} | {f['fp32_vs_float64']:.2e} | "
                     f"{f['ratio']:.2f} | {f['max_abs_logit']:.1f} |")
    return "\n".join(lines)


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
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS) + list(ILL_VARIANTS),
                        default=list(VARIANTS) + list(ILL_VARIANTS),
                        help="variants to run (default: the seven variants and the two ill-conditioned checkpoints)")
    parser.add_argument("--quick", action="store_true", help="smoke run: t5-v1.1 only (unless --variants)")
    args = parser.parse_args(argv)
    if args.quick and args.variants == parser.get_default("variants"):
        args.variants = ["t5-v1.1"]

    import onnxruntime
    import torch
    import transformers

    transformers.logging.set_verbosity_error()  # LongT5's "recovering a missing tied weight" notes
    with tempfile.TemporaryDirectory(prefix="t5ort-parity-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        records, figures = run(args.variants, workdir)

    versions = {"torch": torch.__version__, "transformers": transformers.__version__,
                "onnxruntime": onnxruntime.__version__}
    print(markdown(records))
    print()
    print("Max abs difference of the raw logits, t5ort against transformers (fp32, CPU); within tolerance: the "
          "export gate's rule (within 1e-4 + 2e-6 x max|logit| of fp32, or within k = "
          f"{parity.K:g} x PyTorch fp32's own distance to float64 on the same tokens). beam-3: num_beams=3, "
          "num_return_sequences=2 (sequences equal = sequences and beam_indices equal, sequences_scores within "
          "1e-4); score: teacher-forced against model(..., labels=...). "
          + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".")
    print()
    print(float64_markdown(figures))
    print()
    print("Max abs difference of the raw logits against PyTorch float64 (" + parity.REFERENCE_FP64 + "), "
          "on the same tokens: t5ort's, PyTorch fp32's own, and their ratio.")
    if args.json:
        args.json.write_text(json.dumps({"versions": versions, "records": records, "float64": figures},
                                        indent=2) + "\n")
        say(f"wrote {args.json}")
    ok = all(r["within_tolerance"] and r["sequences_equal"] is not False for r in records)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
