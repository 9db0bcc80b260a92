"""One prepared GPU check: t5ort's fp32 and fp16 exports on the CUDA provider, against PyTorch, in one table.

    bash benchmarks/gpu_check.sh                     # on a machine with one NVIDIA GPU, < 5 minutes
    python benchmarks/gpu_check.py --provider cpu --quick   # dry run of the same logic on the CPU

What it does, in order:

1. builds the seeded t5-small-shaped checkpoint of ``_model.checkpoint`` (``--quick``:
   a tiny seeded T5 instead, so that a CPU dry run takes seconds);
2. exports it with ``t5ort.export(..., force=True)`` as fp32 (``WORKDIR/fp32``) and fp16
   (``WORKDIR/fp16``); the export runs on the CPU and checks itself against PyTorch CPU fp32
   (``--reuse-exports`` skips this step when both exports are already there);
3. parity on ``--provider``: greedy decoding of batch 1 and of a right-padded batch of 4
   (source lengths 32, 25, 14, 7), exactly 32 new tokens. The raw logits of every step are
   compared with PyTorch fp32's, teacher-forced on t5ort's tokens, on the same device
   (cuda for cuda, cpu for cpu), within the stated tolerances: fp32 ``1e-4 + 2e-6 x max|logit|``,
   fp16 ``FP16_ATOL + FP16_REL_TOL x max|logit|`` (t5ort.export.fp16). The sequences are compared
   with PyTorch fp32's greedy ``generate``; "equal" or "tie@R:S" (they part only at a step where
   PyTorch's two candidates are within twice the tolerance, which that tolerance allows) pass,
   "DIFFER" fails. PyTorch's TF32 is switched off (it would break the fp32 tolerance on its own).
   t5ort loads onnxruntime's CUDA provider with ``use_tf32=0`` for the same reason;
4. timing, interleaved, medians of ``--repeats`` whole ``generate`` calls (encoder + 32 steps,
   raw logits of every step kept) after one warm-up each: greedy batch 1, greedy batch 16 and
   beam search with 4 beams at batch 1, for t5ort fp32, t5ort fp16, PyTorch fp32
   ``generate(output_logits=True, return_dict_in_generate=True)`` and, on CUDA only, PyTorch fp16
   (the fp32 model in half precision). PyTorch runs are bracketed by ``torch.cuda.synchronize()``;
   t5ort's include bringing the logits to the host (its results are numpy), PyTorch's leave them
   on the device;
5. prints one markdown table (stdout): a header line with the GPU (or "CPU dry run"),
   onnxruntime's version and providers, then a row per (workload, system): ms per step, new
   tokens per second, speed relative to PyTorch fp32 (> 1: faster), and for parity rows the max
   abs raw-logit difference, the tolerance, the sequences and pass/FAIL. Exit status 1 when any
   parity check fails. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import T5Config, T5ForConditionalGeneration

import t5ort
from t5ort.export.fp16 import FP16_ATOL, FP16_REL_TOL
from _model import NEW_TOKENS, PAUSE_S, SOURCE_LENGTH, checkpoint, current_t5ort_export, markdown_table, median_ms, say

DEFAULT_WORKDIR = Path(__file__).resolve().parent / ".work" / "gpu"
FP32_ATOL, FP32_REL_TOL = 1e-4, 2e-6
TOLERANCES = {"fp32": (FP32_ATOL, FP32_REL_TOL), "fp16": (FP16_ATOL, FP16_REL_TOL)}
PARITY_BATCHES = {"greedy-1 parity": (SOURCE_LENGTH,), "padded-4 parity": (SOURCE_LENGTH, 25, 14, 7)}
WORKLOADS = {"greedy-1": (1, 1), "greedy-16": (16, 1), "beam4-1": (1, 4)}  # name -> (batch, num_beams)
QUICK_T5 = dict(vocab_size=512, d_model=64, d_kv=16, num_heads=4, d_ff=128, num_layers=2, num_decoder_layers=2,
                feed_forward_proj="relu", tie_word_embeddings=True, decoder_start_token_id=0, pad_token_id=0,
                eos_token_id=1)
PT_FP32 = "PyTorch fp32"


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--provider", choices=("cuda", "cpu"), default="cuda", help="t5ort provider (default cuda)")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="checkpoint and exports")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per system and workload (default 5)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for onnxruntime and torch (default 2)")
    parser.add_argument("--device-id", type=int, default=0, help="CUDA device (default 0)")
    parser.add_argument("--quick", action="store_true", help="tiny seeded T5 instead of t5-small (CPU dry runs)")
    parser.add_argument("--reuse-exports", action="store_true",
                        help="use WORKDIR/fp32 and WORKDIR/fp16 as they are when both are current t5ort exports")
    return parser.parse_args(argv)


def build_checkpoint(workdir: Path, quick: bool) -> Path:
    """The seeded checkpoint: _model's t5-small shape, or with ``quick`` a tiny T5 in WORKDIR/checkpoint-quick."""
    if not quick:
        return checkpoint(workdir)
    path = workdir / "checkpoint-quick"
    if not (path / "config.json").is_file():
        say(f"building the tiny seeded T5 in {path}")
        torch.manual_seed(0)
        T5ForConditionalGeneration(T5Config(**QUICK_T5)).eval().save_pretrained(path)
    return path


