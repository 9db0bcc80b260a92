"""Reliability: limits, numeric faults, disk space, concurrency, left padding, and a property test."""

from __future__ import annotations

import errno
import shutil
import threading

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import t5ort
from conftest import SOURCES, assert_logits_match
from t5ort import ExportError
from t5ort.export import exporter
from t5ort.runtime.numerics import logsumexp


def _no_work(monkeypatch, runtime):
    def boom(*args, **kwargs):
        raise AssertionError("work started before the request was checked")

    monkeypatch.setattr(runtime.graphs, "encode", boom)


def test_caps_set_at_load_refuse_requests_before_any_work(sp_export, monkeypatch):
    rt = t5ort.load(sp_export, max_input_tokens=8, max_new_tokens=5)
    _no_work(monkeypatch, rt)
    with pytest.raises(ValueError, match="over this runtime's max_input_tokens=8"):
        rt.generate(input_ids=np.full((1, 9), 5), max_new_tokens=2)
    with pytest.raises(ValueError, match="max_new_tokens=6 is over this runtime's cap of 5"):
        rt.generate(["a"], max_new_tokens=6)
    budget = t5ort.load(sp_export, max_result_bytes=1_000)
    _no_work(monkeypatch, budget)
    rows, steps, vocab = 3, 5, rt.vocab_size
    assert rows * steps * vocab * 4 > 1_000
    with pytest.raises(MemoryError, match=r"would need about .* GiB, over this runtime's max_result_bytes"):
        budget.generate(SOURCES, max_new_tokens=steps)
    with pytest.raises(MemoryError, match="the logits of score"):
        budget.score(SOURCES, ["one two three four five six seven eight nine ten"] * 3)
    with pytest.raises(ValueError, match="max_result_bytes must be a positive int"):
        t5ort.load(sp_export, max_result_bytes=0)


def test_logits_off_fits_where_logits_do_not(sp_export):
    rt = t5ort.load(sp_export, max_result_bytes=1_000)
    res = rt.generate(SOURCES, max_new_tokens=5, output_logits=False)
    assert res.logits is None and res.sequences.shape[0] == 3


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_logits_are_caught_by_the_graphs_logsumexp(sp_export, tmp_path, bad):
    """Any NaN or infinite raw logit makes the graph's logsumexp of its row non-finite: the loop checks [rows]
    values, not [rows, vocab], and names the step and rows; scoring and in-flight batches check the same way."""
    from broken_graphs import poison_logits

    d = tmp_path / "poisoned"
    shutil.copytree(sp_export, d)
    poison_logits(d, token=7, value=bad)
    rt = t5ort.load(d)
    with pytest.raises(FloatingPointError, match=r"at step 0, decoder rows \[0, 1, 2\]"):
        rt.generate(SOURCES, max_new_tokens=4)
    with pytest.raises(FloatingPointError, match=r"in score\(\), decoder rows \[0, 1\]"):
        rt.score(SOURCES[:2], ["one two", "three"])
    encoded = rt.encode(SOURCES)
    lse = np.empty((3, 1), np.float32)
    logits, _ = rt.graphs.forward(np.zeros((3, 1), np.int64), rt.graphs.start(encoded), logsumexp_out=lse)
    assert np.isnan(logits[:, 0, 7]).all() if np.isnan(bad) else (logits[:, 0, 7] == bad).all()
    assert not np.isfinite(lse).any()


def test_the_graphs_logsumexp_is_the_logits_logsumexp(sp_runtime):
    encoded = sp_runtime.encode(SOURCES)
    g = sp_runtime.graphs
    lse = np.empty((3, 5), np.float32)
    logits, _ = g.forward(np.arange(15, dtype=np.int64).reshape(3, 5) % 40, g.start(encoded), logsumexp_out=lse)
    np.testing.assert_allclose(lse, logsumexp(logits.astype(np.float64))[..., 0], rtol=1e-6, atol=1e-5)


