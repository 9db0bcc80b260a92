"""`t5ort check`: re-check an export against its PyTorch checkpoint on the user's own inputs.

Each input runs alone through the export (greedy, and beam search when asked) and through
transformers' ``generate`` with the same options; the export's raw logits are then compared
with PyTorch fp32 and float64 on the export's own tokens (teacher-forced), and judged by the
export gate's rule (:mod:`t5ort.export.parity`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..runtime.errors import ExportError
from . import parity

GEOMETRY_FIELDS = ("vocab_size", "d_model", "d_kv", "num_heads", "num_layers", "num_decoder_layers", "d_ff",
                   "feed_forward_proj", "tie_word_embeddings")


class CheckpointMismatchError(ExportError):
    """The checkpoint given to `t5ort check` is not the one the export was made from."""


@dataclass(frozen=True)
class InputCheck:
    """One input, one strategy: the figures and the verdict."""

    index: int
    text: str | None  # None for token-id inputs
    strategy: str  # "greedy" or "beam-B"
    sequences_equal: bool  # the export's sequence equals transformers' fp32 generate()
    steps: int
    max_abs_diff_vs_fp32: float
    max_abs_diff_vs_float64: float | None  # None without the float64 reference
    fp32_max_abs_diff_vs_float64: float | None
    ratio: float | None  # max_abs_diff_vs_float64 / fp32_max_abs_diff_vs_float64
    tolerance: float  # the absolute rule's bound on max_abs_diff_vs_fp32
    float64_bound: float | None  # k x max(fp32_max_abs_diff_vs_float64, floor)
    logits_passed_by: str | None  # "absolute", "float64" or None (refused)

    @property
    def passed(self) -> bool:
        """The logits pass the gate's rule and the sequences are equal."""
        return self.logits_passed_by is not None and self.sequences_equal


@dataclass(frozen=True)
class CheckResult:
    """What :func:`check` measured; ``passed`` when every input passed."""

    export_dir: str
    checkpoint: str
    inputs: tuple[InputCheck, ...]
    k: float
    atol: float
    rel_tol: float
    float64_reference: str | None  # what the float64 reference is; None where it could not be computed
    float64_missing: str | None  # why there is no float64 reference

    @property
    def passed(self) -> bool:
        return all(i.passed for i in self.inputs)

    def to_dict(self) -> dict:
        d = asdict(self)
        for item, check in zip(d["inputs"], self.inputs):
            item["passed"] = check.passed
        d["passed"] = self.passed
        return d


def check(
    out_dir: str | Path,
    checkpoint: str | Path,
    texts: Sequence[str] | None = None,
    *,
    input_ids: np.ndarray | None = None,
    attention_mask: np.ndarray | None = None,
    num_beams: int = 1,
    max_new_tokens: int = 20,
    atol: float = 1e-4,
    rel_tol: float = 2e-6,
    k: float = parity.K,
    progress: Callable[[str], None] | None = None,
) -> CheckResult:
    """See :func:`t5ort.export.check`."""
    say = progress or (lambda message: None)
    rows = _validate(texts, input_ids, attention_mask, num_beams, max_new_tokens)
    from ..runtime.model import load

    say(f"loading {out_dir}")
    runtime = load(out_dir)
    weights = runtime.manifest.quantization.get("weights")
    if weights:
        raise ExportError(
            f"{out_dir} holds {weights} graphs; t5ort check judges fp32 exports by float32's rule, which "
            f"{weights} weights cannot meet. Check the fp32 export of the same checkpoint; the {weights} graphs' "
            "fidelity against fp32 is stored in its t5ort.json under quantization.")
    say(f"loading {checkpoint}")
    torch_model = _load_checkpoint(checkpoint)
    verify_source(runtime.manifest, torch_model, Path(out_dir), Path(checkpoint))
    model64, missing = parity.float64_copy(torch_model)
    if missing:
        say(f"no float64 reference ({missing}): judging by the absolute rule against PyTorch fp32 only")
    inputs = _inputs(runtime, texts, input_ids, attention_mask) if rows else _default_inputs(runtime)
    checks = []
    strategies = [1] + ([num_beams] if num_beams > 1 else [])
    for index, (text, ids, mask) in enumerate(inputs):
        for beams in strategies:
            say(f"input {index + 1}/{len(inputs)}: {'greedy' if beams == 1 else f'beam-{beams}'}")
            checks.append(_check_one(runtime, torch_model, model64, index, text, ids, mask, beams, max_new_tokens,
                                     atol=atol, rel_tol=rel_tol, k=k))
    return CheckResult(str(out_dir), str(checkpoint), tuple(checks), k, atol, rel_tol,
                       None if missing else parity.REFERENCE_FP64, missing)


