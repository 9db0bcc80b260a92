"""Every T5-family variant t5ort exports, against transformers: greedy, beam search, score(), a long input.

The variants (T5 v1.0 and v1.1, mT5, ByT5, LongT5 with local and transient-global
attention, UMT5) are tiny seeded checkpoints built by ``variants.py``; each is
exported once per session. Each test runs on a batch of one and on a right-padded
batch of three rows of different lengths (longer than LongT5's local radius).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_logits_match
from variants import (
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

import t5ort


@dataclass
class Built:
    name: str
    checkpoint: Path
    export: Path
    runtime: object
    model: object
    tokenizer: object


@pytest.fixture(scope="session")
def built_variants(tmp_path_factory):
    """``get(name)``: the variant's checkpoint, its t5ort export and both loaded, built once per session."""
    cache: dict[str, Built] = {}

    def get(name: str) -> Built:
        if name not in cache:
            root = tmp_path_factory.mktemp(f"variant-{name}")
            checkpoint = build(name, root / "checkpoint")
            t5ort.export(checkpoint, root / "onnx")
            model, tokenizer = load_torch(checkpoint)
            cache[name] = Built(name, checkpoint, root / "onnx", t5ort.load(root / "onnx"), model, tokenizer)
        return cache[name]

    return get


@pytest.fixture(scope="session", params=list(VARIANTS))
def variant(request, built_variants) -> Built:
    return built_variants(request.param)


def test_manifest_geometry_matches_the_config(variant):
    config = variant.model.config
    m = json.loads((variant.export / "t5ort.json").read_text())
    g = m["geometry"]
    assert m["model_type"] == config.model_type
    assert (g["num_layers"], g["num_decoder_layers"], g["d_kv"], g["tie_word_embeddings"]) == (
        config.num_layers, config.num_decoder_layers, config.d_kv, config.tie_word_embeddings,
    )
    assert (g["vocab_size"], g["d_model"], g["num_heads"], g["d_ff"], g["feed_forward_proj"]) == (
        config.vocab_size, config.d_model, config.num_heads, config.d_ff, config.feed_forward_proj,
    )
    assert g["vocab_size"] == len(variant.tokenizer)
    assert m["tokenizer"]["kind"] == ("byt5" if variant.name == "byt5" else "tokenizers")
    assert len(m["graphs"]["decoder"]["io"]["cache_key"]) == config.num_decoder_layers
    parity = m["parity"]
    print(f"{variant.name}: export check max |raw logit diff| = {parity['max_abs_diff']:.3g}")
    assert 0 <= parity["max_abs_diff"] <= parity["tolerance"]


@pytest.mark.parametrize("batch", sorted(BATCHES))
def test_greedy_matches_transformers(variant, batch):
    texts = BATCHES[batch]
    ids, mask = variant.runtime.encode_texts(texts)
    enc = variant.tokenizer(texts, return_tensors="np", padding=True)
    np.testing.assert_array_equal(ids, enc["input_ids"])
    np.testing.assert_array_equal(mask, enc["attention_mask"])

    ref = hf_generate(variant.model, variant.tokenizer, texts, max_new_tokens=12)
    res = variant.runtime.generate(texts, max_new_tokens=12)

    np.testing.assert_array_equal(res.sequences, ref["sequences"])
    assert res.logits.shape == ref["logits"].shape == (len(texts), res.num_steps, variant.runtime.vocab_size)
    diff = np.abs(res.logits - ref["logits"]).max()
    print(f"{variant.name} greedy {batch}: max |raw logit diff| = {diff:.3g}")
    assert_logits_match(res.logits, ref["logits"])
    assert list(res.texts) == ref["texts"]


@pytest.mark.parametrize("batch", sorted(BATCHES))
def test_beam_search_matches_transformers(variant, batch):
    texts = BATCHES[batch]
    options = dict(max_new_tokens=10, num_beams=3, num_return_sequences=2)
    ref = hf_generate(variant.model, variant.tokenizer, texts, **options)
    res = variant.runtime.generate(texts, **options)

    np.testing.assert_array_equal(res.sequences, ref["sequences"])
    np.testing.assert_array_equal(res.beam_indices, ref["beam_indices"])
    np.testing.assert_allclose(res.sequences_scores, ref["sequences_scores"], rtol=0, atol=1e-4)
    # Logits of every step run; the sequences end with the longest returned hypothesis, which may be shorter
    # (transformers trims its sequences the same way).
    assert res.logits.shape == ref["logits"].shape == (len(texts) * 3, res.logits.shape[1], variant.runtime.vocab_size)
    assert res.logits.shape[1] >= res.num_steps
    diff = np.abs(res.logits - ref["logits"]).max()
    print(f"{variant.name} beam-3 {batch}: max |raw logit diff| = {diff:.3g}, "
          f"max |sequences_scores diff| = {np.abs(res.sequences_scores - ref['sequences_scores']).max():.3g}")
    assert_logits_match(res.logits, ref["logits"])
    assert list(res.texts) == ref["texts"]


