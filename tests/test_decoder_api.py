"""The step-level decoder API (runtime.decoder) and reusable encoder outputs (runtime.encode), against
generate and score: the examples of the manual's custom decoding section (docs/generation.md), and the errors."""

from __future__ import annotations

import numpy as np
import pytest

import t5ort
from conftest import SOURCES, assert_logits_match


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


# ---- the examples -------------------------------------------------------------------------------------


def greedy(rt, texts, max_new_tokens):
    """A greedy loop on the decoder API: what generate() does with its defaults."""
    eos = rt.manifest.special_tokens.eos_token_id[0]
    with rt.decoder(texts) as dec:
        done = np.zeros(dec.rows, bool)
        steps = []
        for _ in range(max_new_tokens):
            steps.append(dec.logits)
            token = np.where(done, rt.manifest.special_tokens.pad_token_id, dec.logits.argmax(-1))
            dec.append(token)
            done |= token == eos
            if done.all():
                break
        return dec.sequences, np.stack(steps, axis=1)


def test_greedy_loop_equals_generate(sp_runtime):
    sequences, logits = greedy(sp_runtime, SOURCES, 12)
    ref = sp_runtime.generate(SOURCES, max_new_tokens=12)
    np.testing.assert_array_equal(sequences, ref.sequences)
    np.testing.assert_array_equal(logits, ref.logits)  # the same graph, the same passes: bit for bit


def beam_search(rt, text, num_beams, max_new_tokens):
    """Beam search on select(): generate(num_beams=..., early_stopping=True) for one input."""
    eos = rt.manifest.special_tokens.eos_token_id[0]
    finished = []  # (score / length, sequence)
    with rt.decoder([text]) as dec:
        scores = np.zeros(1, np.float32)  # one live beam at the start
        for step in range(1, max_new_tokens + 1):
            total = (scores[:, None] + log_softmax(dec.logits)).ravel()  # [beams * vocab]
            vocab = dec.logits.shape[-1]
            rows, tokens, kept = [], [], []
            for rank, flat in enumerate(np.argsort(-total, kind="stable")[: 2 * num_beams]):
                beam, token = divmod(int(flat), vocab)
                if token == eos or step == max_new_tokens:
                    if rank < num_beams and len(finished) < num_beams:
                        finished.append((total[flat] / step, [*dec.sequences[beam], token]))
                elif len(rows) < num_beams:
                    rows, tokens, kept = rows + [beam], tokens + [token], kept + [total[flat]]
            if len(finished) >= num_beams or not rows:
                break
            dec.select(rows)  # the chosen beams' caches, reordered or duplicated
            dec.append(np.array(tokens))
            scores = np.array(kept, np.float32)
    return max(finished, key=lambda hyp: hyp[0])[1]


@pytest.mark.parametrize("source", SOURCES)
def test_beam_search_on_select_equals_generate(sp_runtime, source):
    ref = sp_runtime.generate([source], max_new_tokens=10, num_beams=4, early_stopping=True)
    best = beam_search(sp_runtime, source, 4, 10)
    assert best == ref.sequences[0][: len(best)].tolist() and (ref.sequences[0][len(best):] == 0).all()


class Trie:
    """Token sequences as a prefix tree: which tokens may follow a prefix."""

    def __init__(self, sequences):
        self.children = {}
        for sequence in sequences:
            node = self.children
            for token in sequence:
                node = node.setdefault(int(token), {})

    def allowed(self, prefix):
        node = self.children
        for token in prefix:
            node = node[int(token)]
        return sorted(node)


def classify(rt, text, labels):
    """Constrained decoding to a set of label strings: each label's total log-probability, the best label."""
    label_ids = [list(rt.tokenizer.encode_batch([label])[0]) for label in labels]  # with EOS
    trie = Trie(label_ids)
    totals = []
    with rt.decoder([text], rows_per_input=len(labels)) as dec:  # one row per label, one encoder pass
        for position in range(max(map(len, label_ids))):
            logprobs = log_softmax(dec.logits)
            tokens = np.array([ids[min(position, len(ids) - 1)] for ids in label_ids])
            totals.append([logprobs[row, token] if position < len(ids) else 0.0
                           for row, (token, ids) in enumerate(zip(tokens, label_ids))])
            for ids in label_ids:  # every label's next token is one the trie allows
                assert position >= len(ids) or ids[position] in trie.allowed(ids[:position])
            dec.append(tokens)
    scores = np.sum(totals, axis=0)
    return dict(zip(labels, scores)), labels[int(np.argmax(scores))]


