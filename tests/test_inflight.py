"""In-flight batching: the decoder's self-attention mask, rows joining and leaving, and the core contract.

- A row that joins a running batch late (left-padded, padding masked) gets PyTorch's logits for it alone.
- Members with random options, joining at random steps, each equal ``rt.generate`` for that input alone:
  sequences equal, raw logits within the parity tolerance, whatever else shares the batch.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import SOURCES, assert_logits_match, tolerance
from t5ort.runtime.inflight import InflightBatch

torch = pytest.importorskip("torch")


def _torch_logits(model, source: list[int], target: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=torch.tensor([source]), decoder_input_ids=torch.tensor([target])).logits[0].numpy()


def test_late_row_left_padded_equals_pytorch_alone(sp_runtime, sp_torch):
    """Row B joins after A has 5 cached positions; A's and B's logits each equal PyTorch's solo run,
    teacher-forced; the sources differ in length (cross keys/values padded, encoder mask)."""
    model, tokenizer = sp_torch
    graphs = sp_runtime.graphs
    rng = np.random.default_rng(0)
    vocab = sp_runtime.vocab_size
    src_a = tokenizer(SOURCES[2]).input_ids
    src_b = tokenizer(SOURCES[1]).input_ids
    tgt_a = [0] + rng.integers(2, vocab, 10).tolist()
    tgt_b = [0] + rng.integers(2, vocab, 6).tolist()
    ref_a, ref_b = _torch_logits(model, src_a, tgt_a), _torch_logits(model, src_b, tgt_b)

    def encoded(src):
        return graphs.encode(np.array([src], np.int64), np.ones((1, len(src)), np.int64))

    state = graphs.join(None, encoded(src_a))
    got_a, got_b = [], []
    for t in range(5):
        logits, state = graphs.step(np.array([tgt_a[t]]), state)
        got_a.append(logits[0].copy())
    state = graphs.join(state, encoded(src_b))
    assert state.past_length == 5 and state.self_mask[1, :5].tolist() == [0] * 5
    for t in range(5, len(tgt_a)):
        logits, state = graphs.step(np.array([tgt_a[t], tgt_b[t - 5]]), state)
        got_a.append(logits[0].copy())
        got_b.append(logits[1].copy())
    assert_logits_match(np.array(got_a), ref_a)
    assert_logits_match(np.array(got_b), ref_b[:6])
    # A leaves: B's cache loses A's history it never attended to (5 leading positions), and B goes on.
    state = graphs.select(state, np.array([1]))
    assert state.past_length == 6 and state.self_mask[:, :6].all()
    assert state.encoder.attention_mask.shape == (1, len(src_b))  # the source padding went too
    logits, state = graphs.step(np.array([tgt_b[6]]), state)
    assert_logits_match(logits[:1], ref_b[6:7])


def _random_options(rng) -> dict:
    kind = rng.choice(["greedy", "greedy", "sample", "sample", "beam"])
    options: dict = {"max_new_tokens": int(rng.integers(1, 14))}
    if kind == "greedy":
        if rng.random() < 0.4:
            options["repetition_penalty"] = float(rng.choice([1.3, 0.8]))
        if rng.random() < 0.3:
            options["no_repeat_ngram_size"] = 2
    elif kind == "sample":
        options.update(do_sample=True, seed=int(rng.integers(0, 1000)), temperature=float(rng.choice([0.7, 1.0, 1.5])),
                       top_k=int(rng.choice([0, 5, 50])), top_p=float(rng.choice([1.0, 0.9])),
                       num_return_sequences=int(rng.choice([1, 1, 2])))
    else:
        beams = int(rng.integers(2, 4))
        options.update(num_beams=beams, num_return_sequences=int(rng.integers(1, beams + 1)))
    if rng.random() < 0.3:
        options["min_new_tokens"] = int(rng.integers(0, options["max_new_tokens"] + 1))
    return options


def _random_input(rng, runtime) -> np.ndarray:
    if rng.random() < 0.5:
        return runtime.encode_texts([SOURCES[int(rng.integers(0, len(SOURCES)))]])[0][0]
    length = int(rng.integers(1, 16))
    return np.append(rng.integers(2, runtime.vocab_size, length), 1).astype(np.int64)


@pytest.mark.parametrize("dead_row_fraction", [0.0, 1.0], ids=["remove-at-once", "remove-when-empty"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_members_joining_at_random_steps_equal_generate_alone(sp_runtime, seed, dead_row_fraction):
    rng = np.random.default_rng(seed)
    batch = InflightBatch(sp_runtime, dead_row_fraction=dead_row_fraction)
    pending = [(_random_input(rng, sp_runtime), _random_options(rng)) for _ in range(12)]
    collected: dict[int, list[np.ndarray]] = {}
    members = []
    while pending or len(batch):
        if pending and (not len(batch) or rng.random() < 0.35):
            new = [pending.pop(0) for _ in range(min(len(pending), int(rng.integers(1, 3))))]
            joined = [batch.prepare(ids, tag=len(members) + i, **opts) for i, (ids, opts) in enumerate(new)]
            batch.admit(joined, [ids for ids, _ in new])
            members.extend((m, ids, opts) for m, (ids, opts) in zip(joined, new))
        for out in batch.step():
            collected.setdefault(out.member.tag, []).append(out.logits.copy())
    assert batch.stats.joins > 1 and max(batch.stats.sizes) > 2
    if dead_row_fraction == 1.0:  # finished rows stay, and new members take them over in place
        assert batch.stats.fills > 0, batch.stats
    for member, ids, opts in members:
        alone = sp_runtime.generate(input_ids=ids[None], **opts)
        got = member.finalize()
        np.testing.assert_array_equal(got.sequences, alone.sequences, err_msg=str(opts))
        logits = np.stack(collected[member.tag], axis=1)  # [rows, steps, vocab]
        assert logits.shape == alone.logits.shape, opts
        np.testing.assert_allclose(logits, alone.logits, rtol=0, atol=tolerance(alone.logits), err_msg=str(opts))
        np.testing.assert_allclose(got.token_logprobs, alone.token_logprobs, rtol=0, atol=1e-4)
        if alone.beam_indices is not None:
            np.testing.assert_array_equal(got.beam_indices, alone.beam_indices)


def test_cancel_frees_rows_and_compacts(sp_runtime):
    batch = InflightBatch(sp_runtime, dead_row_fraction=0.0)
    ids = sp_runtime.encode_texts([SOURCES[0]])[0][0]
    long = batch.add(ids, max_new_tokens=30, min_new_tokens=30)
    for _ in range(6):
        batch.step()
    short = batch.add(ids, max_new_tokens=30, min_new_tokens=30)
    batch.step()
    assert batch.rows == 2 and batch.past_length == 7
    batch.cancel(long)
    batch.step()  # the cancelled row goes, and with it the 6 positions only it attended to
    assert batch.rows == 1 and batch.past_length == 2 and batch.stats.removed_columns == 6
    batch.cancel(short)
    assert batch.rows == 0 and batch.state is None
    with pytest.raises(ValueError, match="no live member"):
        batch.step()


def test_bad_member_options_are_refused_before_any_work(sp_runtime):
    batch = InflightBatch(sp_runtime)
    ids = np.array([5, 6, 1])
    with pytest.raises(ValueError, match="temperature"):
        batch.prepare(ids, temperature=0.5)
    with pytest.raises(ValueError, match="speculative"):
        batch.prepare(ids, prompt_lookup_num_tokens=3)
    with pytest.raises(ValueError, match=r"input_ids must lie in \[0"):
        batch.prepare(np.array([10**6]))
    assert batch.rows == 0


def test_finished_rows_taken_over_in_place_then_compacted_equal_generate_alone(sp_runtime):
    """A long member leaves; a new one takes its row in place (its history masked), and once no row
    attends to the oldest 20 positions they are dropped; both remaining members equal their solo runs."""
    batch = InflightBatch(sp_runtime, dead_row_fraction=1.0)
    src = [sp_runtime.encode_texts([s])[0][0] for s in SOURCES]
    options = dict(max_new_tokens=30, min_new_tokens=30)
    long = batch.add(src[2], **options)
    for _ in range(20):
        batch.step()
    kept = batch.add(src[1], tag="kept", **options)
    batch.cancel(long)
    logits: dict[str, list[np.ndarray]] = {"kept": [], "fill": []}
    for out in batch.step():
        logits[out.member.tag].append(out.logits.copy())
    fill = batch.prepare(src[0][:5], tag="fill", **options)  # fits the batch's source width
    wide_ids = np.concatenate([src[2][:-1], src[2]])  # longer than any source in the batch: it joins
    wide = batch.prepare(wide_ids, tag="wide", **options)
    logits["wide"] = []
    batch.admit([fill, wide], [src[0][:5], wide_ids])
    assert batch.stats.fills == 1 and fill.first == long.first and wide.first == 2 and batch.rows == 3
    while len(batch):
        for out in batch.step():
            logits[out.member.tag].append(out.logits.copy())
    assert batch.stats.compactions >= 1 and batch.stats.removed_columns >= 20, batch.stats
    for member, ids in ((kept, src[1]), (fill, src[0][:5]), (wide, wide_ids)):
        alone = sp_runtime.generate(input_ids=ids[None], **options)
        np.testing.assert_array_equal(member.finalize().sequences, alone.sequences)
        np.testing.assert_allclose(np.stack(logits[member.tag], axis=1), alone.logits, rtol=0,
                                   atol=tolerance(alone.logits))


def test_a_done_row_waiting_for_a_successor_does_not_keep_the_cache_wide(sp_runtime):
    """The oldest member finishes and nobody takes its row (a fifth of the batch: below dead_row_fraction, so
    it stays). Its history no longer counts: the positions only it attended to are compacted away, and the
    others still equal their solo runs. (Before, a done row kept every row's cache as wide as its own history,
    and in a busy server the cache grew to several times the live rows' histories.)"""
    batch = InflightBatch(sp_runtime, dead_row_fraction=0.25)
    src = [sp_runtime.encode_texts([s])[0][0] for s in SOURCES]
    old = batch.add(src[0], max_new_tokens=24, min_new_tokens=24)
    for _ in range(20):
        batch.step()
    options = dict(max_new_tokens=40, min_new_tokens=40)
    young = [batch.prepare(src[i % len(src)], tag=i, **options) for i in range(4)]
    batch.admit(young, [src[i % len(src)] for i in range(4)])
    logits: dict[int, list[np.ndarray]] = {i: [] for i in range(4)}
    widths = []
    while len(batch):
        for out in batch.step():
            if out.member is not old:
                logits[out.member.tag].append(out.logits.copy())
        widths.append(batch.past_length)
        if not old.live and len(batch):
            assert batch.rows == 5  # the done row waits (1 of 5 rows is not over a quarter)
    assert batch.stats.compactions >= 1 and batch.stats.removed_columns >= 20, batch.stats
    assert max(widths[5:40]) <= 40 + 8, widths  # about the young rows' own history, not 20 + 40 columns
    for i, member in enumerate(young):
        alone = sp_runtime.generate(input_ids=src[i % len(src)][None], **options)
        np.testing.assert_array_equal(member.finalize().sequences, alone.sequences)
        np.testing.assert_allclose(np.stack(logits[i], axis=1), alone.logits, rtol=0, atol=tolerance(alone.logits))


def test_a_longer_source_takes_a_done_row_after_the_sources_widen(sp_runtime):
    """A new member whose source is longer than every source in the batch takes a done member's row: the
    cross-attention keys/values widen (no copy of the self-attention cache, no extra row), and every member
    still equals its solo run."""
    batch = InflightBatch(sp_runtime, dead_row_fraction=0.5)
    src = [sp_runtime.encode_texts([s])[0][0] for s in SOURCES]
    short = [s[:4] for s in src[:3]]
    options = dict(max_new_tokens=12, min_new_tokens=12)
    first = [batch.prepare(ids, tag=i, **options) for i, ids in enumerate(short)]
    batch.admit(first, short)
    logits: dict[int, list[np.ndarray]] = {i: [] for i in range(4)}
    for _ in range(5):
        for out in batch.step():
            logits[out.member.tag].append(out.logits.copy())
    batch.cancel(first[1])
    long_ids = np.concatenate([src[2][:-1], src[2]])  # longer than the batch's 4 positions
    late = batch.prepare(long_ids, tag=3, **options)
    batch.admit([late], [long_ids])
    assert batch.stats.widenings == 1 and batch.stats.fills == 1 and batch.stats.joins == 1, batch.stats
    assert late.first == first[1].first and batch.rows == 3
    assert batch.state.encoder.attention_mask.shape[1] == len(long_ids)
    while len(batch):
        for out in batch.step():
            logits[out.member.tag].append(out.logits.copy())
    for member, ids in ((first[0], short[0]), (first[2], short[2]), (late, long_ids)):
        alone = sp_runtime.generate(input_ids=ids[None], **options)
        np.testing.assert_array_equal(member.finalize().sequences, alone.sequences)
        np.testing.assert_allclose(np.stack(logits[member.tag], axis=1), alone.logits, rtol=0,
                                   atol=tolerance(alone.logits))