def test_disk_full_during_export_is_reported_and_leaves_nothing(sp_checkpoint, tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(exporter, "_export_graphs", full)
    with pytest.raises(ExportError, match="not enough disk space"):
        t5ort.export(sp_checkpoint, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_too_little_free_space_is_refused_up_front(sp_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(exporter.shutil, "disk_usage", lambda path: type("U", (), {"free": 1000})())
    with pytest.raises(ExportError, match=r"needs about .* MiB while writing, 0 MiB are free"):
        t5ort.export(sp_checkpoint, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_one_runtime_from_eight_threads_gives_serial_results(sp_runtime):
    jobs = [
        ("generate", dict(max_new_tokens=8)),
        ("generate", dict(max_new_tokens=8, num_beams=3)),
        ("generate", dict(max_new_tokens=8, do_sample=True, seed=5)),
        ("score", None),
        ("stream", dict(max_new_tokens=8)),
    ] * 4

    def run(kind, kwargs):
        if kind == "score":
            return sp_runtime.score(SOURCES, ["the red house"] * 3).logits
        if kind == "stream":
            return np.stack([e.logits for e in sp_runtime.stream(SOURCES, **kwargs)], 1)
        return sp_runtime.generate(SOURCES, **kwargs).logits

    serial = [run(*job) for job in jobs]
    results: list = [None] * len(jobs)
    barrier = threading.Barrier(8)

    def worker(indices):
        barrier.wait()
        for i in indices:
            results[i] = run(*jobs[i])

    threads = [threading.Thread(target=worker, args=(range(k, len(jobs), 8),)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    for got, expected in zip(results, serial):
        np.testing.assert_array_equal(got, expected)


def test_left_padded_and_empty_inputs_match_transformers(sp_runtime, sp_torch):
    model, tokenizer = sp_torch
    enc = tokenizer(SOURCES + [""], return_tensors="np", padding=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    left_ids, left_mask = np.zeros_like(ids), np.zeros_like(mask)
    for row in range(len(ids)):  # move the padding to the left
        n = int(mask[row].sum())
        left_ids[row, -n:], left_mask[row, -n:] = ids[row, :n], 1
    res = sp_runtime.generate(input_ids=left_ids, attention_mask=left_mask, max_new_tokens=8)
    with torch.no_grad():
        ref = model.generate(torch.from_numpy(left_ids), attention_mask=torch.from_numpy(left_mask), max_new_tokens=8,
                             do_sample=False, output_logits=True, return_dict_in_generate=True)
    logits = torch.stack(ref.logits, 1).numpy()
    np.testing.assert_array_equal(res.sequences, ref.sequences.numpy())
    assert_logits_match(res.logits, logits)


EXPECTED_ERRORS = (ValueError, TypeError, MemoryError)
PROPERTY_CASES = {"generate": 0, "score": 0, "refused": 0}


@st.composite
def requests(draw, vocab: int):
    """Mostly well-formed requests, each with at most a few of the faults a caller can make."""
    rows = draw(st.integers(1, 4))
    length = draw(st.integers(1, 12))
    ids = np.array(draw(st.lists(st.integers(0, vocab - 1), min_size=rows * length, max_size=rows * length)),
                   dtype=np.int64).reshape(rows, length)
    mask = None
    if draw(st.booleans()):
        mask = np.array(draw(st.lists(st.integers(0, 1), min_size=ids.size, max_size=ids.size)),
                        dtype=np.int64).reshape(ids.shape)
        mask[:, 0] = 1
    kinds = st.sampled_from(["empty", "out_of_vocab", "negative", "float", "int32", "uint8",
                             "mask_shape", "mask_values", "mask_row_empty", "one_d"])
    faults = draw(st.one_of(st.just([]), st.lists(kinds, min_size=1, max_size=2)))
    for fault in faults:
        if fault == "empty":
            ids = ids[:0]
        elif fault == "out_of_vocab" and ids.size:
            ids = ids.astype(np.int64)
            ids.flat[0] = vocab + draw(st.integers(0, 5))
        elif fault == "negative" and ids.size:
            ids = ids.astype(np.int64)
            ids.flat[-1] = -draw(st.integers(1, 5))
        elif fault == "float":
            ids = ids.astype(np.float32)
        elif fault == "int32":
            ids = ids.astype(np.int32)
        elif fault == "uint8":
            ids = np.clip(ids, 0, 255).astype(np.uint8)
        elif fault == "mask_shape":
            mask = np.ones((ids.shape[0] + 1, ids.shape[-1]), dtype=np.int64)
        elif fault == "mask_values":
            mask = np.full(ids.shape, 2, dtype=np.int64)
        elif fault == "mask_row_empty":
            mask = np.ones(ids.shape, dtype=np.int64)
            mask[:1] = 0  # no row to empty where an earlier fault left none
        elif fault == "one_d":
            ids = ids.reshape(-1)
    options = draw(st.fixed_dictionaries({}, optional={
        "max_new_tokens": st.integers(-1, 6),
        "min_new_tokens": st.integers(-1, 4),
        "num_beams": st.integers(0, 3),
        "do_sample": st.booleans(),
        "top_p": st.one_of(st.floats(0.05, 1.0), st.floats(-0.5, 1.5), st.just(float("nan"))),
        "temperature": st.one_of(st.floats(0.1, 3), st.just(0.0), st.just(float("nan"))),
        "repetition_penalty": st.floats(0, 2),
        "no_repeat_ngram_size": st.integers(-1, 3),
        "output_scores": st.booleans(),
    }))
    return ids, mask, options


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_property_generate_and_score_never_crash(sp_runtime, data):
    vocab = sp_runtime.vocab_size
    ids, mask, options = data.draw(requests(vocab))
    try:
        if data.draw(st.booleans()):
            rows = ids.shape[0] if ids.ndim else 0
            targets = np.array(data.draw(st.lists(st.integers(-20, vocab + 2), min_size=rows * 3,
                                                  max_size=rows * 3)), dtype=np.int64)
            targets = np.where(targets < 0, -100, targets).reshape(rows, 3)
            res = sp_runtime.score(input_ids=ids, attention_mask=mask, target_ids=targets)
            PROPERTY_CASES["score"] += 1
            assert res.logits.shape == (targets.shape[0], 3, vocab) and np.isfinite(res.logits).all()
            assert np.isfinite(res.total_logprob).all() and (res.token_logprobs <= 0).all()
            return
        res = sp_runtime.generate(input_ids=ids, attention_mask=mask, **options)
        PROPERTY_CASES["generate"] += 1
    except EXPECTED_ERRORS:
        PROPERTY_CASES["refused"] += 1
        return
    rows = res.logits.shape[0]
    assert res.sequences.ndim == 2 and res.sequences.dtype == np.int64
    assert ((res.sequences >= 0) & (res.sequences < vocab)).all()
    assert res.logits.shape[1:] == (res.sequences.shape[1] - 1, vocab) or res.beam_indices is not None
    assert np.isfinite(res.logits).all() and res.token_logprobs.shape[0] == res.sequences.shape[0]
    assert rows >= res.sequences.shape[0]


def test_property_cases_were_tried():
    """Runs after the property test (file order): both paths and refusals were exercised."""
    print(f"property test: {PROPERTY_CASES}")
    assert PROPERTY_CASES["generate"] > 20 and PROPERTY_CASES["score"] > 10 and PROPERTY_CASES["refused"] > 20
