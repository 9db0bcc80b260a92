"""The number-words generator behind the bundled model (t5ort/training/numbers.py): spellings and splits."""

from __future__ import annotations

import pytest

from t5ort.training import numbers
from t5ort.training.numbers import english, german, pairs, split

KNOWN = [
    (0, "zero", "null"),
    (1, "one", "eins"),
    (2, "two", "zwei"),
    (6, "six", "sechs"),
    (7, "seven", "sieben"),
    (10, "ten", "zehn"),
    (11, "eleven", "elf"),
    (12, "twelve", "zwölf"),
    (13, "thirteen", "dreizehn"),
    (15, "fifteen", "fünfzehn"),
    (16, "sixteen", "sechzehn"),
    (17, "seventeen", "siebzehn"),
    (20, "twenty", "zwanzig"),
    (21, "twenty-one", "einundzwanzig"),
    (30, "thirty", "dreißig"),
    (31, "thirty-one", "einunddreißig"),
    (57, "fifty-seven", "siebenundfünfzig"),
    (60, "sixty", "sechzig"),
    (66, "sixty-six", "sechsundsechzig"),
    (70, "seventy", "siebzig"),
    (77, "seventy-seven", "siebenundsiebzig"),
    (99, "ninety-nine", "neunundneunzig"),
    (100, "one hundred", "einhundert"),
    (101, "one hundred one", "einhunderteins"),
    (111, "one hundred eleven", "einhundertelf"),
    (121, "one hundred twenty-one", "einhunderteinundzwanzig"),
    (200, "two hundred", "zweihundert"),
    (342, "three hundred forty-two", "dreihundertzweiundvierzig"),
    (999, "nine hundred ninety-nine", "neunhundertneunundneunzig"),
    (1000, "one thousand", "eintausend"),
    (1001, "one thousand one", "eintausendeins"),
    (1100, "one thousand one hundred", "eintausendeinhundert"),
    (1016, "one thousand sixteen", "eintausendsechzehn"),
    (2021, "two thousand twenty-one", "zweitausendeinundzwanzig"),
    (7000, "seven thousand", "siebentausend"),
    (10000, "ten thousand", "zehntausend"),
    (17017, "seventeen thousand seventeen", "siebzehntausendsiebzehn"),
    (21000, "twenty-one thousand", "einundzwanzigtausend"),
    (71009, "seventy-one thousand nine", "einundsiebzigtausendneun"),
    (100000, "one hundred thousand", "einhunderttausend"),
    (100001, "one hundred thousand one", "einhunderttausendeins"),
    (101000, "one hundred one thousand", "einhunderteintausend"),
    (101101, "one hundred one thousand one hundred one", "einhunderteintausendeinhunderteins"),
    (342000, "three hundred forty-two thousand", "dreihundertzweiundvierzigtausend"),
    (600060, "six hundred thousand sixty", "sechshunderttausendsechzig"),
    (
        999999,
        "nine hundred ninety-nine thousand nine hundred ninety-nine",
        "neunhundertneunundneunzigtausendneunhundertneunundneunzig",
    ),
]


@pytest.mark.parametrize("n, en, de", KNOWN, ids=[str(k[0]) for k in KNOWN])
def test_known_spellings(n, en, de):
    assert english(n) == en
    assert german(n) == de


@pytest.mark.parametrize("bad", [-1, 1_000_000, 10**7])
def test_out_of_range(bad):
    with pytest.raises(ValueError):
        english(bad)
    with pytest.raises(ValueError):
        german(bad)


def test_not_an_int():
    with pytest.raises(TypeError):
        german(3.0)
    with pytest.raises(TypeError):
        english(True)


def test_every_spelling_is_unique_and_well_formed():
    seen_en, seen_de = set(), set()
    for n in range(numbers.MAX + 1):
        en, de = english(n), german(n)
        seen_en.add(en)
        seen_de.add(de)
        if n % 97 == 0:  # a sample is enough for the character checks
            assert " " not in de and de == de.lower() and "-" not in de
            assert en == en.lower() and "  " not in en and " and " not in f" {en} "
    assert len(seen_en) == len(seen_de) == numbers.MAX + 1


def test_pairs():
    assert pairs([342, 0]) == [
        ("translate English to German: three hundred forty-two", "dreihundertzweiundvierzig"),
        ("translate English to German: zero", "null"),
    ]


def test_splits_are_disjoint_complete_and_reproducible():
    train, validation, test = split(0)
    assert (train, validation, test) == split(0)
    assert split(1)[2] != test
    assert not set(train) & set(test)
    assert not set(train) & set(validation)
    assert not set(validation) & set(test)
    assert len(train) + len(validation) + len(test) == numbers.MAX + 1
    assert len(test) == sum(row[3] for row in numbers.HELD_OUT) == 4000
    assert len(validation) == sum(row[2] for row in numbers.HELD_OUT) == 1000
    assert set(range(100)) <= set(train)  # the atoms are always trained on
    for low, high, n_val, n_test in numbers.HELD_OUT:  # every magnitude is held out
        assert sum(low <= n <= high for n in test) == n_test
        assert sum(low <= n <= high for n in validation) == n_val
    assert train == sorted(train) and test == sorted(test)


def test_split_is_pinned():
    """The held-out set behind the bundled model's reported accuracy must not drift with code changes."""
    _, validation, test = split(0)
    assert test[:5] == PINNED_TEST_HEAD and validation[:3] == PINNED_VALIDATION_HEAD


PINNED_TEST_HEAD = [101, 114, 133, 139, 163]
PINNED_VALIDATION_HEAD = [141, 175, 197]


def test_the_training_tokenizer_splits_as_sentencepiece_does(tmp_path):
    """train_numbers.load_tokenizer on the bundled vocabulary: every piece, and the same ids as sentencepiece (under
    transformers 5, T5TokenizerFast(vocab_file=...) alone makes a four-piece vocabulary)."""
    import shutil

    import sentencepiece

    from t5ort.demo import ASSETS
    from t5ort.training.train_numbers import load_tokenizer

    shutil.copy(ASSETS / "checkpoint" / "spiece.model", tmp_path / "spiece.model")
    spm = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "spiece.model"))
    tokenizer = load_tokenizer(tmp_path / "spiece.model")
    assert len(tokenizer) == spm.get_piece_size()
    for n in (0, 7, 342, 1001, 777777, 990909):
        for text in (numbers.source(n), german(n)):
            assert tokenizer(text).input_ids == spm.encode(text) + [1], text
