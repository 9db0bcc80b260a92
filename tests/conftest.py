"""Tiny seeded T5 checkpoints built on the spot, offline, and their t5ort exports.

- ``sp_checkpoint``: T5 v1.1 style (gated-GELU, untied head, 3 encoder / 2 decoder
  layers, d_kv * heads != d_model) with a sentencepiece tokenizer trained here on
  generated text. Its EOS row of the head is tuned so that some rows stop early.
- ``byte_checkpoint``: T5 v1.0 style (ReLU, tied embeddings with the d_model**-0.5
  scaling) with ByT5's byte tokenizer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from t5ort.export.vocab import generated_corpus, t5_tokenizer, train_sentencepiece  # noqa: E402

SOURCES = [
    "translate English to German: the small house near the river",
    "summarize: one cat sleeps",
    "the old dog runs over the green garden and the blue bird sings seven hundred songs",
]


def tiny_t5(vocab_size: int, *, v1_1: bool, seed: int = 0):
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=vocab_size,
        d_model=32,
        d_kv=12,  # 12 * 4 heads != d_model
        num_heads=4,
        d_ff=48,
        # Deeper encoder than decoder, like ByT5. (transformers 4.57's generate breaks on the
        # reverse: its cache is sized by num_layers.)
        num_layers=3,
        num_decoder_layers=2,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=20,
        feed_forward_proj="gated-gelu" if v1_1 else "relu",
        tie_word_embeddings=not v1_1,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    return T5ForConditionalGeneration(config).eval()


def make_eos_reachable(model, tokenizer) -> None:
    """Make EOS beat the token that row 0 of SOURCES produces at its third step, so rows end at different steps."""
    enc = tokenizer(SOURCES, return_tensors="pt", padding=True)
    with torch.no_grad():
        seq = model.generate(**enc, max_new_tokens=4, do_sample=False)
        target = int(seq[0, 3])
        model.lm_head.weight[1] = model.lm_head.weight[target] * 1.02


@pytest.fixture(scope="session")
def sp_checkpoint(tmp_path_factory) -> Path:

    root = tmp_path_factory.mktemp("sp_ckpt")
    spm_path = train_sentencepiece(root / "spiece.model", generated_corpus() + SOURCES)
    tokenizer = t5_tokenizer(spm_path)
    model = tiny_t5(len(tokenizer), v1_1=True)
    make_eos_reachable(model, tokenizer)
    ckpt = root / "model"
    model.save_pretrained(ckpt)
    tokenizer.save_pretrained(ckpt)
    return ckpt


@pytest.fixture(scope="session")
def byte_checkpoint(tmp_path_factory) -> Path:
    from transformers import ByT5Tokenizer

    ckpt = tmp_path_factory.mktemp("byte_ckpt") / "model"
    tokenizer = ByT5Tokenizer()
    model = tiny_t5(len(tokenizer), v1_1=False, seed=1)
    model.save_pretrained(ckpt)
    tokenizer.save_pretrained(ckpt)
    return ckpt


def _export(checkpoint: Path, tmp_path_factory, name: str) -> Path:
    import t5ort

    out = tmp_path_factory.mktemp(name) / "onnx"
    t5ort.export(checkpoint, out)
    return out


@pytest.fixture(scope="session")
def sp_export(sp_checkpoint, tmp_path_factory) -> Path:
    return _export(sp_checkpoint, tmp_path_factory, "sp_export")


@pytest.fixture(scope="session")
def byte_export(byte_checkpoint, tmp_path_factory) -> Path:
    return _export(byte_checkpoint, tmp_path_factory, "byte_export")


@pytest.fixture(scope="session")
def sp_runtime(sp_export):
    import t5ort

    return t5ort.load(sp_export)


@pytest.fixture(scope="session")
def sp_torch(sp_checkpoint):
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    return (
        T5ForConditionalGeneration.from_pretrained(sp_checkpoint).eval(),
        AutoTokenizer.from_pretrained(sp_checkpoint),
    )


def tolerance(reference: np.ndarray) -> float:
    """The absolute rule's bound: 1e-4 plus 2e-6 times the largest logit magnitude (for non-logit values
    compared at the logits' scale, e.g. processed scores); logits go through :func:`assert_logits_match`."""
    return 1e-4 + 2e-6 * float(np.abs(reference).max())


def assert_logits_match(ours: np.ndarray, reference: np.ndarray, float64: np.ndarray | None = None, *,
                        atol: float = 1e-4, rel_tol: float = 2e-6, mask: np.ndarray | None = None) -> None:
    """The one rule every test uses to judge t5ort's raw logits against transformers': the export gate's.

    Passes when ``max|ours - reference| <= atol + rel_tol * max|logit|`` (reference: PyTorch fp32), or,
    given the float64 logits of the same tokens, when t5ort's distance to them is at most k times
    PyTorch fp32's own (:mod:`t5ort.export.parity`): t5ort is judged against what float32 can do at all.
    ``mask`` (bool, broadcast over the last axis) selects the positions compared.
    """
    from t5ort.export.parity import compare

    assert ours.shape == reference.shape, (ours.shape, reference.shape)
    if mask is not None:
        ours, reference = ours[mask], reference[mask]
        float64 = None if float64 is None else float64[mask]
    c = compare(ours, reference, float64, atol=atol, rel_tol=rel_tol)
    assert c.passed, (
        f"raw logits differ from PyTorch fp32 by {c.max_abs_diff:.3g} > {c.tolerance:.3g}"
        + ("" if float64 is None else f", and from float64 by {c.max_abs_diff_vs_float64:.3g} > bound "
           f"{c.float64_bound:.3g} ({c.k:g} x fp32's own {c.fp32_max_abs_diff_vs_float64:.3g})"))


@pytest.fixture(scope="session")
def ill_checkpoint(tmp_path_factory) -> Path:
    """T5 v1.1-like activations (feed-forward outputs > 65504, logits near 60): see variants.build_ill_conditioned."""
    from variants import build_ill_conditioned

    ckpt = tmp_path_factory.mktemp("ill_ckpt") / "model"
    build_ill_conditioned(ckpt)
    return ckpt


@pytest.fixture(scope="session")
def ill_export(ill_checkpoint, tmp_path_factory) -> Path:
    return _export(ill_checkpoint, tmp_path_factory, "ill_export")
