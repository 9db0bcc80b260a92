"""Beam search against transformers: sequences, sequences_scores, beam_indices, per-step raw logits and scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import SOURCES, assert_logits_match, tolerance

BATCHES = {"batch1": SOURCES[:1], "padded_batch": SOURCES}

CASES = [
    dict(num_beams=2),
    dict(num_beams=4, num_return_sequences=3),
    dict(num_beams=3, length_penalty=0.6, early_stopping=True),
    dict(num_beams=4, length_penalty=1.5, early_stopping="never", num_return_sequences=2),
    dict(num_beams=3, min_new_tokens=5, no_repeat_ngram_size=2),
]


def hf_beam(model, tokenizer, texts, **kwargs):
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model.generate(**enc, do_sample=False, output_logits=True, output_scores=True,
                              return_dict_in_generate=True, **kwargs)


@pytest.mark.parametrize("batch", sorted(BATCHES))
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_beam_search_matches_transformers(sp_runtime, sp_torch, batch, case):
    model, tokenizer = sp_torch
    texts = BATCHES[batch]
    ref = hf_beam(model, tokenizer, texts, max_new_tokens=10, **case)
    res = sp_runtime.generate(texts, max_new_tokens=10, output_scores=True, **case)

    logits = torch.stack(ref.logits, dim=1).numpy()
    scores = torch.stack(ref.scores, dim=1).numpy()
    np.testing.assert_array_equal(res.sequences, ref.sequences.numpy())
    np.testing.assert_array_equal(res.beam_indices, ref.beam_indices.numpy())
    np.testing.assert_allclose(res.sequences_scores, ref.sequences_scores.numpy(), rtol=0, atol=1e-4)
    assert res.logits.shape == logits.shape == (len(texts) * case["num_beams"], logits.shape[1], sp_runtime.vocab_size)
    print(f"{batch} {case}: max |raw logit diff| = {np.abs(res.logits - logits).max():.3g}")
    assert_logits_match(res.logits, logits)
    finite = np.isfinite(scores)
    np.testing.assert_array_equal(np.isfinite(res.scores), finite)
    np.testing.assert_allclose(res.scores[finite], scores[finite], rtol=0, atol=tolerance(logits))
    assert list(res.texts) == tokenizer.batch_decode(ref.sequences, skip_special_tokens=True)


def test_beam_token_logprobs_follow_beam_indices(sp_runtime):
    res = sp_runtime.generate(SOURCES, max_new_tokens=10, num_beams=3, num_return_sequences=2)
    logits = res.logits.astype(np.float64)
    logsoftmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    for h in range(len(res.sequences)):
        for t in range(res.beam_indices.shape[1]):
            row = res.beam_indices[h, t]
            expected = 0.0 if row < 0 else logsoftmax[row, t, res.sequences[h, t + 1]]
            assert res.token_logprobs[h, t] == pytest.approx(expected, abs=1e-5)


def test_one_beam_is_greedy(sp_runtime):
    a = sp_runtime.generate(SOURCES, max_new_tokens=8)
    b = sp_runtime.generate(SOURCES, max_new_tokens=8, num_beams=1)
    np.testing.assert_array_equal(a.sequences, b.sequences)
    assert b.beam_indices is None and b.sequences_scores is None


@pytest.mark.parametrize("seed", range(4))
def test_top_k_equals_a_stable_full_sort(seed):
    """The chunked top_k against argsort, on long rows with many ties, -inf and a lone winner per chunk."""
    from t5ort.runtime.strategies import top_k

    rng = np.random.default_rng(seed)
    for _ in range(200):
        rows, m, k = int(rng.integers(1, 4)), int(rng.integers(1, 5000)), int(rng.integers(1, 17))
        k = min(k, m)
        x = rng.integers(-3, 3, size=(rows, m)).astype(np.float32)  # ties everywhere
        x[:, rng.integers(0, m, size=3)] = rng.choice([-np.inf, 5.0, 0.5], size=3)
        if seed % 2:
            x = rng.standard_normal((rows, m)).astype(np.float32)
        np.testing.assert_array_equal(top_k(x, k), np.argsort(-x, axis=1, kind="stable")[:, :k])


@pytest.mark.parametrize("seed", range(4))
def test_top_k_shifted_equals_the_top_k_of_the_sum(seed):
    """Beam search's top-k over every beam's scores plus its running score, against a stable sort of the sum
    written out (groups whose length is no multiple of the chunk, ties across groups, -inf, -1e9 offsets)."""
    from t5ort.runtime.strategies import NEG, top_k_shifted

    rng = np.random.default_rng(seed)
    for _ in range(200):
        rows, groups, v = int(rng.integers(1, 4)), int(rng.integers(1, 6)), int(rng.integers(1, 1500))
        k = min(int(rng.integers(1, 17)), groups * v)
        x = rng.integers(-3, 3, size=(rows, groups, v)).astype(np.float32)  # ties everywhere
        x[:, :, rng.integers(0, v, size=3)] = rng.choice([-np.inf, 5.0, 0.5], size=3)
        offsets = rng.integers(-2, 2, size=(rows, groups)).astype(np.float32)
        if seed % 2:
            x, offsets = rng.standard_normal((rows, groups, v)).astype(np.float32), rng.standard_normal(
                (rows, groups)).astype(np.float32)
        offsets[:, 1:] = np.where(rng.random((rows, groups - 1)) < 0.3, NEG, offsets[:, 1:])
        summed = (x + offsets[:, :, None]).reshape(rows, groups * v)
        np.testing.assert_array_equal(top_k_shifted(x, offsets, k), np.argsort(-summed, axis=1, kind="stable")[:, :k])
