"""Speculative greedy decoding (prompt lookup, a draft model) returns plain greedy's result.

Sequences exactly; raw logits, processed scores and token log-probs within the
project's fp32 parity bound (conftest.tolerance) of plain greedy's, over many inputs,
with processors and stopping criteria, on the bundled model and on tiny seeded T5s.
"""

from __future__ import annotations

import numpy as np
import pytest

import t5ort
from conftest import SOURCES, tiny_t5, tolerance
from t5ort.demo import ASSETS
from t5ort.training import numbers as nb

NUMBERS = [0, 19, 342, 1001, 71009, 101000, 342342, 500001, 777777, 990909, 30303, 424242]


@pytest.fixture(scope="module")
def bundled():
    return t5ort.load(ASSETS / "onnx", threads=1)


def assert_same(plain, spec, what=""):
    np.testing.assert_array_equal(spec.sequences, plain.sequences, err_msg=what)
    bound = tolerance(plain.logits)
    np.testing.assert_allclose(spec.logits, plain.logits, rtol=0, atol=bound, err_msg=what)
    np.testing.assert_allclose(spec.token_logprobs, plain.token_logprobs, rtol=0, atol=bound, err_msg=what)
    if plain.scores is not None:
        finite = np.isfinite(plain.scores)
        np.testing.assert_array_equal(np.isfinite(spec.scores), finite, err_msg=what)
        np.testing.assert_allclose(spec.scores[finite], plain.scores[finite], rtol=0, atol=bound, err_msg=what)
    assert spec.texts == plain.texts


class Recorder:
    """A user logits processor that records every input_ids it sees (and changes nothing)."""

    def __init__(self):
        self.calls = []

    def __call__(self, input_ids, scores):
        self.calls.append(input_ids.tolist())
        return scores


PROCESSORS = [
    {},
    {"repetition_penalty": 1.4},
    {"no_repeat_ngram_size": 2},
    {"min_new_tokens": 9, "max_new_tokens": 12},
    {"bad_words_ids": [[5], [9, 10]]},
    {"suppress_tokens": [4, 6]},
    {"stop_strings": ["tausend"]},
    {"stopping_criteria": [lambda ids, scores: ids.shape[1] >= 5]},
    {"forced_eos_token_id": 1, "max_new_tokens": 6},
]
SPECULATION = [
    {"prompt_lookup_num_tokens": 4},
    {"prompt_lookup_num_tokens": 10, "max_matching_ngram_size": 1},
    {"num_assistant_tokens": 3},
    {"num_assistant_tokens_schedule": "heuristic"},
]


