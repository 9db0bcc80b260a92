"""What the runtime returns: frozen dataclasses of numpy arrays, named for exactly what they hold."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import analysis


@dataclass(frozen=True)
class SpeculationStats:
    """What speculative decoding did in one ``generate`` call.

    - ``rounds``: draft-and-verify rounds (one verify pass each);
    - ``drafted``: tokens proposed by the drafter, over all rounds;
    - ``accepted``: drafted tokens emitted as they were (each round also emits one
      token of the target's own, except when decoding stopped on a drafted token);
    - ``decoder_passes``: passes of the target's decoder graph (rounds + ``redecided``);
    - ``redecided``: near-tie steps decided again from a one-token pass;
    - ``draft_passes``: passes of the draft model's decoder graph (0 for prompt lookup).
    """

    rounds: int
    drafted: int
    accepted: int
    decoder_passes: int
    redecided: int
    draft_passes: int

    @property
    def acceptance_rate(self) -> float:
        """accepted / drafted (0.0 when nothing was drafted)."""
        return self.accepted / self.drafted if self.drafted else 0.0


@dataclass(frozen=True, eq=False)
class GenerationResult:
    """What one ``generate`` call produced. Arrays are numpy; nothing is normalised.

    - ``sequences``: int64 [N, 1 + steps], starting with the decoder start token;
      rows that finished early are padded with the pad token, as transformers does.
    - ``logits``: float32 [N, steps, vocab], the raw decoder outputs of every step
      (``np.stack(out.logits, 1)`` in transformers), or None with ``output_logits=False``.
      The graph wrote it step by step into a step-major buffer, so it is a view:
      ``logits[:, i]`` (one step) is contiguous; ``np.ascontiguousarray`` gives a row-major copy.
    - ``scores``: float32 [N, steps, vocab], the logits after the logits processors
      (transformers' ``output_scores``), or None unless ``output_scores=True``.
    - ``token_logprobs``: float32 [N, steps], log-softmax of the raw logits at the
      chosen token; 0 at the padding after a row's EOS.
    - ``texts``: the decoded strings without special tokens (None without a tokenizer).
    - ``sequences_scores`` (beam search): float32 [N * num_return_sequences], the
      length-normalised log-prob sums that ranked the hypotheses, as transformers.
    - ``beam_indices`` (beam search): int64 [N * num_return_sequences, steps], the
      row of ``logits``/``scores`` that produced each token; -1 after the hypothesis ended.
    - ``speculation`` (speculative decoding: ``prompt_lookup_num_tokens`` or ``assistant``):
      :class:`SpeculationStats`, what was drafted and kept; None otherwise.

    With beam search, ``logits`` and ``scores`` have one row per beam
    ([N * num_beams, steps, vocab]) and ``scores`` holds the processed log-probs,
    both as in transformers; follow ``beam_indices`` to read a hypothesis' steps.
    """

    sequences: np.ndarray
    logits: np.ndarray | None
    scores: np.ndarray | None
    token_logprobs: np.ndarray
    texts: tuple[str, ...] | None
    sequences_scores: np.ndarray | None = None
    beam_indices: np.ndarray | None = None
    speculation: SpeculationStats | None = None

    @property
    def num_steps(self) -> int:
        return int(self.sequences.shape[1] - 1)

    def _raw_logits(self, what: str) -> np.ndarray:
        if self.logits is None:
            raise ValueError(f"{what} needs the raw logits; generate with output_logits=True.")
        return self.logits

    def top_alternatives(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most likely tokens of every step under the raw logits, best first.

        Returns ``(token_ids, probs)``, int64 and float32 [rows, steps, k].
        """
        return analysis.top_alternatives(self._raw_logits("top_alternatives"), k)

    def entropy(self) -> np.ndarray:
        """Entropy (nats) of every step's next-token distribution under the raw logits: [rows, steps]."""
        return analysis.entropy(self._raw_logits("entropy"))

    def margin(self) -> np.ndarray:
        """Probability of the best token minus the runner-up's at every step: [rows, steps]. Small = unsure."""
        return analysis.margin(self._raw_logits("margin"))

    def transition_scores(self, normalize_logits: bool = False) -> np.ndarray:
        """transformers' ``compute_transition_scores`` (needs ``output_scores=True``)."""
        return analysis.compute_transition_scores(self, normalize_logits)


@dataclass(frozen=True, eq=False)
class StepEvent:
    """One step of :meth:`T5Runtime.stream`: every row's new token and that step's raw logits [N, vocab]."""

    step: int
    token_ids: np.ndarray  # int64 [N]; pad for rows already finished
    logits: np.ndarray  # float32 [N, vocab], raw
    finished: np.ndarray  # bool [N], true once a row has stopped (this step included)
    texts: tuple[str, ...] | None  # each new token as text
    logsumexp: np.ndarray | None = None  # float32 [N], of each row's raw logits: logits - logsumexp[:, None] are log-probs


@dataclass(frozen=True, eq=False)
class ScoreResult:
    """Teacher-forced scores of given targets.

    - ``logits``: float32 [N, T, vocab], raw (None with ``output_logits=False``);
    - ``token_logprobs``: float32 [N, T], log-softmax at each target token, 0 at padding;
    - ``total_logprob``: float32 [N], their sum;
    - ``target_ids``: int64 [N, T], the targets, -100 at padding.
    """

    logits: np.ndarray | None
    token_logprobs: np.ndarray
    total_logprob: np.ndarray
    target_ids: np.ndarray