def export_both(ckpt: Path, workdir: Path, reuse: bool) -> tuple[dict[str, Path], dict[str, float]]:
    """fp32 and fp16 t5ort exports of ``ckpt``: their directories and the seconds each export took."""
    dirs = {"fp32": workdir / "fp32", "fp16": workdir / "fp16"}
    if reuse and all(current_t5ort_export(d) for d in dirs.values()):
        say(f"reusing the exports in {workdir}")
        return dirs, {}
    seconds = {}
    for name, dtype in (("fp32", "float32"), ("fp16", "float16")):
        start = time.perf_counter()
        t5ort.export(ckpt, dirs[name], force=True, dtype=dtype, progress=lambda m, n=name: say(f"export {n}: {m}"))
        seconds[name] = time.perf_counter() - start
    return dirs, seconds


def source(lengths: tuple[int, ...], vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded seeded token ids in [3, min(vocab, 32000)) and their mask; int64 [N, max(lengths)].

    For the t5-small vocabulary and full rows these are _model.input_ids's rows.
    """
    ids = np.random.default_rng(0).integers(3, min(vocab_size, 32000), size=(len(lengths), max(lengths)),
                                            dtype=np.int64)
    mask = (np.arange(ids.shape[1])[None, :] < np.array(lengths)[:, None]).astype(np.int64)
    return ids * mask, mask


def setup_torch(provider: str, threads: int, device_id: int) -> torch.device:
    """The PyTorch device matching ``provider``, with TF32 off (it would break the fp32 tolerance)."""
    if provider == "cpu":
        torch.set_num_threads(threads)
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise SystemExit("--provider cuda, but this torch sees no CUDA device (torch.cuda.is_available() is False)")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    torch.cuda.set_device(device_id)  # the device torch.cuda.synchronize() waits for
    torch.zeros(1, device="cuda")  # loads the CUDA libraries that onnxruntime-gpu looks for too
    return torch.device("cuda", device_id)


def torch_models(ckpt: Path, device: torch.device) -> dict:
    """PyTorch systems: fp32 always, fp16 (the same weights halved) on CUDA only."""
    fp32 = T5ForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32).eval().to(device)
    models = {PT_FP32: fp32}
    if device.type == "cuda":
        models["PyTorch fp16"] = T5ForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32).eval() \
            .to(device).half()
    return models


def t5ort_systems(dirs: dict[str, Path], args) -> dict:
    """Name -> (loaded runtime, tolerance key): fp32 and fp16 on the provider."""
    load = dict(provider=args.provider, device_id=args.device_id, threads=args.threads)
    systems = {"t5ort fp32": (t5ort.load(dirs["fp32"], **load), "fp32"),
               "t5ort fp16": (t5ort.load(dirs["fp16"], **load), "fp16")}
    for name, (rt, _) in systems.items():
        say(f"{name}: {rt.graphs.decoder_session.get_providers()}")
    return systems


def to_device(device: torch.device, *arrays: np.ndarray) -> list[torch.Tensor]:
    return [torch.from_numpy(a).to(device) for a in arrays]


def teacher_forced(model, device, ids: np.ndarray, mask: np.ndarray, decoder_ids: np.ndarray) -> np.ndarray:
    """PyTorch's raw logits [N, T, vocab] (float32, host) for ``decoder_ids`` teacher-forced."""
    i, m, d = to_device(device, ids, mask, decoder_ids)
    with torch.no_grad():
        return model(input_ids=i, attention_mask=m, decoder_input_ids=d).logits.float().cpu().numpy()


def torch_generate(model, ids: torch.Tensor, mask: torch.Tensor, num_beams: int):
    """transformers' generate with exactly NEW_TOKENS new tokens and the raw logits of every step."""
    with torch.no_grad():
        return model.generate(ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                              num_beams=num_beams, do_sample=False, output_logits=True,
                              return_dict_in_generate=True)


def t5ort_generate(rt, ids: np.ndarray, mask: np.ndarray, num_beams: int):
    """t5ort's generate with exactly NEW_TOKENS new tokens and the raw logits of every step."""
    return rt.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                       num_beams=num_beams, output_logits=True)


