"""Misspelled English number words and their corrections: the data of the spelling model.

Pure Python (no torch), deterministic. The spelling model (``t5ort/assets/spelling``,
trained by :mod:`t5ort.training.train_spelling`) reads a list of one to three numbers
written in English words (:func:`t5ort.training.numbers.english`), some words
misspelled, and writes the list again, spelled right::

    >>> example(random.Random(3))
    ('fix: fiv hundred seventy thousand six hundrwd sixty-five', 'five hundred seventy thousand six hundred sixty-five')

Several numbers are numbered, "1. ..., 2. ...", and the markers are never misspelled:
number words repeat ("hundred", "thousand", "seventy" in every item), and a marker gives
a small model copying by content a way to tell the items apart (models trained without
them wrote one item's words into another; the markers' effect alone was not isolated).

Most output tokens are copies of input tokens: the task where speculative decoding
drafting from the input (prompt lookup) pays.

Misspellings (:func:`misspell`): each word (hyphenated halves count as words) is
misspelled with probability :data:`TYPO_RATE` by one edit: a letter dropped,
doubled, swapped with the next one, or replaced by a neighbour on a QWERTY
keyboard. The held-out split (:func:`split`) is a seeded set of numbers never used
in training, the same on every machine.
"""

from __future__ import annotations

import random

from . import numbers as nb

PREFIX = "fix: "
TYPO_RATE = 0.3
COUNT_WEIGHTS = (0.6, 0.25, 0.15)  # shares of examples with one, two and three numbers
MAX_NUMBERS = len(COUNT_WEIGHTS)

_KEYBOARD = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
_NEIGHBOURS = {}
for _r, _row in enumerate(_KEYBOARD):
    for _c, _ch in enumerate(_row):
        _near = [_row[i] for i in (_c - 1, _c + 1) if 0 <= i < len(_row)]
        for _other in (_r - 1, _r + 1):
            if 0 <= _other < len(_KEYBOARD):
                _near += [_KEYBOARD[_other][i] for i in (_c - 1, _c) if 0 <= i < len(_KEYBOARD[_other])]
        _NEIGHBOURS[_ch] = "".join(sorted(set(_near)))


def typo(word: str, rng: random.Random) -> str:
    """``word`` with one edit (drop, double, swap, keyboard-neighbour replace); words of one letter stay."""
    if len(word) < 2:
        return word
    i = rng.randrange(len(word))
    kind = rng.choice(("drop", "double", "swap", "replace"))
    if kind == "drop":
        return word[:i] + word[i + 1:]
    if kind == "double":
        return word[:i] + word[i] + word[i:]
    if kind == "swap" and i < len(word) - 1 and word[i] != word[i + 1]:
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    return word[:i] + rng.choice(_NEIGHBOURS[word[i]]) + word[i + 1:]


def misspell(text: str, rng: random.Random, rate: float = TYPO_RATE) -> str:
    """Each word of ``text`` (and each half of a hyphenated word) misspelled with probability ``rate``."""
    words = []
    for word in text.split(" "):
        core, comma = (word[:-1], ",") if word.endswith(",") else (word, "")
        if core[:1].isdigit():  # a list marker "2." stays
            words.append(word)
            continue
        parts = [typo(p, rng) if rng.random() < rate else p for p in core.split("-")]
        words.append("-".join(parts) + comma)
    return " ".join(words)


def target(numbers: list[int]) -> str:
    """The correct text: the numbers in English words, separated by ", "; several are numbered "1. ", "2. "."""
    if len(numbers) == 1:
        return nb.english(numbers[0])
    return ", ".join(f"{i}. {nb.english(n)}" for i, n in enumerate(numbers, 1))


def example(rng: random.Random, pool: list[int] | None = None) -> tuple[str, str]:
    """One seeded (source, target) pair: one to three numbers (:data:`COUNT_WEIGHTS`) from ``pool``
    (default 0..999999)."""
    count = rng.choices(range(1, MAX_NUMBERS + 1), COUNT_WEIGHTS)[0]
    numbers = [rng.choice(pool) if pool is not None else rng.randint(0, nb.MAX) for _ in range(count)]
    text = target(numbers)
    return PREFIX + misspell(text, rng), text


def split(seed: int = 0, held_out: int = 2000) -> tuple[set[int], list[int]]:
    """(held-out numbers, training pool): ``held_out`` seeded numbers of 100..999999 never used for training."""
    rng = random.Random(seed)
    held = set(rng.sample(range(100, nb.MAX + 1), held_out))
    return held, [n for n in range(nb.MAX + 1) if n not in held]


def test_pairs(seed: int = 0, count: int = 500) -> list[tuple[str, str]]:
    """The held-out test set: ``count`` seeded pairs built from held-out numbers only."""
    held, _ = split(seed)
    pool = sorted(held)
    rng = random.Random(seed + 1)
    return [example(rng, pool) for _ in range(count)]