def test_constrained_labels_score_as_score_does(sp_runtime):
    labels = ["the small house", "one cat", "the old dog runs"]
    scores, best = classify(sp_runtime, SOURCES[0], labels)
    ref = sp_runtime.score([SOURCES[0]], labels)  # one source, three targets: one encoder pass
    np.testing.assert_allclose([scores[label] for label in labels], ref.total_logprob, rtol=0, atol=1e-4)
    assert best == labels[int(np.argmax(ref.total_logprob))]


def test_entropy_triggered_backtracking_with_rollback(sp_runtime):
    """Greedy, but where a step's entropy is high, go back one token and take the runner-up instead."""
    with sp_runtime.decoder([SOURCES[2]]) as dec:
        before = [dec.logits.copy()]
        for _ in range(6):
            dec.append(dec.logits.argmax(-1))
            before.append(dec.logits.copy())
        probs = np.exp(log_softmax(before[3][0]))
        entropy = -(probs * np.log(probs + 1e-30)).sum()
        assert entropy > 0
        dec.rollback(3)  # back to after 3 tokens: the logits there again
        assert dec.position == 3
        assert_logits_match(dec.logits, before[3])
        runner_up = np.argsort(-dec.logits[0])[1]
        dec.append(np.array([runner_up]))
        branch = dec.sequences
    alone = sp_runtime.score([SOURCES[2]], target_ids=branch[:, 1:])
    assert_logits_match(alone.logits[:, :3], np.stack(before[:3], axis=1))


def test_append_many_equals_single_appends(sp_runtime):
    tokens = np.array([[5, 9, 7, 11], [6, 6, 8, 3], [4, 12, 13, 14]])
    with sp_runtime.decoder(SOURCES) as one, sp_runtime.decoder(SOURCES) as many:
        singles = []
        for k in range(tokens.shape[1]):
            one.append(tokens[:, k])
            singles.append(one.logits)
        forced = many.append_many(tokens)
        np.testing.assert_array_equal(many.sequences, one.sequences)
        assert_logits_match(forced, np.stack(singles, axis=1))
        assert_logits_match(many.logits, one.logits)


# ---- encoder outputs ----------------------------------------------------------------------------------


def test_encoder_output_reused_gives_the_same_results(sp_runtime):
    encoded = sp_runtime.encode(SOURCES)
    assert encoded.batch_size == 3 and encoded.nbytes > 0
    a = sp_runtime.generate(SOURCES, max_new_tokens=8, num_beams=2)
    b = sp_runtime.generate(encoder_output=encoded, max_new_tokens=8, num_beams=2)
    np.testing.assert_array_equal(a.sequences, b.sequences)
    np.testing.assert_array_equal(a.logits, b.logits)
    row = sp_runtime.generate(encoder_output=encoded[1], max_new_tokens=8)
    np.testing.assert_array_equal(row.sequences[0], sp_runtime.generate([SOURCES[1]], max_new_tokens=8).sequences[0])
    streamed = [e.token_ids for e in sp_runtime.stream(encoder_output=encoded, max_new_tokens=4)]
    assert len(streamed) == 4
    scored = sp_runtime.score(encoder_output=encoded, targets=["a", "b", "c"])
    np.testing.assert_allclose(scored.logits, sp_runtime.score(SOURCES, ["a", "b", "c"]).logits, atol=1e-6)