def sequences_verdict(ours: np.ndarray, theirs: np.ndarray, reference: np.ndarray, tol: float) -> str:
    """'equal'; 'tie@R:S,...' when every row parts from PyTorch's only at a near tie; else 'DIFFER ...'.

    ``reference``: PyTorch's raw logits teacher-forced on ``ours`` (identical prefixes up to the first
    difference, so at that step they are PyTorch's own). A tie: PyTorch's token beats ours by at most
    ``2 * tol``, a gap that logits each within ``tol`` can flip.
    """
    ties = []
    for row in range(ours.shape[0]):
        differ = np.flatnonzero(ours[row] != theirs[row])
        if differ.size == 0:
            continue
        step = int(differ[0]) - 1  # sequences start with the decoder start token
        logits = reference[row, step]
        gap = float(logits[theirs[row, step + 1]] - logits[ours[row, step + 1]])
        if gap > 2 * tol:
            return f"DIFFER row {row} step {step} (gap {gap:.3g})"
        ties.append(f"{row}:{step}")
    return "tie@" + ",".join(ties) if ties else "equal"


def parity(systems: dict, pt_model, device, vocab_size: int) -> list[dict]:
    """Every t5ort system against PyTorch fp32 on each parity batch: max diff, tolerance, sequences, passed."""
    rows = []
    for workload, lengths in PARITY_BATCHES.items():
        ids, mask = source(lengths, vocab_size)
        theirs = torch_generate(pt_model, *to_device(device, ids, mask), num_beams=1).sequences.cpu().numpy()
        for name, (rt, tol_key) in systems.items():
            res = t5ort_generate(rt, ids, mask, num_beams=1)
            ref = teacher_forced(pt_model, device, ids, mask, res.sequences[:, :-1])
            atol, rel = TOLERANCES[tol_key]
            tol = atol + rel * float(np.abs(ref).max())
            diff = float(np.abs(res.logits - ref).max())
            seq = sequences_verdict(res.sequences, theirs, ref, tol)
            rows.append(dict(workload=workload, system=name, diff=diff, tol=tol, sequences=seq,
                             passed=bool(diff <= tol) and not seq.startswith("DIFFER")))
            say(f"{workload} {name}: max diff {diff:.3g} (tolerance {tol:.3g}), sequences {seq}")
    return rows


def torch_fp16_info(models: dict, device, vocab_size: int) -> list[dict]:
    """PyTorch fp16 against PyTorch fp32 on the parity batches (information only: no tolerance applies)."""
    if "PyTorch fp16" not in models:
        return []
    rows = []
    for workload, lengths in PARITY_BATCHES.items():
        ids, mask = source(lengths, vocab_size)
        seq = torch_generate(models[PT_FP32], *to_device(device, ids, mask), num_beams=1).sequences.cpu().numpy()
        ref, half = (teacher_forced(models[k], device, ids, mask, seq[:, :-1]) for k in (PT_FP32, "PyTorch fp16"))
        diff = float(np.nan_to_num(np.abs(half - ref), nan=np.inf).max())
        rows.append(dict(workload=workload, system="PyTorch fp16", diff=diff, tol=None, sequences="", passed=None))
    return rows


def timed(fn, cuda: bool) -> float:
    """Seconds one call of ``fn`` took (the GPU synchronized before and after on CUDA)."""
    if cuda:
        torch.cuda.synchronize()
    else:
        time.sleep(PAUSE_S)  # let the other system's idle CPU threads stop spinning
    start = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def runners(systems: dict, models: dict, device, batch: int, num_beams: int, vocab_size: int) -> dict:
    """Name -> a no-argument generate call for this workload, for every t5ort and PyTorch system."""
    ids, mask = source((SOURCE_LENGTH,) * batch, vocab_size)
    tids, tmask = to_device(device, ids, mask)
    calls = {n: (lambda rt=rt: t5ort_generate(rt, ids, mask, num_beams)) for n, (rt, _) in systems.items()}
    calls.update({n: (lambda m=m: torch_generate(m, tids, tmask, num_beams)) for n, m in models.items()})
    return calls


