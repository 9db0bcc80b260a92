"""Every logits processor against its transformers counterpart, and in generate() end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.generation import logits_process as hf

from conftest import SOURCES, assert_logits_match, tolerance
from t5ort.runtime import processors as ours

RNG = np.random.default_rng(0)
VOCAB = 40
INPUT_IDS = RNG.integers(0, VOCAB, size=(4, 7))
INPUT_IDS[1, -3:] = [5, 6, 5]  # an n-gram and bad-word prefixes to find
SCORES = (RNG.standard_normal((4, VOCAB)) * 3).astype(np.float32)

PAIRS = [
    (ours.RepetitionPenalty(1.3), hf.RepetitionPenaltyLogitsProcessor(1.3)),
    (ours.RepetitionPenalty(0.7), hf.RepetitionPenaltyLogitsProcessor(0.7)),
    (ours.NoRepeatNGram(2), hf.NoRepeatNGramLogitsProcessor(2)),
    (ours.NoRepeatNGram(1), hf.NoRepeatNGramLogitsProcessor(1)),
    (ours.NoRepeatNGram(3), hf.NoRepeatNGramLogitsProcessor(3)),
    (ours.NoBadWords([[7], [5, 9], [6, 5, 11], [1]], [1]), hf.NoBadWordsLogitsProcessor([[7], [5, 9], [6, 5, 11], [1]], 1)),
    (ours.MinNewTokens(10, [1, 3]), hf.MinNewTokensLengthLogitsProcessor(1, 10, [1, 3])),
    (ours.MinNewTokens(3, [1]), hf.MinNewTokensLengthLogitsProcessor(1, 3, [1])),
    (ours.ForceTokensAt(1, [2]), hf.ForcedBOSTokenLogitsProcessor(2)),  # inactive at length 7: both identity
    (ours.ForceTokensAt(7, [1, 4]), hf.ForcedEOSTokenLogitsProcessor(8, [1, 4])),
    (ours.SuppressTokens([0, 3, 39]), hf.SuppressTokensLogitsProcessor([0, 3, 39])),
    (ours.Temperature(0.7), hf.TemperatureLogitsWarper(0.7)),
    (ours.TopK(5), hf.TopKLogitsWarper(5)),
    (ours.TopP(0.8), hf.TopPLogitsWarper(0.8)),
    (ours.TopP(0.05), hf.TopPLogitsWarper(0.05)),
    (ours.MinP(0.1), hf.MinPLogitsWarper(0.1)),
    (ours.Typical(0.6), hf.TypicalLogitsWarper(0.6)),
]


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: f"{type(p[0]).__name__}")
def test_processor_matches_transformers(pair):
    mine, theirs = pair
    scores = SCORES.copy()
    expected = theirs(torch.from_numpy(INPUT_IDS), torch.from_numpy(SCORES.copy())).numpy()
    got = mine(INPUT_IDS, scores)
    np.testing.assert_array_equal(scores, SCORES, err_msg="the processor modified its input")
    np.testing.assert_array_equal(np.isinf(got), np.isinf(expected))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_forced_bos_at_first_step():
    ids = np.zeros((2, 1), np.int64)
    got = ours.ForceTokensAt(1, [4])(ids, SCORES[:2])
    expected = hf.ForcedBOSTokenLogitsProcessor(4)(torch.from_numpy(ids), torch.from_numpy(SCORES[:2].copy())).numpy()
    np.testing.assert_array_equal(got, expected)


GREEDY_CASES = [
    dict(repetition_penalty=1.8),
    dict(no_repeat_ngram_size=2),
    dict(bad_words_ids=[[6], [11, 6]], min_new_tokens=4),
    dict(suppress_tokens=[6, 11, 7]),
    dict(forced_bos_token_id=9, forced_eos_token_id=1),
    dict(repetition_penalty=0.8, no_repeat_ngram_size=3, suppress_tokens=[2]),
]


@pytest.mark.parametrize("case", GREEDY_CASES, ids=lambda c: "-".join(c))
@pytest.mark.parametrize("num_beams", [1, 3])
def test_processors_in_generate_match_transformers(sp_runtime, sp_torch, case, num_beams):
    model, tokenizer = sp_torch
    enc = tokenizer(SOURCES, return_tensors="pt", padding=True)
    with torch.no_grad():
        ref = model.generate(**enc, max_new_tokens=10, do_sample=False, num_beams=num_beams, output_logits=True,
                             output_scores=True, return_dict_in_generate=True, **case)
    res = sp_runtime.generate(SOURCES, max_new_tokens=10, num_beams=num_beams, output_scores=True, **case)
    np.testing.assert_array_equal(res.sequences, ref.sequences.numpy())
    logits = torch.stack(ref.logits, 1).numpy()
    assert_logits_match(res.logits, logits)
    scores = torch.stack(ref.scores, 1).numpy()
    finite = np.isfinite(scores)
    np.testing.assert_array_equal(np.isfinite(res.scores), finite)
    np.testing.assert_allclose(res.scores[finite], scores[finite], rtol=0, atol=tolerance(logits))


def test_user_processor_changes_the_output(sp_runtime):
    plain = sp_runtime.generate(SOURCES, max_new_tokens=6)
    banned = int(plain.sequences[0, 1])
    calls = []

    def ban_first_token(input_ids, scores):
        calls.append(input_ids.shape)
        scores = scores.copy()
        scores[:, banned] = -np.inf
        return scores

    res = sp_runtime.generate(SOURCES, max_new_tokens=6, logits_processor=[ban_first_token])
    assert banned not in res.sequences[:, 1:]
    assert calls[0] == (3, 1) and calls[1] == (3, 2)
    np.testing.assert_array_equal(res.logits[:, 0], plain.logits[:, 0])  # raw logits stay raw


def test_eos_token_id_override_and_user_stopping_criteria(sp_runtime):
    source = SOURCES[2:]  # a row that does not stop early by itself
    plain = sp_runtime.generate(source, max_new_tokens=8)
    assert plain.num_steps == 8
    stop_at = int(plain.sequences[0, 3])
    res = sp_runtime.generate(source, max_new_tokens=8, eos_token_id=[1, stop_at])
    assert res.sequences[0, -1] == stop_at and res.num_steps <= 3
    res = sp_runtime.generate(source, max_new_tokens=8, stopping_criteria=[lambda ids, s: ids.shape[1] >= 5])
    assert res.num_steps == 4


def test_stop_strings_match_transformers(sp_runtime, sp_torch):
    from transformers import StoppingCriteriaList, StopStringCriteria

    model, tokenizer = sp_torch
    plain = sp_runtime.generate(SOURCES, max_new_tokens=10)
    stop = plain.texts[2].strip().split(" ")[1][:3]  # a piece of the third row's second word
    enc = tokenizer(SOURCES, return_tensors="pt", padding=True)
    with torch.no_grad():
        criteria = StoppingCriteriaList([StopStringCriteria(tokenizer, [stop])])
        ref = model.generate(**enc, max_new_tokens=10, do_sample=False, stopping_criteria=criteria)
    res = sp_runtime.generate(SOURCES, max_new_tokens=10, stop_strings=stop)
    np.testing.assert_array_equal(res.sequences, ref.numpy())
    assert res.num_steps < plain.num_steps


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_beams=2, num_return_sequences=3), "num_return_sequences .3. must be <= num_beams .2."),
        (dict(num_return_sequences=2), "greedy decoding has one answer"),
        (dict(do_sample=True, top_p=0.0), "top_p must be > 0.0"),
        (dict(do_sample=True, top_p=1.5), "top_p must be <= 1.0"),
        (dict(do_sample=True, temperature=0.0), "temperature must be > 0.0"),
        (dict(do_sample=True, top_k=-1), "top_k must be >= 0"),
        (dict(temperature=0.5), "only apply with do_sample=True"),
        (dict(do_sample=True, num_beams=2), "beam sampling"),
        (dict(early_stopping="sometimes"), "early_stopping must be"),
        (dict(repetition_penalty=0.0), "repetition_penalty must be > 0.0"),
        (dict(bad_words_ids=[[]]), "bad_words_ids must be"),
        (dict(bad_words_ids=[[10**6]]), "bad_words_ids must be"),
        (dict(forced_bos_token_id=-1), "forced_bos_token_id must be"),
        (dict(suppress_tokens=[10**6]), "suppress_tokens must be"),
        (dict(stop_strings=[""]), "stop_strings must be"),
        (dict(do_sample=True, seed=-3), "seed must be"),
    ],
)
def test_bad_option_combinations_name_the_option(sp_runtime, kwargs, match):
    with pytest.raises(ValueError, match=match):
        sp_runtime.generate(SOURCES[:1], **kwargs)


def test_unknown_option_is_a_type_error(sp_runtime):
    with pytest.raises(TypeError, match="unknown generation option.*max_tokens"):
        sp_runtime.generate(SOURCES[:1], max_tokens=3)
    with pytest.raises(TypeError, match="logits_processor must be a list of callables"):
        sp_runtime.generate(SOURCES[:1], logits_processor=[3])