@pytest.mark.parametrize("speculation", SPECULATION, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_bundled_equals_plain_greedy(bundled, speculation):
    """Every number x every processor set: the same sequences, logits, scores and log-probs."""
    kwargs = dict(speculation)
    if "prompt_lookup_num_tokens" not in kwargs:
        kwargs["assistant"] = bundled  # the model drafting for itself: every draft right, long rounds
    drafted = 0
    for number in NUMBERS:
        for processors in PROCESSORS:
            texts = [nb.source(number)]
            plain = bundled.generate(texts, output_scores=True, **processors)
            spec = bundled.generate(texts, output_scores=True, **processors, **kwargs)
            assert_same(plain, spec, f"{number} {processors}")
            stats = spec.speculation
            assert stats.decoder_passes == stats.rounds + stats.redecided
            assert stats.accepted <= stats.drafted
            assert stats.accepted <= spec.num_steps <= stats.rounds + stats.accepted
            drafted += stats.drafted
    assert drafted > 0


def test_user_processors_see_what_plain_greedy_shows_them(bundled):
    """A user processor is called once per emitted token, with the same input_ids as in plain greedy."""
    for number in NUMBERS[:8]:
        plain_rec, spec_rec = Recorder(), Recorder()
        texts = [nb.source(number)]
        bundled.generate(texts, logits_processor=[plain_rec])
        spec = bundled.generate(texts, logits_processor=[spec_rec], assistant=bundled, num_assistant_tokens=8)
        assert spec.speculation.redecided == 0
        assert spec_rec.calls == plain_rec.calls


def test_draft_model_saves_decoder_passes(bundled):
    spec = bundled.generate([nb.source(777777)], assistant=bundled, num_assistant_tokens=20)
    stats = spec.speculation
    assert stats.accepted == stats.drafted > 0
    assert stats.decoder_passes < spec.num_steps / 2


def test_near_ties_are_decided_again_by_a_one_token_pass(bundled):
    """A processor that ties the two best scores: the row is recomputed alone and decided as plain greedy."""

    def tie(input_ids, scores):
        out = scores.copy()
        best = np.argsort(-scores, axis=-1)[:, :2]
        out[np.arange(len(out))[:, None], best] = scores.max(axis=-1, keepdims=True)
        return out

    for number in NUMBERS[:6]:
        texts = [nb.source(number)]
        plain = bundled.generate(texts, output_scores=True, logits_processor=[tie])
        spec = bundled.generate(texts, output_scores=True, logits_processor=[tie], assistant=bundled,
                                num_assistant_tokens=6)
        assert_same(plain, spec, str(number))
        assert spec.speculation.redecided > 0
        assert spec.speculation.decoder_passes == spec.speculation.rounds + spec.speculation.redecided


# ---- tiny seeded T5s -------------------------------------------------------------------


@pytest.fixture(scope="module")
def sp_draft(sp_checkpoint, tmp_path_factory):
    """Another seeded tiny T5 with the same tokenizer: a draft model that is often wrong."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(sp_checkpoint)
    ckpt = tmp_path_factory.mktemp("sp_draft") / "model"
    model = tiny_t5(len(tokenizer), v1_1=True, seed=7)
    model.config.num_decoder_layers = 2
    model.save_pretrained(ckpt)
    tokenizer.save_pretrained(ckpt)
    out = ckpt.parent / "onnx"
    t5ort.export(ckpt, out)
    return t5ort.load(out, threads=1)


TINY_INPUTS = SOURCES + [
    "the cat and the dog and the cat and the dog",
    "seven hundred seven hundred seven hundred",
    "translate English to German: the red bird sings near the green house",
]


@pytest.mark.parametrize("processors", [{}, {"repetition_penalty": 1.3}, {"no_repeat_ngram_size": 3},
                                        {"min_new_tokens": 10}], ids=str)
def test_tiny_model_equals_plain_greedy(sp_runtime, sp_draft, processors):
    for text in TINY_INPUTS:
        plain = sp_runtime.generate([text], max_new_tokens=24, output_scores=True, **processors)
        for speculation in ({"prompt_lookup_num_tokens": 6}, {"assistant": sp_draft, "num_assistant_tokens": 4},
                            {"assistant": sp_draft, "num_assistant_tokens_schedule": "heuristic"}):
            spec = sp_runtime.generate([text], max_new_tokens=24, output_scores=True, **processors, **speculation)
            assert_same(plain, spec, f"{text} {processors} {list(speculation)}")


def test_tiny_model_against_transformers_greedy(sp_runtime, sp_draft, sp_torch):
    torch = pytest.importorskip("torch")
    model, tokenizer = sp_torch
    for text in TINY_INPUTS[:4]:
        enc = tokenizer([text], return_tensors="pt")
        with torch.no_grad():
            ref = model.generate(**enc, max_new_tokens=16, do_sample=False, num_beams=1, output_logits=True,
                                 return_dict_in_generate=True)
        ref_logits = torch.stack(ref.logits, 1).numpy()
        for speculation in ({"prompt_lookup_num_tokens": 5}, {"assistant": sp_draft}):
            spec = sp_runtime.generate(input_ids=enc.input_ids.numpy(), max_new_tokens=16, **speculation)
            np.testing.assert_array_equal(spec.sequences, ref.sequences.numpy())
            np.testing.assert_allclose(spec.logits, ref_logits, rtol=0, atol=tolerance(ref_logits))


def test_prompt_lookup_drafts_from_the_source():
    from t5ort.runtime.speculative import PromptLookup

    lookup = PromptLookup(np.array([9, 4, 5, 6, 7, 4, 5, 8]), num_tokens=3, max_ngram=2)
    np.testing.assert_array_equal(lookup.propose(np.array([0, 4, 5]), 10), [6, 7, 4])  # first match of [4, 5]
    lookup.accepted(np.array([0, 4, 5, 6, 7, 4]), 3, 3)  # the source was followed up to position 6
    np.testing.assert_array_equal(lookup.propose(np.array([0, 4, 5, 6, 7, 4, 5]), 10), [8])  # the next [4, 5]
    lookup = PromptLookup(np.array([9, 4, 5, 6, 7, 4, 5, 8]), num_tokens=3, max_ngram=2)  # a new output
    np.testing.assert_array_equal(lookup.propose(np.array([0, 3, 2]), 10), [])  # no match anywhere
    np.testing.assert_array_equal(lookup.propose(np.array([0, 3, 2, 3]), 1), [2])  # the output's own n-gram


# ---- bad arguments ---------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, error, match", [
    ({"prompt_lookup_num_tokens": 0}, ValueError, "prompt_lookup_num_tokens must be >= 1"),
    ({"prompt_lookup_num_tokens": 2.5}, TypeError, "prompt_lookup_num_tokens must be an int"),
    ({"max_matching_ngram_size": 2}, ValueError, "max_matching_ngram_size goes with prompt_lookup_num_tokens"),
    ({"prompt_lookup_num_tokens": 3, "max_matching_ngram_size": 0}, ValueError, "max_matching_ngram_size must be"),
    ({"prompt_lookup_num_tokens": 3, "num_beams": 2}, ValueError, "needs greedy decoding"),
    ({"prompt_lookup_num_tokens": 3, "do_sample": True}, ValueError, "needs greedy decoding"),
    ({"prompt_lookup_num_tokens": 3, "num_assistant_tokens": 3}, ValueError, "pick one"),
    ({"num_assistant_tokens": 3}, ValueError, "need a draft runtime: pass assistant="),
    ({"num_assistant_tokens_schedule": "fast"}, ValueError, "num_assistant_tokens_schedule must be"),
    ({"assistant": "small"}, TypeError, "assistant must be a t5ort runtime"),
    ({"assistant_model": "small"}, TypeError, "assistant=..., not assistant_model="),
])
def test_bad_arguments_are_named(bundled, kwargs, error, match):
    with pytest.raises(error, match=match):
        bundled.generate([nb.source(5)], **kwargs)


def row_steps(result) -> np.ndarray:
    """Each row's steps up to and with its EOS (all steps for a row that never ends)."""
    ends = result.sequences[:, 1:] == 1
    return np.where(ends.any(axis=1), ends.argmax(axis=1) + 1, ends.shape[1])


def assert_same_rows(plain, spec, what=""):
    """Batch speculation: plain greedy's sequences at the same batch; logits, scores and log-probs within the
    bound up to each row's end (after it, plain greedy computes logits of pad tokens that nobody reads;
    speculation leaves zeros)."""
    np.testing.assert_array_equal(spec.sequences, plain.sequences, err_msg=what)
    assert spec.texts == plain.texts
    bound = tolerance(plain.logits)
    for r, n in enumerate(row_steps(plain)):
        np.testing.assert_allclose(spec.logits[r, :n], plain.logits[r, :n], rtol=0, atol=bound, err_msg=what)
        np.testing.assert_allclose(spec.token_logprobs[r], plain.token_logprobs[r], rtol=0, atol=bound, err_msg=what)
        finite = np.isfinite(plain.scores[r, :n])
        np.testing.assert_allclose(spec.scores[r, :n][finite], plain.scores[r, :n][finite], rtol=0, atol=bound,
                                   err_msg=what)
    assert not spec.logits[row_steps(plain) < spec.num_steps].any(axis=-1).all()  # zeros after a row's end


@pytest.mark.parametrize("speculation", SPECULATION[:3], ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_a_batch_equals_plain_greedy_at_the_same_batch_row_by_row(bundled, speculation):
    """Rows accept different numbers of drafts per pass; each gets plain greedy's tokens at the same batch."""
    kwargs = dict(speculation)
    if "prompt_lookup_num_tokens" not in kwargs:
        kwargs["assistant"] = bundled
    texts = [nb.source(n) for n in NUMBERS]
    for processors in PROCESSORS[:5]:
        plain = bundled.generate(texts, output_scores=True, **processors)
        spec = bundled.generate(texts, output_scores=True, **processors, **kwargs)
        assert_same_rows(plain, spec, str(processors))
        stats = spec.speculation
        assert stats.accepted <= stats.drafted and stats.decoder_passes >= stats.rounds
        assert stats.decoder_passes <= plain.num_steps  # never more passes than plain greedy's steps
        if "assistant" in kwargs:  # the model drafting for itself: every draft right, far fewer passes
            assert stats.accepted == stats.drafted and stats.decoder_passes < plain.num_steps / 2


def test_rows_that_end_leave_the_verify_passes(bundled):
    """Once a row has ended, the next pass feeds only the live rows; the others' results stay as plain greedy's."""
    from t5ort.runtime import speculative
    from t5ort.runtime.options import GenerationOptions

    texts = [nb.source(n) for n in (0, 342342, 19, 777777)]  # outputs of 2 to 9 tokens
    plain = bundled.generate(texts, output_scores=True)
    options = GenerationOptions(prompt_lookup_num_tokens=3, output_logits=True, output_scores=True)
    decoding = speculative.start(bundled, bundled.encode(texts), options, bundled._special(options))
    widths = []
    while not decoding.done:
        decoding.round()
        widths.append(decoding.state.self_mask.shape[0])
    assert widths[-1] < len(texts) and widths == sorted(widths, reverse=True)
    out = decoding.output()
    np.testing.assert_array_equal(out.search.sequences, plain.sequences)
    bound = tolerance(plain.logits)
    for r, n in enumerate(row_steps(plain)):
        np.testing.assert_allclose(out.logits[r, :n], plain.logits[r, :n], rtol=0, atol=bound)


def test_a_batch_with_near_ties_decides_them_as_plain_greedy(bundled):
    def tie(input_ids, scores):  # the two best scores of every row made equal
        out = scores.copy()
        best = np.argsort(-scores, axis=-1)[:, :2]
        out[np.arange(len(out))[:, None], best] = scores.max(axis=-1, keepdims=True)
        return out

    texts = [nb.source(n) for n in NUMBERS[:6]]
    plain = bundled.generate(texts, output_scores=True, logits_processor=[tie])
    spec = bundled.generate(texts, output_scores=True, logits_processor=[tie], assistant=bundled,
                            num_assistant_tokens=6)
    assert_same_rows(plain, spec)
    assert spec.speculation.redecided > 0


def test_tiny_model_batch_equals_plain_greedy(sp_runtime, sp_draft):
    """A draft model that is often wrong, inputs of different lengths: rows move right by different amounts."""
    plain = sp_runtime.generate(TINY_INPUTS, max_new_tokens=24, output_scores=True)
    for speculation in ({"prompt_lookup_num_tokens": 6}, {"assistant": sp_draft, "num_assistant_tokens": 4}):
        spec = sp_runtime.generate(TINY_INPUTS, max_new_tokens=24, output_scores=True, **speculation)
        assert_same_rows(plain, spec, str(list(speculation)))


def test_assistant_with_another_vocabulary_is_refused(bundled, sp_runtime):
    with pytest.raises(ValueError, match="must share the model's vocabulary"):
        bundled.generate([nb.source(5)], assistant=sp_runtime)


def test_stream_refuses_speculation(bundled):
    with pytest.raises(ValueError, match="only in generate"):
        next(bundled.stream([nb.source(5)], prompt_lookup_num_tokens=3))


def test_cli_prompt_lookup_and_assistant_print_plain_greedys_text(capsys):
    from t5ort.cli import main

    text = nb.source(342342)
    assert main(["generate", str(ASSETS / "onnx"), text, "--threads", "1"]) == 0
    plain = capsys.readouterr().out
    for flags in (["--prompt-lookup", "4"], ["--assistant", str(ASSETS / "onnx"), "--num-assistant-tokens", "5"]):
        assert main(["generate", str(ASSETS / "onnx"), text, "--threads", "1", *flags]) == 0
        out = capsys.readouterr()
        assert out.out == plain == nb.german(342342) + "\n"
        assert "drafted tokens kept" in out.err
    assert main(["generate", str(ASSETS / "onnx"), text, "--num-assistant-tokens", "3"]) != 0
    assert "--num-assistant-tokens goes with --assistant DIR" in capsys.readouterr().err


def one_edit(a: str, b: str) -> bool:
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]]
                                  and a[diff[1]] == b[diff[0]])
    short, long = sorted((a, b), key=len)
    return len(long) == len(short) + 1 and any(long[:i] + long[i + 1:] == short for i in range(len(long)))


def test_spelling_data_is_seeded_one_edit_per_word_and_held_out():
    import random

    from t5ort.training import spelling as sp

    assert sp.test_pairs(0, 20) == sp.test_pairs(0, 20)
    rng = random.Random(0)
    for _ in range(300):
        source, target = sp.example(rng)
        assert source.startswith(sp.PREFIX)
        wrong, right = source[len(sp.PREFIX):].replace("-", " ").split(" "), target.replace("-", " ").split(" ")
        assert len(wrong) == len(right)
        for w, r in zip(wrong, right):  # at most one edit: drop, double, swap or replace
            assert w == r or one_edit(w.rstrip(","), r.rstrip(",")), (w, r)
        items = target.split(", ")
        if len(items) > 1:  # several numbers are numbered, and the markers are never misspelled
            assert [i.split(" ")[0] for i in items] == [f"{k}." for k in range(1, len(items) + 1)]
            assert [i.split(" ")[0] for i in source[len(sp.PREFIX):].split(", ")] == [f"{k}." for k in range(1, len(items) + 1)]
        else:
            assert not target[0].isdigit()
    held, pool = sp.split(0)
    assert len(held) == 2000 and not held & set(pool)
