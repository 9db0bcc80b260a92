"""Greedy decoding against transformers' generate(output_logits=True): sequences, raw logits, scores, texts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import SOURCES, assert_logits_match, tolerance


def hf_generate(model, tokenizer, texts, **kwargs):
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(
            **enc, do_sample=False, num_beams=1, output_logits=True, output_scores=True,
            return_dict_in_generate=True, **kwargs,
        )
    return (
        out.sequences.numpy(),
        torch.stack(out.logits, dim=1).numpy(),
        torch.stack(out.scores, dim=1).numpy(),
        tokenizer.batch_decode(out.sequences, skip_special_tokens=True),
    )


BATCHES = {"batch1": SOURCES[:1], "padded_batch": SOURCES}


@pytest.mark.parametrize("batch", sorted(BATCHES))
@pytest.mark.parametrize("min_new_tokens", [0, 6])
def test_greedy_matches_transformers(sp_runtime, sp_torch, batch, min_new_tokens):
    texts = BATCHES[batch]
    model, tokenizer = sp_torch
    seq, logits, scores, decoded = hf_generate(
        model, tokenizer, texts, max_new_tokens=12, min_new_tokens=min_new_tokens
    )
    res = sp_runtime.generate(texts, max_new_tokens=12, min_new_tokens=min_new_tokens, output_scores=True)

    np.testing.assert_array_equal(res.sequences, seq)
    assert res.logits.shape == logits.shape == (len(texts), seq.shape[1] - 1, sp_runtime.vocab_size)
    diff = np.abs(res.logits - logits).max()
    print(f"{batch} min_new_tokens={min_new_tokens}: max |raw logit diff| = {diff:.3g}")
    assert_logits_match(res.logits, logits)
    np.testing.assert_allclose(res.scores, scores, rtol=0, atol=tolerance(logits))
    assert list(res.texts) == decoded


def test_rows_finish_at_different_steps_and_get_padding(sp_runtime, sp_torch):
    """The fixture makes row 0 stop early; the others go on; finished rows are padded like transformers."""
    model, tokenizer = sp_torch
    seq, logits, _, _ = hf_generate(model, tokenizer, SOURCES, max_new_tokens=12)
    res = sp_runtime.generate(SOURCES, max_new_tokens=12)
    eos_steps = [np.flatnonzero(row[1:] == 1) for row in res.sequences]
    assert eos_steps[0].size and eos_steps[0][0] < res.num_steps - 1, "row 0 must stop early"
    assert any(s.size == 0 or s[0] > eos_steps[0][0] for s in eos_steps[1:]), "another row must go on"
    first = eos_steps[0][0]
    assert (res.sequences[0, first + 2:] == 0).all()
    np.testing.assert_array_equal(res.sequences, seq)
    # The logits of finished rows are still what the model computes on the pad tokens.
    assert_logits_match(res.logits[0, first + 1:], logits[0, first + 1:])


def test_token_logprobs_are_log_softmax_of_raw_logits(sp_runtime):
    res = sp_runtime.generate(SOURCES, max_new_tokens=12)
    logits = res.logits.astype(np.float64)
    logsoftmax = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(
        -1, keepdims=True
    )
    chosen = np.take_along_axis(logsoftmax, res.sequences[:, 1:, None], axis=-1)[..., 0]
    done_before = np.cumsum(np.isin(res.sequences[:, 1:], [1]), axis=1) - np.isin(res.sequences[:, 1:], [1])
    expected = np.where(done_before > 0, 0.0, chosen)
    np.testing.assert_allclose(res.token_logprobs, expected, atol=1e-5)
    assert (res.token_logprobs <= 0).all()


def test_input_ids_path_equals_texts_path(sp_runtime, sp_torch):
    _, tokenizer = sp_torch
    enc = tokenizer(SOURCES, return_tensors="np", padding=True)
    a = sp_runtime.generate(SOURCES, max_new_tokens=8)
    b = sp_runtime.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], max_new_tokens=8)
    np.testing.assert_array_equal(a.sequences, b.sequences)
    np.testing.assert_array_equal(a.logits, b.logits)


def test_output_logits_false_allocates_no_logits(sp_runtime):
    """The same generation traced with and without output_logits: only the first holds the
    [rows, steps, vocab] logits (the cache buffers, host memory, are in both peaks alike)."""
    import tracemalloc

    steps, rows = 64, 8
    texts = (SOURCES * 3)[:rows]

    def traced(output_logits: bool):
        sp_runtime.generate(texts, max_new_tokens=steps, min_new_tokens=steps, output_logits=output_logits)
        tracemalloc.start()
        result = sp_runtime.generate(texts, max_new_tokens=steps, min_new_tokens=steps, output_logits=output_logits)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return result, peak

    (full, peak_full), (lean, peak_lean) = traced(True), traced(False)
    logits_bytes = full.logits.nbytes
    assert lean.logits is None and lean.scores is None
    np.testing.assert_array_equal(lean.sequences, full.sequences)
    np.testing.assert_allclose(lean.token_logprobs, full.token_logprobs)
    assert peak_full - peak_lean > 0.75 * logits_bytes, (
        f"peak {peak_lean} bytes traced without the logits, {peak_full} with them ({logits_bytes} bytes)")


def test_byte_model_matches_transformers_and_decodes_like_byt5(byte_export, byte_checkpoint):
    import t5ort
    from transformers import ByT5Tokenizer, T5ForConditionalGeneration

    model = T5ForConditionalGeneration.from_pretrained(byte_checkpoint).eval()
    tokenizer = ByT5Tokenizer.from_pretrained(byte_checkpoint)
    texts = ["Grüße aus Köln", "x"]
    seq, logits, _, decoded = hf_generate(model, tokenizer, texts, max_new_tokens=10)
    res = t5ort.load(byte_export).generate(texts, max_new_tokens=10)
    np.testing.assert_array_equal(res.sequences, seq)
    assert_logits_match(res.logits, logits)
    assert list(res.texts) == decoded
    # The byte tokenizer itself, on text with multi-byte characters.
    rt = t5ort.load(byte_export)
    ids, mask = rt.encode_texts(texts)
    np.testing.assert_array_equal(ids, tokenizer(texts, padding=True, return_tensors="np")["input_ids"])
    sample = np.array([tokenizer("ä€ ok")["input_ids"] + [0, 0, 300]])
    assert rt.tokenizer.decode_batch(sample) == tokenizer.batch_decode(sample, skip_special_tokens=True)