def _validate(texts, input_ids, attention_mask, num_beams, max_new_tokens) -> bool:
    """Raise on bad arguments; True when the caller gave inputs (else the gate's check inputs are used)."""
    if texts is not None and input_ids is not None:
        raise ValueError("pass texts or input_ids, not both.")
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not one string; wrap it: [text].")
    if texts is not None and (not texts or not all(isinstance(t, str) and t for t in texts)):
        raise ValueError("texts must be a non-empty list of non-empty strings.")
    if attention_mask is not None and input_ids is None:
        raise ValueError("attention_mask needs input_ids.")
    if not isinstance(num_beams, int) or num_beams < 1:
        raise ValueError(f"num_beams must be an int >= 1, got {num_beams!r}.")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}.")
    return texts is not None or input_ids is not None


def _load_checkpoint(checkpoint: str | Path):
    from transformers import AutoConfig

    from .exporter import load_float32

    try:
        AutoConfig.from_pretrained(str(checkpoint))
    except (OSError, ValueError) as exc:
        raise ExportError(f"--checkpoint {checkpoint}: cannot read a model config ({exc}); "
                          "pass the checkpoint directory the export was made from.") from exc
    return load_float32(checkpoint)


def verify_source(manifest, torch_model, out_dir: Path, checkpoint: Path) -> None:
    """Raise :class:`CheckpointMismatchError` unless ``torch_model`` is the checkpoint ``manifest`` was exported from.

    Compares the model type and geometry, then the checkpoint's sha256 fingerprint where the export
    records one (exports made before t5ort recorded it are compared by geometry only).
    """
    from .exporter import checkpoint_fingerprint

    source = manifest.source.get("model", "?")
    hint = f"pass the checkpoint {out_dir} was exported from (its t5ort.json names {source!r})."
    config = torch_model.config
    differ = [] if config.model_type == manifest.model_type else [
        f"model_type {manifest.model_type!r} vs {config.model_type!r}"]
    for name in GEOMETRY_FIELDS:
        ours, theirs = getattr(manifest.geometry, name), getattr(config, name)
        if ours != theirs:
            differ.append(f"{name} {ours!r} vs {theirs!r}")
    if differ:
        raise CheckpointMismatchError(
            f"--checkpoint {checkpoint} is not the source of {out_dir}: the export and the checkpoint differ in "
            f"{', '.join(differ)} (export vs checkpoint); {hint}")
    recorded = manifest.source.get("checkpoint_sha256")
    if recorded and recorded != checkpoint_fingerprint(torch_model):
        raise CheckpointMismatchError(
            f"--checkpoint {checkpoint} is not the source of {out_dir}: same geometry, but its weights differ "
            f"from the ones the export was made from (checkpoint sha256 {recorded[:12]}... recorded at export); "
            f"{hint}")


def _inputs(runtime, texts, input_ids, attention_mask) -> list[tuple[str | None, np.ndarray, np.ndarray]]:
    """One (text, ids [1, L], mask [1, L]) per input, padding stripped."""
    if texts is not None:
        rows = []
        for text in texts:
            ids, mask = runtime.encode_texts([text])
            rows.append((text, ids, mask))
        return rows
    ids = np.asarray(input_ids, dtype=np.int64)
    if ids.ndim != 2:
        raise ValueError(f"input_ids must be 2-D [N, L], got shape {ids.shape}.")
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask, dtype=np.int64)
    if mask.shape != ids.shape:
        raise ValueError(f"attention_mask shape {mask.shape} differs from input_ids shape {ids.shape}.")
    return [(None, ids[r:r + 1, :int(mask[r].sum())], mask[r:r + 1, :int(mask[r].sum())]) for r in range(len(ids))]


def _default_inputs(runtime):
    ids, mask = parity.check_inputs(runtime.vocab_size)
    return _inputs(runtime, None, ids, mask)


def _check_one(runtime, torch_model, model64, index, text, ids, mask, beams, max_new_tokens, *, atol, rel_tol, k):
    import torch

    options = dict(max_new_tokens=max_new_tokens, num_beams=beams)
    ours = runtime.generate(input_ids=ids, attention_mask=mask, **options)
    with torch.no_grad():
        ref = torch_model.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                                   do_sample=False, **options).numpy()
    sequences_equal = ours.sequences.shape == ref.shape and bool((ours.sequences == ref).all())
    decoder_ids = ours.sequences[:, :-1]
    if beams == 1:
        onnx_logits = ours.logits
    else:  # the returned beam, teacher-forced through the export
        onnx_logits = runtime.score(input_ids=ids, attention_mask=mask, target_ids=ours.sequences[:, 1:]).logits
    fp32 = parity.torch_logits(torch_model, ids, mask, decoder_ids)
    fp64 = None if model64 is None else parity.torch_logits(model64, ids, mask, decoder_ids)
    c = parity.compare(onnx_logits, fp32, fp64, atol=atol, rel_tol=rel_tol, k=k)
    return InputCheck(index, text, "greedy" if beams == 1 else f"beam-{beams}", sequences_equal,
                      int(decoder_ids.shape[1]), c.max_abs_diff, c.max_abs_diff_vs_float64,
                      c.fp32_max_abs_diff_vs_float64, c.ratio, c.tolerance, c.float64_bound, c.passed_by)