def timings(systems: dict, models: dict, device, repeats: int, vocab_size: int) -> list[dict]:
    """Median seconds per workload and system, interleaved (alternating order), after one warm-up each."""
    rows, cuda = [], device.type == "cuda"
    for workload, (batch, num_beams) in WORKLOADS.items():
        calls = runners(systems, models, device, batch, num_beams, vocab_size)
        say(f"{workload}: warming up {len(calls)} systems")
        for fn in calls.values():
            timed(fn, cuda)
        seconds = {name: [] for name in calls}
        for i in range(repeats):
            for name in list(calls)[:: 1 if i % 2 == 0 else -1]:
                seconds[name].append(timed(calls[name], cuda))
        for name, s in seconds.items():
            rows.append(dict(workload=workload, system=name, ms=median_ms(s), tokens=batch * NEW_TOKENS))
        say(f"{workload}: " + ", ".join(f"{r['system']} {r['ms'] / NEW_TOKENS:.2f}" for r in rows[-len(calls):])
            + " ms/step")
    return rows


def timing_cells(row: dict, baseline_ms: float) -> list[str]:
    """ms/step, new tokens/s and speed relative to PyTorch fp32 for one timing row."""
    return [f"{row['ms'] / NEW_TOKENS:.2f}", f"{row['tokens'] / row['ms'] * 1000:.0f}", f"{baseline_ms / row['ms']:.2f}x"]


def parity_cells(row: dict) -> list[str]:
    """max diff, tolerance, sequences and the verdict for one parity row."""
    verdict = "info" if row["passed"] is None else ("pass" if row["passed"] else "FAIL")
    tol = "" if row["tol"] is None else f"{row['tol']:.2e}"
    return [f"{row['diff']:.2e}", tol, row["sequences"], verdict]


def table(timing_rows: list[dict], parity_rows: list[dict]) -> str:
    """The one summary table: timing rows, then parity rows."""
    header = ["workload", "system", "ms/step", "new tokens/s", "speed vs PyTorch fp32", "max abs logit diff",
              "tolerance", "sequences vs PyTorch fp32", "parity"]
    base = {r["workload"]: r["ms"] for r in timing_rows if r["system"] == PT_FP32}
    rows = [[r["workload"], r["system"], *timing_cells(r, base[r["workload"]]), "", "", "", ""] for r in timing_rows]
    rows += [[r["workload"], r["system"], "", "", "", *parity_cells(r)] for r in parity_rows]
    return markdown_table(header, rows)


def header(args, export_seconds: dict[str, float]) -> str:
    """One line: the device, onnxruntime and its providers, the versions and the settings."""
    import onnxruntime

    where = (f"{torch.cuda.get_device_name(args.device_id)} (CUDA provider, device {args.device_id})"
             if args.provider == "cuda" else f"CPU dry run ({args.threads} threads)")
    model = "tiny seeded T5 (--quick)" if args.quick else "seeded t5-small shape"
    exports = ", ".join(f"{k} {v:.0f} s" for k, v in export_seconds.items()) or "reused"
    tf32 = "; PyTorch TF32 off" if args.provider == "cuda" else ""
    return (f"t5ort GPU check: {where}; onnxruntime {onnxruntime.__version__} "
            f"{onnxruntime.get_available_providers()}; torch {torch.__version__}; transformers "
            f"{transformers.__version__}; {model}; exports (on the CPU): {exports}; {NEW_TOKENS} new tokens, "
            f"median of {args.repeats}; speed = PyTorch fp32 ms / system ms{tf32}")


def main(argv=None) -> int:
    """Run the check; print the table; 1 when any parity check failed."""
    args = parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    device = setup_torch(args.provider, args.threads, args.device_id)
    ckpt = build_checkpoint(args.workdir, args.quick)
    dirs, export_seconds = export_both(ckpt, args.workdir, args.reuse_exports)
    systems = t5ort_systems(dirs, args)
    models = torch_models(ckpt, device)
    vocab_size = models[PT_FP32].config.vocab_size
    parity_rows = parity(systems, models[PT_FP32], device, vocab_size) + torch_fp16_info(models, device, vocab_size)
    timing_rows = timings(systems, models, device, args.repeats, vocab_size)
    failed = [f"{r['workload']} {r['system']}" for r in parity_rows if r["passed"] is False]
    print(header(args, export_seconds) + "\n\n" + table(timing_rows, parity_rows))
    print("\nparity: " + (f"FAILED: {', '.join(failed)}" if failed else "all passed"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
