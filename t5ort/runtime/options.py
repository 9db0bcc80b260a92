"""One frozen options object for every decoding strategy, in transformers' vocabulary.

``GenerationOptions(...).validate(vocab_size)`` checks every value and every
combination before any work is done; errors name the option and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, Callable, Sequence

import numpy as np

EARLY_STOPPING = (True, False, "never")


@dataclass(frozen=True)
class GenerationOptions:
    """What to generate and how. Defaults are transformers' ``GenerationConfig`` defaults.

    Strategy: greedy (default), beam search (``num_beams > 1``) or sampling
    (``do_sample=True``; ``top_k`` defaults to 50 as in transformers).
    Processors run in transformers' order: repetition_penalty, no_repeat_ngram_size,
    bad_words_ids, min_new_tokens, forced_bos_token_id, forced_eos_token_id,
    suppress_tokens, the user's ``logits_processor`` list, then (sampling only)
    temperature, top_k, top_p, min_p, typical_p.

    Speculative greedy decoding (any batch; see :mod:`t5ort.runtime.speculative`):
    ``prompt_lookup_num_tokens`` (draft up to this many tokens from the source and the
    output so far, matching n-grams of up to ``max_matching_ngram_size`` tokens, default
    2), or a draft runtime passed to ``generate(assistant=...)`` with
    ``num_assistant_tokens`` (default 20) and ``num_assistant_tokens_schedule``
    ("constant", the default, or transformers' "heuristic": +2 after a fully accepted
    draft, -1 otherwise).
    """

    max_new_tokens: int = 20
    min_new_tokens: int = 0
    do_sample: bool = False
    num_beams: int = 1
    num_return_sequences: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    min_p: float | None = None
    typical_p: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    bad_words_ids: tuple[tuple[int, ...], ...] | None = None
    suppress_tokens: tuple[int, ...] | None = None
    forced_bos_token_id: int | None = None
    forced_eos_token_id: int | tuple[int, ...] | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    stop_strings: tuple[str, ...] | None = None
    logits_processor: tuple[Callable[[np.ndarray, np.ndarray], np.ndarray], ...] = ()
    stopping_criteria: tuple[Callable[[np.ndarray, np.ndarray], Any], ...] = ()
    seed: int | None = None
    prompt_lookup_num_tokens: int | None = None
    max_matching_ngram_size: int | None = None
    num_assistant_tokens: int | None = None
    num_assistant_tokens_schedule: str | None = None
    output_logits: bool = True
    output_scores: bool = False

    @classmethod
    def create(cls, **kwargs: Any) -> GenerationOptions:
        """Build from keyword arguments, turning lists into tuples (so the object stays hashable and frozen)."""
        unknown = set(kwargs) - set(cls.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown generation option(s) {sorted(unknown)}; see t5ort.GenerationOptions.")
        for name in ("bad_words_ids",):
            if isinstance(kwargs.get(name), (list, tuple)):
                kwargs[name] = tuple(tuple(w) if isinstance(w, (list, tuple)) else w for w in kwargs[name])
        for name in ("suppress_tokens", "logits_processor", "stopping_criteria", "forced_eos_token_id", "eos_token_id"):
            if isinstance(kwargs.get(name), list):
                kwargs[name] = tuple(kwargs[name])
        if isinstance(kwargs.get("stop_strings"), str):
            kwargs["stop_strings"] = (kwargs["stop_strings"],)
        elif isinstance(kwargs.get("stop_strings"), list):
            kwargs["stop_strings"] = tuple(kwargs["stop_strings"])
        return cls(**kwargs)

    @property
    def strategy(self) -> str:
        return "beam" if self.num_beams > 1 else "sample" if self.do_sample else "greedy"

    @property
    def prompt_lookup(self) -> bool:
        return self.prompt_lookup_num_tokens is not None

    @property
    def speculative(self) -> bool:
        """Any speculative-decoding option set (prompt lookup, or the draft model's)."""
        return self.prompt_lookup or self.num_assistant_tokens is not None or self.num_assistant_tokens_schedule is not None

    @property
    def rows_per_input(self) -> int:
        """Decoder rows per input row: beams for beam search, return sequences for sampling."""
        return self.num_beams if self.num_beams > 1 else self.num_return_sequences

    def validate(self, vocab_size: int) -> GenerationOptions:
        _int(self, "max_new_tokens", low=1)
        _int(self, "min_new_tokens", low=0)
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(
                f"min_new_tokens ({self.min_new_tokens}) must not exceed max_new_tokens ({self.max_new_tokens})."
            )
        for name in ("do_sample", "output_logits", "output_scores"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {type(getattr(self, name)).__name__}.")
        _int(self, "num_beams", low=1)
        _int(self, "num_return_sequences", low=1)
        if self.num_beams > 1:
            if self.do_sample:
                raise ValueError("do_sample=True with num_beams > 1 (beam sampling) is not supported; pick one.")
            if self.num_return_sequences > self.num_beams:
                raise ValueError(
                    f"num_return_sequences ({self.num_return_sequences}) must be <= num_beams ({self.num_beams})."
                )
        elif self.num_return_sequences > 1 and not self.do_sample:
            raise ValueError(
                "num_return_sequences > 1 needs num_beams > 1 or do_sample=True: greedy decoding has one answer."
            )
        _real(self, "length_penalty")
        if self.early_stopping not in EARLY_STOPPING or not isinstance(self.early_stopping, (bool, str)):
            raise ValueError(f"early_stopping must be True, False or 'never', got {self.early_stopping!r}.")
        self._validate_sampling()
        _real(self, "repetition_penalty", low=0.0, low_open=True)
        _int(self, "no_repeat_ngram_size", low=0)
        if self.bad_words_ids is not None:
            if not self.bad_words_ids or any(
                not isinstance(w, tuple) or not w or not all(_is_id(t, vocab_size) for t in w)
                for w in self.bad_words_ids
            ):
                raise ValueError(
                    f"bad_words_ids must be a non-empty list of non-empty lists of token ids in [0, {vocab_size}), "
                    f"got {self.bad_words_ids!r}."
                )
        _ids(self, "suppress_tokens", vocab_size, allow_single=False)
        _ids(self, "forced_eos_token_id", vocab_size)
        _ids(self, "eos_token_id", vocab_size)
        if self.forced_bos_token_id is not None and not _is_id(self.forced_bos_token_id, vocab_size):
            raise ValueError(f"forced_bos_token_id must be a token id in [0, {vocab_size}), got {self.forced_bos_token_id!r}.")
        if self.stop_strings is not None and (
            not self.stop_strings or not all(isinstance(s, str) and s for s in self.stop_strings)
        ):
            raise ValueError(f"stop_strings must be a non-empty string or list of them, got {self.stop_strings!r}.")
        for name in ("logits_processor", "stopping_criteria"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or not all(callable(f) for f in value):
                raise TypeError(f"{name} must be a list of callables (input_ids, scores) -> ..., got {value!r}.")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, Integral) or self.seed < 0):
            raise ValueError(f"seed must be a non-negative int or None, got {self.seed!r}.")
        self._validate_speculation()
        return self

    def _validate_speculation(self) -> None:
        for name in ("prompt_lookup_num_tokens", "max_matching_ngram_size", "num_assistant_tokens"):
            if getattr(self, name) is not None:
                _int(self, name, low=1)
        if self.max_matching_ngram_size is not None and not self.prompt_lookup:
            raise ValueError("max_matching_ngram_size goes with prompt_lookup_num_tokens; pass both or neither.")
        if self.num_assistant_tokens_schedule not in (None, "constant", "heuristic"):
            raise ValueError(f"num_assistant_tokens_schedule must be 'constant' or 'heuristic', "
                             f"got {self.num_assistant_tokens_schedule!r}.")
        if self.prompt_lookup and (self.num_assistant_tokens is not None
                                   or self.num_assistant_tokens_schedule is not None):
            raise ValueError("prompt_lookup_num_tokens and num_assistant_tokens/num_assistant_tokens_schedule are "
                             "two kinds of speculative decoding; pick one.")
        if self.prompt_lookup and self.strategy != "greedy":
            raise ValueError(f"prompt_lookup_num_tokens (speculative decoding) needs greedy decoding, got "
                             f"{self.strategy} ({'num_beams > 1' if self.num_beams > 1 else 'do_sample=True'}); "
                             "speculative sampling and beam search are not implemented.")

    def _validate_sampling(self) -> None:
        _real(self, "temperature", low=0.0, low_open=True)
        _int(self, "top_k", low=0)
        _real(self, "top_p", low=0.0, low_open=True, high=1.0)
        if self.min_p is not None:
            _real(self, "min_p", low=0.0, high=1.0)
        _real(self, "typical_p", low=0.0, low_open=True, high=1.0)
        if not self.do_sample:
            changed = [
                name for name, default in (("temperature", 1.0), ("top_p", 1.0), ("typical_p", 1.0))
                if getattr(self, name) != default
            ] + (["min_p"] if self.min_p is not None else []) + (["seed"] if self.seed is not None else [])
            if changed:
                raise ValueError(f"{', '.join(changed)} only apply with do_sample=True; pass do_sample=True or drop them.")


def _int(opts: GenerationOptions, name: str, low: int) -> None:
    value = getattr(opts, name)
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}.")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}.")


def _real(opts: GenerationOptions, name: str, low: float | None = None, low_open: bool = False,
          high: float | None = None) -> None:
    value = getattr(opts, name)
    if isinstance(value, bool) or not isinstance(value, Real) or not np.isfinite(value):
        raise TypeError(f"{name} must be a finite number, got {value!r}.")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}.")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}.")


def _is_id(value: Any, vocab_size: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, Integral) and 0 <= value < vocab_size


def _ids(opts: GenerationOptions, name: str, vocab_size: int, allow_single: bool = True) -> None:
    value = getattr(opts, name)
    if value is None:
        return
    values: Sequence[Any] = (value,) if allow_single and not isinstance(value, tuple) else value
    if not isinstance(values, tuple) or not values or not all(_is_id(v, vocab_size) for v in values):
        raise ValueError(f"{name} must be token id(s) in [0, {vocab_size}), got {value!r}.")
