"""Numbers 0..999999 written out in English and in German words: the data of the bundled model.

Pure Python (no torch), deterministic. The bundled model (``t5ort/assets/numbers``,
trained by :mod:`t5ort.training.train_numbers`) translates ``english(n)`` into
``german(n)``::

    >>> english(71009), german(71009)
    ('seventy-one thousand nine', 'einundsiebzigtausendneun')

English style: lower case, tens and units hyphenated (21..99), no "and", no commas:
"zero", "three hundred forty-two", "seventy-one thousand nine", "one hundred thousand".

German style: one word, lower case, as in common written German, with one
convention throughout where usage varies:

- hundreds and thousands always carry their count, including one: 100 "einhundert",
  1000 "eintausend", 101 "einhunderteins", 1001 "eintausendeins", 100000
  "einhunderttausend" (never the bare "hundert"/"tausend");
- one is "eins" when it ends the number (1, 101, 1001, 100001) and "ein" before
  "und", "hundert" and "tausend" (21 "einundzwanzig", 1100 "eintausendeinhundert",
  101000 "einhunderteintausend");
- units come before the tens, joined by "und" (342 "dreihundertzweiundvierzig");
- 16 "sechzehn", 17 "siebzehn", 60 "sechzig", 70 "siebzig", 30 "dreißig"
  (with ß; umlauts as ü/ö: "fünf", "zwölf").

:func:`split` fixes the held-out numbers: a seeded validation and test split of a
few thousand numbers from 100..999999, never used for training.
"""

from __future__ import annotations

import random

MAX = 999_999
PREFIX = "translate English to German: "

_EN_UNITS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen"
).split()
_EN_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()

_DE_UNITS = (
    "null eins zwei drei vier fünf sechs sieben acht neun zehn elf zwölf dreizehn vierzehn fünfzehn "
    "sechzehn siebzehn achtzehn neunzehn"
).split()
_DE_TENS = "_ _ zwanzig dreißig vierzig fünfzig sechzig siebzig achtzig neunzig".split()


def _check(n: int) -> None:
    if not isinstance(n, int) or isinstance(n, bool):
        raise TypeError(f"expected an int, got {type(n).__name__}")
    if not 0 <= n <= MAX:
        raise ValueError(f"{n} is out of range: 0 <= n <= {MAX}")


def _en_below_1000(n: int) -> str:
    """1..999 in English words."""
    hundreds, rest = divmod(n, 100)
    words = []
    if hundreds:
        words.append(f"{_EN_UNITS[hundreds]} hundred")
    if rest:
        if rest < 20:
            words.append(_EN_UNITS[rest])
        else:
            tens, units = divmod(rest, 10)
            words.append(_EN_TENS[tens] + (f"-{_EN_UNITS[units]}" if units else ""))
    return " ".join(words)


def english(n: int) -> str:
    """``n`` (0..999999) in English words: "three hundred forty-two", "seventy-one thousand nine"."""
    _check(n)
    if n == 0:
        return "zero"
    thousands, rest = divmod(n, 1000)
    words = []
    if thousands:
        words.append(f"{_en_below_1000(thousands)} thousand")
    if rest:
        words.append(_en_below_1000(rest))
    return " ".join(words)


def _de_below_1000(n: int, final: bool) -> str:
    """1..999 in German; ``final``: the number ends here (a trailing one is "eins", else "ein")."""
    hundreds, rest = divmod(n, 100)
    out = ""
    if hundreds:
        out += ("ein" if hundreds == 1 else _DE_UNITS[hundreds]) + "hundert"
    if rest:
        if rest == 1:
            out += "eins" if final else "ein"
        elif rest < 20:
            out += _DE_UNITS[rest]
        else:
            tens, units = divmod(rest, 10)
            if units:
                out += ("ein" if units == 1 else _DE_UNITS[units]) + "und"
            out += _DE_TENS[tens]
    return out


def german(n: int) -> str:
    """``n`` (0..999999) in German, one word: "dreihundertzweiundvierzig", "einundsiebzigtausendneun"."""
    _check(n)
    if n == 0:
        return "null"
    thousands, rest = divmod(n, 1000)
    out = ""
    if thousands:
        out += _de_below_1000(thousands, final=False) + "tausend"
    if rest:
        out += _de_below_1000(rest, final=True)
    return out


def source(n: int) -> str:
    """The model's input for ``n``: "translate English to German: <english(n)>"."""
    return PREFIX + english(n)


def pairs(numbers) -> list[tuple[str, str]]:
    """(source, target) pairs: ("translate English to German: <english>", "<german>") for each number."""
    return [(source(n), german(n)) for n in numbers]


# Held-out numbers per magnitude: (low, high, validation count, test count). 0..99 are never
# held out: they are the atoms every other number is built from (and "eins" alone exists only there).
HELD_OUT = (
    (100, 999, 50, 100),
    (1_000, 9_999, 250, 900),
    (10_000, 99_999, 250, 1_000),
    (100_000, MAX, 450, 2_000),
)


def split(seed: int = 0) -> tuple[list[int], list[int], list[int]]:
    """A seeded (train, validation, test) partition of 0..999999, each list sorted.

    validation and test hold a fixed number of numbers of every magnitude
    (:data:`HELD_OUT`: 1,000 and 4,000 in all); train is everything else
    (0..99 always included). The same seed gives the same split on any machine.
    """
    rng = random.Random(seed)
    validation: list[int] = []
    test: list[int] = []
    for low, high, n_val, n_test in HELD_OUT:
        picked = rng.sample(range(low, high + 1), n_val + n_test)
        validation += picked[:n_val]
        test += picked[n_val:]
    held = set(validation) | set(test)
    train = [n for n in range(MAX + 1) if n not in held]
    return train, sorted(validation), sorted(test)


def magnitude(n: int) -> int:
    """Number of decimal digits of ``n`` (0 has one)."""
    return len(str(n))