def test_score_encodes_each_distinct_source_once(sp_runtime, monkeypatch):
    calls = []
    real = sp_runtime.graphs.encode
    monkeypatch.setattr(sp_runtime.graphs, "encode", lambda ids, mask: calls.append(ids.shape) or real(ids, mask))
    texts = [SOURCES[0], SOURCES[1], SOURCES[0], SOURCES[0]]
    got = sp_runtime.score(texts, ["a b", "c", "d e f", "g"])
    assert len(calls) == 1 and calls[0][0] == 2  # two distinct sources in one encoder pass
    monkeypatch.undo()
    for i, (text, target) in enumerate(zip(texts, ["a b", "c", "d e f", "g"])):
        alone = sp_runtime.score([text], [target])
        n = alone.logits.shape[1]
        assert_logits_match(got.logits[i: i + 1, :n], alone.logits)


# ---- errors -------------------------------------------------------------------------------------------


def test_decoder_errors_name_the_argument(sp_runtime):
    dec = sp_runtime.decoder(SOURCES[:2])
    with pytest.raises(ValueError, match=r"tokens must have shape \[rows\] with rows = 2"):
        dec.append(np.array([1, 2, 3]))
    with pytest.raises(ValueError, match=r"tokens must lie in \[0, \d+\) \(the vocabulary\)"):
        dec.append(np.array([1, sp_runtime.vocab_size]))
    with pytest.raises(ValueError, match=r"rollback\(1\) goes past the start"):
        dec.rollback(1)
    with pytest.raises(ValueError, match=r"rows must lie in \[0, 2\)"):
        dec.select([0, 2])
    with pytest.raises(TypeError, match="integer token ids"):
        dec.append(np.array([1.5, 2.0]))
    dec.close()
    with pytest.raises(ValueError, match="this decoder is closed"):
        dec.logits
    with pytest.raises(TypeError, match=r"encoder_output must come from runtime\.encode"):
        sp_runtime.generate(encoder_output=object(), max_new_tokens=2)
    with pytest.raises(ValueError, match="not both"):
        sp_runtime.generate(SOURCES, encoder_output=sp_runtime.encode(SOURCES), max_new_tokens=2)
    with pytest.raises(ValueError, match="3 targets for 2 inputs"):
        sp_runtime.score(SOURCES[:2], ["a", "b", "c"])


def test_decoder_is_exported_at_the_top(sp_runtime):
    assert isinstance(sp_runtime.decoder(SOURCES[:1]), t5ort.Decoder)
    assert isinstance(sp_runtime.encode(SOURCES[:1]), t5ort.EncoderOutput)


def test_sources_of_very_different_lengths_are_encoded_in_groups_without_padding(sp_runtime, monkeypatch):
    """A ragged right-padded batch runs the encoder per group of similar length; each row's cross keys/values equal
    its solo encoding's at its source positions, and generate's answers equal the solo runs'."""
    from t5ort.runtime.graphs import host_array, length_groups

    texts = ["a b c d e f g h i j k l m n o p q r s t u v w x y z " * 2, "a", "one two", "a b c d e f g h i j k " * 2]
    ids, mask = sp_runtime.encode_texts(texts)
    groups = length_groups(mask)
    assert groups is not None and sorted(np.concatenate(groups).tolist()) == [0, 1, 2, 3]
    widths = []
    real = sp_runtime.graphs._run_encoder
    monkeypatch.setattr(sp_runtime.graphs, "_run_encoder", lambda i, m: widths.append(i.shape[1]) or real(i, m))
    encoded = sp_runtime.encode(texts)
    assert len(widths) == len(groups) and sum(widths) < len(groups) * ids.shape[1]
    for r, text in enumerate(texts):
        alone = sp_runtime.encode([text])
        n = int(mask[r].sum())
        for batch_kv, solo_kv in zip(encoded.cross_kv, alone.cross_kv):
            got = host_array(batch_kv)[r]
            np.testing.assert_allclose(got[:, :n], host_array(solo_kv)[0, :, :n], rtol=0, atol=1e-5)
    batch = sp_runtime.generate(texts, max_new_tokens=8)
    for r, text in enumerate(texts):
        solo = sp_runtime.generate([text], max_new_tokens=8)
        n = solo.num_steps
        np.testing.assert_array_equal(batch.sequences[r, : n + 1], solo.sequences[0])
        assert_logits_match(batch.logits[r, :n], solo.logits[0])
    left = np.ascontiguousarray(mask[:, ::-1])  # left-padded: one pass, as given
    assert length_groups(left) is None