@pytest.mark.parametrize("batch", sorted(BATCHES))
def test_score_matches_transformers(variant, batch):
    texts, targets = BATCHES[batch], TARGET_BATCHES[batch]
    logits, labels = hf_score(variant.model, variant.tokenizer, texts, targets)
    res = variant.runtime.score(texts, targets)

    np.testing.assert_array_equal(res.target_ids, labels)
    assert res.logits.shape == logits.shape
    diff = np.abs(res.logits - logits).max()
    print(f"{variant.name} score {batch}: max |raw logit diff| = {diff:.3g}")
    assert_logits_match(res.logits, logits)


def test_some_rows_finish_early(built_variants):
    """The EOS-tuned variants stop some rows of the padded batch early and let others go on."""
    for name in ("t5-v1.1", "longt5-tglobal", "umt5"):
        res = built_variants(name).runtime.generate(BATCHES["padded3"], max_new_tokens=12)
        stopped = (res.sequences[:, 1:] == 1).any(axis=1)
        assert stopped.any() and not stopped.all(), (name, res.sequences)


def test_long_input_matches_transformers(built_variants):
    """600 input tokens (many LongT5 blocks, global blocks and relative-position buckets) and 64 new tokens."""
    v = built_variants(LONG_INPUT_VARIANT)
    ids = long_input_ids(v.runtime.vocab_size)
    options = dict(max_new_tokens=LONG_NEW_TOKENS, min_new_tokens=LONG_NEW_TOKENS)
    ref = hf_generate(v.model, input_ids=ids, **options)
    res = v.runtime.generate(input_ids=ids, **options)

    assert ids.shape == (1, LONG_INPUT_TOKENS) and res.num_steps == LONG_NEW_TOKENS
    np.testing.assert_array_equal(res.sequences, ref["sequences"])
    diff = np.abs(res.logits - ref["logits"]).max()
    print(f"{v.name} long input {LONG_INPUT_TOKENS} -> {LONG_NEW_TOKENS}: max |raw logit diff| = {diff:.3g}")
    assert_logits_match(res.logits, ref["logits"])


@pytest.mark.parametrize("length", [1, 3, 4, 9])
def test_input_shorter_than_the_global_block(built_variants, length):
    """No global block at all: the encoder's Reshapes must read a 0 as a zero-size dimension, as PyTorch does."""
    v = built_variants("longt5-tglobal")
    ids = np.arange(5, 5 + length)[None]
    assert (length < v.model.config.global_block_size) == (length < 4)
    ref = hf_generate(v.model, input_ids=ids, max_new_tokens=6)
    res = v.runtime.generate(input_ids=ids, max_new_tokens=6)
    np.testing.assert_array_equal(res.sequences, ref["sequences"])
    assert_logits_match(res.logits, ref["logits"])


def test_fp16_export_of_every_variant_matches_fp32(variant, tmp_path):
    """The fp16 conversion finds its float32 islands in every variant's graphs and passes the export's
    parity gate against PyTorch fp32 (2e-2 + 1e-2 x max|logit|); teacher-forced on the fp32 greedy tokens,
    its logits stay within that bound of the fp32 ones (free-running greedy may flip near-ties)."""
    from t5ort.export.fp16 import FP16_ATOL, FP16_REL_TOL
    from variants import SOURCES

    t5ort.export(variant.checkpoint, tmp_path / "fp16", dtype="float16")
    half = t5ort.load(tmp_path / "fp16")
    assert half.manifest.dtype == "float16"
    ids, mask = variant.runtime.encode_texts(SOURCES)
    fp32 = variant.runtime.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8)
    scored = half.score(input_ids=ids, attention_mask=mask, target_ids=fp32.sequences[:, 1:])
    bound = FP16_ATOL + FP16_REL_TOL * float(np.abs(fp32.logits).max())
    np.testing.assert_allclose(scored.logits, fp32.logits, rtol=0, atol=bound)
