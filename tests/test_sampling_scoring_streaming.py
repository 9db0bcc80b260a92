"""Sampling (teacher-forced through transformers, seeded), score(), stream(), transition scores, uncertainty."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import t5ort
from conftest import SOURCES, assert_logits_match

SAMPLING = [
    dict(),
    dict(temperature=0.7, top_k=0, top_p=0.9),
    dict(top_k=5, min_p=0.05),
    dict(typical_p=0.8, repetition_penalty=1.2, num_return_sequences=3),
]


def torch_forward_logits(model, tokenizer, texts, decoder_input_ids, repeat=1):
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(
            input_ids=enc["input_ids"].repeat_interleave(repeat, 0),
            attention_mask=enc["attention_mask"].repeat_interleave(repeat, 0),
            decoder_input_ids=torch.from_numpy(decoder_input_ids),
        ).logits.numpy()


@pytest.mark.parametrize("case", SAMPLING, ids=lambda c: "-".join(c) or "defaults")
def test_sampled_sequences_teacher_forced_through_transformers(sp_runtime, sp_torch, case):
    model, tokenizer = sp_torch
    res = sp_runtime.generate(SOURCES, max_new_tokens=12, do_sample=True, seed=7, output_scores=True, **case)
    repeat = case.get("num_return_sequences", 1)
    assert res.sequences.shape[0] == len(SOURCES) * repeat
    reference = torch_forward_logits(model, tokenizer, SOURCES, res.sequences[:, :-1], repeat)
    print(f"sampling {case}: max |raw logit diff| = {np.abs(res.logits - reference).max():.3g}")
    assert_logits_match(res.logits, reference)
    # Every sampled token was allowed by the processed scores.
    chosen = np.take_along_axis(res.scores, res.sequences[:, 1:, None], axis=-1)[..., 0]
    live = np.cumsum(res.sequences[:, 1:] == 1, axis=1) - (res.sequences[:, 1:] == 1) == 0
    assert np.isfinite(chosen[live]).all()


def test_sampling_is_reproducible_per_seed_and_per_row(sp_runtime):
    a = sp_runtime.generate(SOURCES, max_new_tokens=12, do_sample=True, seed=3)
    b = sp_runtime.generate(SOURCES, max_new_tokens=12, do_sample=True, seed=3)
    c = sp_runtime.generate(SOURCES, max_new_tokens=12, do_sample=True, seed=4)
    np.testing.assert_array_equal(a.sequences, b.sequences)
    assert not np.array_equal(a.sequences, c.sequences)
    # Row 0's draws do not depend on the rows beside it.
    alone = sp_runtime.generate(SOURCES[:1], max_new_tokens=12, do_sample=True, seed=3)
    n = alone.sequences.shape[1]
    np.testing.assert_array_equal(alone.sequences[0], a.sequences[0, :n])


def test_top_k_1_sampling_is_greedy(sp_runtime):
    greedy = sp_runtime.generate(SOURCES, max_new_tokens=10)
    sampled = sp_runtime.generate(SOURCES, max_new_tokens=10, do_sample=True, top_k=1, seed=0)
    np.testing.assert_array_equal(greedy.sequences, sampled.sequences)


def test_sampling_follows_the_distribution(sp_runtime):
    """Draws of the first token over many seeds follow softmax(logits/temperature)."""
    first = sp_runtime.generate(SOURCES[:1], max_new_tokens=1, do_sample=True, top_k=0, temperature=2.0, seed=0)
    probs = np.exp(first.logits[0, 0] / 2.0 - np.log(np.exp(first.logits[0, 0] / 2.0).sum()))
    draws = [int(sp_runtime.generate(SOURCES[:1], max_new_tokens=1, do_sample=True, top_k=0, temperature=2.0,
                                     seed=s, output_logits=False).sequences[0, 1]) for s in range(400)]
    top = int(probs.argmax())
    observed = np.mean(np.array(draws) == top)
    assert abs(observed - probs[top]) < 4 * np.sqrt(probs[top] * (1 - probs[top]) / 400)


def test_score_matches_forward_with_labels(sp_runtime, sp_torch):
    model, tokenizer = sp_torch
    targets = ["the red house", "one two three four five", "a cat"]
    enc = tokenizer(SOURCES, return_tensors="pt", padding=True)
    labels = tokenizer(targets, return_tensors="pt", padding=True)["input_ids"]
    labels[labels == tokenizer.pad_token_id] = -100
    with torch.no_grad():
        out = model(**enc, labels=labels)
    res = sp_runtime.score(SOURCES, targets)
    reference = out.logits.numpy()
    print(f"score: max |raw logit diff| = {np.abs(res.logits - reference).max():.3g}")
    np.testing.assert_array_equal(res.target_ids, labels.numpy())
    assert_logits_match(res.logits, reference)
    # transformers' loss is the mean token NLL over non-padding targets.
    n_tokens = (labels != -100).sum().item()
    assert -res.total_logprob.sum() / n_tokens == pytest.approx(out.loss.item(), abs=1e-4)
    assert (res.token_logprobs[labels.numpy() == -100] == 0).all()
    ids_res = sp_runtime.score(input_ids=enc["input_ids"].numpy(), attention_mask=enc["attention_mask"].numpy(),
                               target_ids=labels.numpy(), output_logits=False)
    assert ids_res.logits is None
    np.testing.assert_allclose(ids_res.total_logprob, res.total_logprob, rtol=1e-6)


def test_score_of_greedy_output_equals_its_token_logprobs(sp_runtime):
    gen = sp_runtime.generate(SOURCES, max_new_tokens=10)
    labels = gen.sequences[:, 1:].copy()
    after_eos = np.cumsum(labels == 1, axis=1) - (labels == 1) > 0
    labels[after_eos] = -100
    scored = sp_runtime.score(SOURCES, target_ids=labels)
    np.testing.assert_allclose(scored.token_logprobs, gen.token_logprobs, atol=1e-5)


def test_score_errors(sp_runtime):
    with pytest.raises(ValueError, match="exactly one of targets or target_ids"):
        sp_runtime.score(SOURCES, None)
    with pytest.raises(ValueError, match="2 targets for 3 inputs"):
        sp_runtime.score(SOURCES, ["a", "b"])
    with pytest.raises(ValueError, match="target_ids must lie in"):
        sp_runtime.score(SOURCES[:1], target_ids=np.array([[10**6]]))


def test_stream_yields_the_same_steps_as_generate(sp_runtime):
    res = sp_runtime.generate(SOURCES, max_new_tokens=10)
    events = list(sp_runtime.stream(SOURCES, max_new_tokens=10))
    assert [e.step for e in events] == list(range(res.num_steps))
    np.testing.assert_array_equal(np.stack([e.token_ids for e in events], 1), res.sequences[:, 1:])
    np.testing.assert_array_equal(np.stack([e.logits for e in events], 1), res.logits)
    assert events[-1].finished.all() or len(events) == 10
    assert not events[0].finished[2]
    sampled = [e.token_ids for e in sp_runtime.stream(SOURCES, max_new_tokens=6, do_sample=True, seed=1)]
    again = sp_runtime.generate(SOURCES, max_new_tokens=6, do_sample=True, seed=1)
    np.testing.assert_array_equal(np.stack(sampled, 1), again.sequences[:, 1:])
    with pytest.raises(ValueError, match="num_beams > 1"):
        next(sp_runtime.stream(SOURCES, num_beams=2))


@pytest.mark.parametrize("kwargs", [dict(), dict(do_sample=True, seed=2, top_k=4),
                                    dict(num_beams=3, num_return_sequences=2, length_penalty=1.3)],
                         ids=["greedy", "sample", "beam"])
@pytest.mark.parametrize("normalize", [False, True])
def test_transition_scores_match_transformers(sp_runtime, sp_torch, kwargs, normalize):
    model, _ = sp_torch
    res = sp_runtime.generate(SOURCES, max_new_tokens=10, output_scores=True, **kwargs)
    scores = tuple(torch.from_numpy(res.scores[:, t].copy()) for t in range(res.scores.shape[1]))
    beam_indices = None if res.beam_indices is None else torch.from_numpy(res.beam_indices)
    expected = model.compute_transition_scores(torch.from_numpy(res.sequences), scores, beam_indices,
                                               normalize_logits=normalize).numpy()
    got = t5ort.compute_transition_scores(res, normalize_logits=normalize)
    print(f"transition scores {kwargs} normalize={normalize}: max diff {np.abs(got - expected).max():.3g}")
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-5)
    np.testing.assert_array_equal(res.transition_scores(normalize), got)
    if "num_beams" in kwargs:  # beam scores are sums of transition scores, length-normalised
        lengths = (res.beam_indices >= 0).sum(1)
        np.testing.assert_allclose(got.sum(1) / lengths ** 1.3, res.sequences_scores, atol=1e-4)


def test_uncertainty_helpers(sp_runtime):
    res = sp_runtime.generate(SOURCES, max_new_tokens=6)
    p = np.exp(res.logits - res.logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(res.entropy(), -(p * np.log(p)).sum(-1), rtol=1e-4, atol=1e-5)
    top2 = np.sort(p, -1)[..., ::-1][..., :2]
    np.testing.assert_allclose(res.margin(), top2[..., 0] - top2[..., 1], atol=1e-6)
    ids, probs = res.top_alternatives(3)
    np.testing.assert_array_equal(ids[..., 0], p.argmax(-1))
    np.testing.assert_allclose(probs, np.sort(p, -1)[..., ::-1][..., :3], atol=1e-6)
    lean = sp_runtime.generate(SOURCES, max_new_tokens=2, output_logits=False)
    with pytest.raises(ValueError, match="output_logits=True"):
        lean.entropy()
