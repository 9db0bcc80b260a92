"""The export gate: the exported graphs, run by the t5ort runtime, against PyTorch fp32 and float64.

On checkpoints with large activations (T5 v1.1, Flan-T5, mT5: feed-forward outputs past
65504) PyTorch fp32 is itself far from the exact answer, so a fixed tolerance against it
refuses correct exports. The gate therefore takes three sets of teacher-forced raw logits
on the same tokens (the ONNX graphs through the runtime, PyTorch fp32, and PyTorch float64:
the same checkpoint after ``.double()``) and judges the ONNX graphs against what float32 can
do at all on that checkpoint, the way PyTorch's own tests judge fused kernels
(test/test_transformers.py, ``get_tolerances`` with a fudge factor):

- pass when ``max|onnx - fp32| <= atol + rel_tol * max|logit|`` (the absolute rule: below it
  the gate always passes), or
- when ``max|onnx - float64| <= K * max(max|fp32 - float64|, floor)``, with
  ``floor = FLOOR_ULPS * eps_fp32 * max|logit|``.

K was chosen by measurement (README, Parity): 4.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..runtime.errors import ParityError

K = 4.0  # ONNX's distance to float64 may be up to K x PyTorch fp32's own (README, Parity: how K was chosen)
FLOOR_ULPS = 4  # the least any float32 computation can be expected to miss by, in ulps of the largest logit
EPS_FP32 = float(np.finfo(np.float32).eps)
REFERENCE_FP64 = (
    "PyTorch float64: the same checkpoint after .double(), teacher-forced on the runtime's greedy tokens, with "
    "the RMSNorm variance and the attention softmax kept in float64 (transformers casts both to float32 even in a "
    "float64 model); the relative-position buckets (integers) come from a float32 log, as transformers defines them"
)
REFERENCE_FP32 = "PyTorch fp32, teacher-forced on the runtime's greedy tokens"
RULE = ("pass when max|onnx - fp32| <= atol + rel_tol x max|logit| (absolute rule), "
        "or max|onnx - float64| <= k x max(max|fp32 - float64|, floor), floor = 4 x eps_fp32 x max|logit|")


def check_inputs(vocab_size: int, seed: int = 0, lengths: tuple[int, ...] = (7, 13)) -> tuple[np.ndarray, np.ndarray]:
    """A right-padded batch of random rows (the gate's: lengths 7 and 13), avoiding the special ids 0..2."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((len(lengths), max(lengths)), dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n] = rng.integers(3, vocab_size, size=n)
        mask[row, :n] = 1
    return ids, mask


def torch_logits(torch_model, input_ids: np.ndarray, attention_mask: np.ndarray, decoder_input_ids: np.ndarray):
    """Teacher-forced raw logits [N, T, vocab] from the PyTorch model.

    A float64 model runs under :func:`keep_float64` and returns float64 logits.
    """
    import contextlib

    import torch

    dtype = next(torch_model.parameters()).dtype
    with torch.no_grad(), keep_float64() if dtype == torch.float64 else contextlib.nullcontext():
        out = torch_model(
            input_ids=torch.from_numpy(input_ids),
            attention_mask=torch.from_numpy(attention_mask),
            decoder_input_ids=torch.from_numpy(decoder_input_ids),
        )
    logits = out.logits
    return logits.numpy() if logits.dtype == torch.float64 else logits.float().numpy()


def keep_float64():
    """A context in which ``t.float()`` and ``t.to(torch.float32)`` of a float64 tensor return it unchanged.

    transformers' T5 family computes the RMSNorm variance (``hidden_states.to(torch.float32)``) and the
    attention softmax (``scores.float()``) in float32 whatever the model's dtype. Inside a float64 model
    that rounding is the very one PyTorch fp32 makes, so it would pull the reference towards fp32 and make
    the ONNX graphs look worse than they are: measured on an ill-conditioned UMT5 checkpoint (40-token
    input), ONNX's distance to the reference over fp32's went from 4.5x to 2.8x with it kept in float64.
    Integer tensors (the relative positions, whose float32 log defines the buckets) are not touched.
    The mode is a torch function mode: it applies to this thread, inside the ``with`` only.
    """
    import torch
    from torch.overrides import TorchFunctionMode

    class KeepFloat64(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func in (torch.Tensor.float, torch.Tensor.to) and args and _to_float32(func, args, kwargs):
                return args[0]
            return func(*args, **kwargs)

    def _to_float32(func, args, kwargs) -> bool:
        tensor = args[0]
        if not isinstance(tensor, torch.Tensor) or tensor.dtype != torch.float64:
            return False
        if func is torch.Tensor.float:
            return True
        return (len(args) == 2 and args[1] is torch.float32 and not kwargs) or (
            len(args) == 1 and set(kwargs) == {"dtype"} and kwargs["dtype"] is torch.float32)

    return KeepFloat64()


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def float64_copy(torch_model) -> tuple[object | None, str | None]:
    """``(model.double() copy, None)``, or ``(None, why)`` where the copy does not fit in memory.

    The copy needs 2x the fp32 weights (float64) plus activations: refused when less than 2.5x the
    fp32 weight bytes are available.
    """
    fp32_bytes = sum(p.numel() for p in torch_model.parameters()) * 4
    free = available_memory()
    if free is not None and free < 2.5 * fp32_bytes:
        return None, (f"a float64 copy of the model needs about {2.5 * fp32_bytes / 2**20:.0f} MiB, "
                      f"{free / 2**20:.0f} MiB are available")
    try:
        return copy.deepcopy(torch_model).double().eval(), None
    except (MemoryError, RuntimeError) as exc:  # torch reports a failed allocation as RuntimeError
        return None, f"the float64 copy of the model could not be allocated ({exc})"


@dataclass(frozen=True)
class Comparison:
    """Max |logit diff| figures of one comparison on the same tokens, and the gate's verdict."""

    max_abs_diff: float  # ONNX vs PyTorch fp32
    max_abs_logit: float  # of the fp32 reference
    tolerance: float  # the absolute rule: atol + rel_tol * max_abs_logit
    max_abs_diff_vs_float64: float | None  # ONNX vs float64; None without the float64 reference
    fp32_max_abs_diff_vs_float64: float | None  # PyTorch fp32 vs float64
    floor: float | None
    float64_bound: float | None  # k * max(fp32_max_abs_diff_vs_float64, floor)
    k: float

    @property
    def ratio(self) -> float | None:
        """ONNX's distance to float64 over PyTorch fp32's own (inf where fp32's is 0); None without float64."""
        if self.max_abs_diff_vs_float64 is None:
            return None
        if self.fp32_max_abs_diff_vs_float64 == 0:
            return 0.0 if self.max_abs_diff_vs_float64 == 0 else float("inf")
        return self.max_abs_diff_vs_float64 / self.fp32_max_abs_diff_vs_float64

    @property
    def passed_by(self) -> str | None:
        """"absolute", "float64" (the ratio rule) or None (refused). NaN fails both rules."""
        if self.max_abs_diff <= self.tolerance:
            return "absolute"
        if self.float64_bound is not None and self.max_abs_diff_vs_float64 <= self.float64_bound:
            return "float64"
        return None

    @property
    def passed(self) -> bool:
        return self.passed_by is not None


def compare(onnx: np.ndarray, fp32: np.ndarray, fp64: np.ndarray | None, *, atol: float, rel_tol: float,
            k: float = K) -> Comparison:
    """The gate's figures for ONNX logits against fp32 and (where given) float64 logits of the same tokens."""
    scale = float(np.abs(fp32).max())
    diff = _max_abs(onnx, fp32)
    if fp64 is None:
        return Comparison(diff, scale, atol + rel_tol * scale, None, None, None, None, k)
    floor = FLOOR_ULPS * EPS_FP32 * float(np.abs(fp64).max())
    fp32_error = _max_abs(fp32, fp64)
    return Comparison(diff, scale, atol + rel_tol * scale, _max_abs(onnx, fp64), fp32_error, floor,
                      k * max(fp32_error, floor), k)


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return float("nan")
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def gate_parity(torch_model, export_dir: Path, *, steps: int, atol: float, rel_tol: float, k: float = K,
                say=None) -> dict:
    """The export gate: decode ``steps`` greedy steps with the t5ort runtime, teacher-force the same tokens
    through PyTorch fp32 and float64, and judge the ONNX logits by the rule in this module's docstring.

    Returns the figures for the manifest's ``parity`` block; raises :class:`ParityError` when refused.
    Where the float64 copy does not fit in memory, only the absolute rule against fp32 is applied and
    the manifest and ``say`` (progress) say so.
    """
    from ..runtime.model import load

    say = say or (lambda message: None)
    runtime = load(export_dir)
    ids, mask = check_inputs(runtime.vocab_size)
    result = runtime.generate(input_ids=ids, attention_mask=mask, max_new_tokens=steps, min_new_tokens=steps)
    decoder_ids = result.sequences[:, :-1]
    fp32 = torch_logits(torch_model, ids, mask, decoder_ids)
    model64, why_not = float64_copy(torch_model)
    fp64 = None if model64 is None else torch_logits(model64, ids, mask, decoder_ids)
    del model64
    if why_not:
        say(f"no float64 reference ({why_not}): checking against PyTorch fp32 with the absolute rule only")
    c = compare(result.logits, fp32, fp64, atol=atol, rel_tol=rel_tol, k=k)
    report = parity_report(c, steps=int(result.num_steps), mask=mask, input_ids=ids, decoder_ids=decoder_ids,
                           atol=atol, rel_tol=rel_tol, float64_missing=why_not)
    if not c.passed:
        raise ParityError(f"{export_dir}: {refusal(c, int(result.num_steps))}")
    return report


def absolute_report(c: Comparison, *, steps: int, mask: np.ndarray, atol: float, rel_tol: float) -> dict:
    """The absolute rule's figures against PyTorch fp32: the part of the ``parity`` block every gate writes."""
    return {
        "max_abs_diff": c.max_abs_diff,
        "max_abs_logit": c.max_abs_logit,
        "tolerance": c.tolerance,
        "atol": atol,
        "rel_tol": rel_tol,
        "steps": steps,
        "batch": [int(n) for n in mask.sum(axis=1)],
        "reference": REFERENCE_FP32,
    }


def parity_report(c: Comparison, *, steps: int, mask: np.ndarray, input_ids: np.ndarray, decoder_ids: np.ndarray,
                  atol: float, rel_tol: float, float64_missing: str | None) -> dict:
    """The manifest's ``parity`` block: every figure, the rule, the references and the tokens compared."""
    report = {
        **absolute_report(c, steps=steps, mask=mask, atol=atol, rel_tol=rel_tol),
        "max_abs_diff_vs_float64": c.max_abs_diff_vs_float64,
        "fp32_max_abs_diff_vs_float64": c.fp32_max_abs_diff_vs_float64,
        "ratio": c.ratio,
        "k": c.k,
        "floor": c.floor,
        "float64_bound": c.float64_bound,
        "float64_reference": REFERENCE_FP64 if float64_missing is None else None,
        "float64_missing": float64_missing,
        "rule": RULE,
        "passed_by": c.passed_by,
        "tokens": {"input_ids": input_ids.tolist(), "attention_mask": mask.tolist(),
                   "decoder_input_ids": decoder_ids.tolist()},
    }
    return report


def refusal(c: Comparison, steps: int) -> str:
    """Why the gate refused, with every figure and the way out."""
    text = (f"the ONNX graphs' raw logits differ from PyTorch fp32 by up to {c.max_abs_diff:.3g} over {steps} "
            f"steps, above the absolute tolerance {c.tolerance:.3g} (atol + rel_tol x max|logit| {c.max_abs_logit:.3g})")
    if c.float64_bound is None:
        return text + ("; no float64 reference could be computed, so the fp32 figure alone decides. "
                       "If this is expected, raise atol / --atol.")
    return (text + f", and their distance to PyTorch float64, {c.max_abs_diff_vs_float64:.3g}, is "
            f"{c.ratio:.3g}x PyTorch fp32's own ({c.fp32_max_abs_diff_vs_float64:.3g}), above the bound "
            f"{c.float64_bound:.3g} (k = {c.k:g} x max(fp32's, floor {c.floor:.3g})). "
            "The graphs compute something other than the checkpoint; if this is expected, raise atol / --atol.")


def check_parity(torch_model, export_dir: Path, *, steps: int, atol: float, rel_tol: float) -> dict:
    """The absolute rule alone against PyTorch fp32 (used for the fp16 graphs, whose error is not float32's).

    Raises :class:`ParityError` when ``max|diff| > atol + rel_tol * max|logit|``.
    """
    from ..runtime.model import load

    runtime = load(export_dir)
    ids, mask = check_inputs(runtime.vocab_size)
    result = runtime.generate(input_ids=ids, attention_mask=mask, max_new_tokens=steps, min_new_tokens=steps)
    reference = torch_logits(torch_model, ids, mask, result.sequences[:, :-1])
    c = compare(result.logits, reference, None, atol=atol, rel_tol=rel_tol)
    report = absolute_report(c, steps=int(result.num_steps), mask=mask, atol=atol, rel_tol=rel_tol)
    if not c.passed:
        raise ParityError(
            f"{export_dir}: the ONNX graphs' raw logits differ from PyTorch by up to {c.max_abs_diff:.3g} "
            f"over {result.num_steps} steps, above the tolerance {c.tolerance:.3g} "
            f"(atol {atol:g} + rel_tol {rel_tol:g} x max|logit| {c.max_abs_logit:.3g}). "
            "If this is expected, raise atol / --atol."
        )
    return report
