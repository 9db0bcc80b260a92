"""``t5ort.load(OUT_DIR)`` and the runtime's public face: ``T5Runtime.generate``, ``stream``, ``score``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from . import speculative
from .buffers import BufferPool
from .decoder import Decoder
from .decoding import Special, decode, start
from .graphs import EncoderOutput, T5Graphs
from .manifest import Manifest, read_manifest
from .options import GenerationOptions
from .results import GenerationResult, ScoreResult, StepEvent
from .numerics import checked
from .tokenizer import TextTokenizer, load_tokenizer


DEFAULT_MAX_RESULT_BYTES = 4 << 30


@dataclass(frozen=True)
class Limits:
    """Per-request caps, set at load time; None means no cap."""

    max_input_tokens: int | None = None
    max_new_tokens: int | None = None
    max_result_bytes: int | None = DEFAULT_MAX_RESULT_BYTES

    def check(self, input_ids: np.ndarray, new_tokens: int, result_bytes: int, what: str) -> None:
        if self.max_input_tokens is not None and input_ids.shape[1] > self.max_input_tokens:
            raise ValueError(
                f"the input has {input_ids.shape[1]} tokens, over this runtime's max_input_tokens="
                f"{self.max_input_tokens} (set at load); shorten the input."
            )
        if self.max_new_tokens is not None and new_tokens > self.max_new_tokens:
            raise ValueError(
                f"max_new_tokens={new_tokens} is over this runtime's cap of {self.max_new_tokens} (set at load)."
            )
        if self.max_result_bytes is not None and result_bytes > self.max_result_bytes:
            raise MemoryError(
                f"{what} would need about {result_bytes / 2**30:.2f} GiB, over this runtime's max_result_bytes="
                f"{self.max_result_bytes / 2**30:.2f} GiB; pass output_logits=False, fewer rows or steps, "
                "or load with a larger max_result_bytes."
            )


class T5Runtime:
    """A loaded export: tokenizer, graphs, limits. Thread-safe: sessions are shared, each call has its own state."""

    def __init__(self, directory: Path, manifest: Manifest, graphs: T5Graphs, tokenizer: TextTokenizer | None,
                 limits: Limits = Limits()):
        self.directory = directory
        self.manifest = manifest
        self.graphs = graphs
        self.tokenizer = tokenizer
        self.limits = limits
        self.buffers = BufferPool()  # the raw logits and scores buffers of finished calls, for reuse

    @property
    def vocab_size(self) -> int:
        return self.manifest.geometry.vocab_size

    # ---- inputs ----------------------------------------------------------------

    def encode_texts(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Tokenize and right-pad a batch: int64 ``input_ids`` and ``attention_mask`` [N, longest]."""
        if self.tokenizer is None:
            raise ValueError(f"{self.directory} has no tokenizer; pass input_ids instead of texts.")
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, not a single string; wrap it: texts=[text].")
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] must be a str, got {type(t).__name__}.")
            if not t.isascii() and any("\ud800" <= c <= "\udfff" for c in t):
                position = next(j for j, c in enumerate(t) if "\ud800" <= c <= "\udfff")
                raise ValueError(
                    f"texts[{i}] holds a lone UTF-16 surrogate ({t[position]!r} at character {position}), which "
                    "is not valid Unicode text; decode the bytes properly or drop that character."
                )
        if not texts:
            raise ValueError("texts is empty: pass at least one string.")
        rows = self.tokenizer.encode_batch(texts)
        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), self.manifest.special_tokens.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
            mask[i, : len(r)] = 1
        return ids, mask

    def _check_ids(self, input_ids, attention_mask) -> tuple[np.ndarray, np.ndarray]:
        ids = np.asarray(input_ids)
        if ids.ndim != 2:
            raise ValueError(f"input_ids must be 2-D [batch, length], got shape {ids.shape}.")
        if ids.shape[0] == 0 or ids.shape[1] == 0:
            raise ValueError(f"input_ids is empty (shape {ids.shape}): pass at least one row of one token.")
        if not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"input_ids must hold integers, got dtype {ids.dtype}.")
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= self.vocab_size:
            raise ValueError(
                f"input_ids must lie in [0, {self.vocab_size}) (the vocabulary), got values in [{low}, {high}]."
            )
        if attention_mask is None:
            mask = np.ones_like(ids, dtype=np.int64)
        else:
            mask = np.asarray(attention_mask)
            if mask.shape != ids.shape:
                raise ValueError(
                    f"attention_mask has shape {mask.shape} but input_ids has {ids.shape}; they must match."
                )
            if not np.isin(mask, (0, 1)).all():
                raise ValueError("attention_mask must hold only 0 and 1.")
            if not mask.any(axis=1).all():
                raise ValueError("attention_mask has a row with no 1: every row needs at least one token.")
        return np.ascontiguousarray(ids, dtype=np.int64), np.ascontiguousarray(mask, dtype=np.int64)

    def encode(self, texts: Sequence[str] | None = None, *, input_ids: np.ndarray | None = None,
               attention_mask: np.ndarray | None = None) -> EncoderOutput:
        """Run the encoder once over ``texts`` (or ``input_ids`` [N, L] with an optional right-padded
        ``attention_mask``). The :class:`~t5ort.runtime.graphs.EncoderOutput` (every decoder layer's
        cross-attention keys/values; ``nbytes``; ``[rows]``) goes to ``generate``, ``stream``, ``score`` and
        ``decoder`` as ``encoder_output=``, in place of the inputs, as often as you like."""
        return self._encoded(texts, input_ids, attention_mask, None, lambda mask: self.limits.check(mask, 0, 0,
                                                                                                   "encode()"))

    def _encoded(self, texts, input_ids, attention_mask, encoder_output, check=None) -> EncoderOutput:
        """The inputs' encoder output: ``encoder_output`` as given, or the inputs encoded. ``check(mask)``
        (the limits) runs on the source mask before any work."""
        if encoder_output is None:
            ids, mask = self._inputs(texts, input_ids, attention_mask)
            if check is not None:
                check(mask)
            return self.graphs.encode(ids, mask)
        if not isinstance(encoder_output, EncoderOutput):
            raise TypeError(f"encoder_output must come from runtime.encode(...), got {type(encoder_output).__name__}.")
        if texts is not None or input_ids is not None or attention_mask is not None:
            raise ValueError("pass encoder_output or the inputs (texts / input_ids, attention_mask), not both.")
        if encoder_output.device != (self.graphs._device, self.graphs._device_id):
            raise ValueError(f"encoder_output lives on {encoder_output.device}, this runtime on "
                             f"{(self.graphs._device, self.graphs._device_id)}; encode with this runtime.")
        if check is not None:
            check(encoder_output.attention_mask)
        return encoder_output

    def decoder(self, source: Sequence[str] | EncoderOutput | None = None, *, input_ids: np.ndarray | None = None,
                attention_mask: np.ndarray | None = None, rows_per_input: int = 1) -> Decoder:
        """A step-level :class:`~t5ort.runtime.decoder.Decoder` over ``source`` (texts, or an encoder output
        from :meth:`encode`; or ``input_ids``), each input's rows repeated ``rows_per_input`` times:
        ``logits`` out, your tokens in (``append``, ``append_many``), ``select``, ``rollback``."""
        _positive_or_none("rows_per_input", rows_per_input)
        if rows_per_input is None:
            raise ValueError("rows_per_input must be a positive int, got None.")
        if isinstance(source, EncoderOutput):
            encoded = self._encoded(None, input_ids, attention_mask, source)
        else:
            encoded = self._encoded(source, input_ids, attention_mask, None)
        st = self.manifest.special_tokens
        return Decoder(self.graphs, self.graphs.expand(encoded, rows_per_input), st.decoder_start_token_id,
                       self.vocab_size)

    def _inputs(self, texts, input_ids, attention_mask) -> tuple[np.ndarray, np.ndarray]:
        if (texts is None) == (input_ids is None):
            raise ValueError("pass exactly one of texts or input_ids.")
        if texts is not None:
            if attention_mask is not None:
                raise ValueError("attention_mask goes with input_ids, not with texts.")
            return self._check_ids(*self.encode_texts(texts))
        return self._check_ids(input_ids, attention_mask)

    # ---- generation ------------------------------------------------------------

    def _special(self, options: GenerationOptions) -> Special:
        st = self.manifest.special_tokens
        eos = options.eos_token_id if options.eos_token_id is not None else st.eos_token_id
        return Special(st.decoder_start_token_id, st.pad_token_id, eos if isinstance(eos, tuple) else (eos,))

    def _token_text(self):
        return None if self.tokenizer is None else self.tokenizer.token_text

    def _decode_texts(self, sequences: np.ndarray) -> tuple[str, ...] | None:
        return None if self.tokenizer is None else tuple(self.tokenizer.decode_batch(sequences))

    def generate(
        self,
        texts: Sequence[str] | None = None,
        *,
        input_ids: np.ndarray | None = None,
        attention_mask: np.ndarray | None = None,
        encoder_output: EncoderOutput | None = None,
        **options: Any,
    ) -> GenerationResult:
        """Generate with the raw logits of every step, like transformers' ``generate``.

        Pass ``texts`` (a list of strings) or ``input_ids`` (int [N, L]) with an
        optional right-padded ``attention_mask``. ``options`` are
        :class:`GenerationOptions` fields with transformers' names and meaning:
        ``max_new_tokens``, ``min_new_tokens``, ``num_beams``, ``do_sample``,
        ``temperature``, ``top_k``, ``top_p``, ``logits_processor``, ``output_logits``,
        ``output_scores``... The result matches ``generate(output_logits=True,
        return_dict_in_generate=True)``. ``encoder_output`` (from :meth:`encode`) in place of the inputs
        reuses an encoder pass.

        Speculative greedy decoding (any batch; each row's result is plain greedy's at that batch,
        see :mod:`t5ort.runtime.speculative`): ``prompt_lookup_num_tokens=K`` drafts from
        the input, ``assistant=t5ort.load(DRAFT_DIR)`` from a smaller model with the same
        vocabulary (``num_assistant_tokens``); ``result.speculation`` says what was kept.
        """
        if "assistant_model" in options:
            raise TypeError("t5ort names the draft runtime assistant=..., not assistant_model=.")
        assistant = options.pop("assistant", None)
        opts = GenerationOptions.create(**options).validate(self.vocab_size)

        def check(mask: np.ndarray) -> None:
            per_step = mask.shape[0] * opts.rows_per_input * opts.max_new_tokens * self.vocab_size * 4
            self.limits.check(mask, opts.max_new_tokens,
                              per_step * (opts.output_logits + opts.output_scores), "the raw logits and scores")

        encoded = self._encoded(texts, input_ids, attention_mask, encoder_output, check)
        speculation = None
        if opts.speculative or assistant is not None:
            out, speculation = speculative.run(self, encoded, opts, self._special(opts), assistant,
                                               self._token_text())
        else:
            out = decode(self.graphs, encoded, opts, self._special(opts), self.vocab_size,
                         self._token_text(), self.buffers)
        search = out.search
        return GenerationResult(
            sequences=search.sequences,
            logits=out.logits,
            scores=out.scores,
            token_logprobs=search.token_logprobs,
            texts=self._decode_texts(search.sequences),
            sequences_scores=search.sequences_scores,
            beam_indices=search.beam_indices,
            speculation=speculation,
        )

    def stream(
        self,
        texts: Sequence[str] | None = None,
        *,
        input_ids: np.ndarray | None = None,
        attention_mask: np.ndarray | None = None,
        encoder_output: EncoderOutput | None = None,
        **options: Any,
    ) -> Iterator[StepEvent]:
        """Greedy or sampled decoding, one :class:`StepEvent` per step, nothing accumulated.

        Each event's ``logits`` is that step's raw [N, vocab] array (valid after the
        loop moves on: every step gets a fresh array). Options as in :meth:`generate`,
        except beam search and the output_* flags.
        """
        for name in ("output_logits", "output_scores"):
            if name in options:
                raise ValueError(f"{name} does not apply to stream(): every event carries that step's logits.")
        opts = GenerationOptions.create(**options, output_logits=False).validate(self.vocab_size)
        if opts.strategy == "beam":
            raise ValueError("stream() supports greedy and sampling; use generate() for num_beams > 1.")
        encoded = self._encoded(texts, input_ids, attention_mask, encoder_output,
                                lambda mask: self.limits.check(mask, opts.max_new_tokens, 0, "stream()"))
        strategy, steps = start(self.graphs, encoded, opts, self._special(opts), self._token_text())
        for step in steps:
            yield StepEvent(
                step=step.index,
                token_ids=step.tokens.copy(),
                logits=step.logits,
                finished=strategy.finished.copy(),
                texts=None if self.tokenizer is None else tuple(
                    self.tokenizer.token_text(int(t)) for t in step.tokens
                ),
                logsumexp=step.logsumexp.copy(),
            )

    # ---- teacher forcing -------------------------------------------------------

    def score(
        self,
        texts: Sequence[str] | None = None,
        targets: Sequence[str] | None = None,
        *,
        input_ids: np.ndarray | None = None,
        attention_mask: np.ndarray | None = None,
        target_ids: np.ndarray | None = None,
        output_logits: bool = True,
        encoder_output: EncoderOutput | None = None,
    ) -> ScoreResult:
        """Score given targets under the model: one decoder pass over the whole targets, each distinct
        source encoded once.

        ``targets`` (strings, tokenized with EOS like transformers' ``labels``) or
        ``target_ids`` (int [N, T], -100 marks padding as in transformers' labels): one per input, or
        any number for a single input (``score([question], [answer_1, ..., answer_k])``: K rows, one
        encoder pass). ``encoder_output`` (from :meth:`encode`) in place of the inputs reuses an encoder
        pass. ``logits`` equal ``model(input_ids, attention_mask=..., labels=target_ids).logits``.
        """
        if not isinstance(output_logits, bool):
            raise TypeError(f"output_logits must be a bool, got {type(output_logits).__name__}.")
        if encoder_output is None:
            ids, mask = self._inputs(texts, input_ids, attention_mask)
            unique, rows = _distinct_rows(ids, mask)
        else:
            encoded = self._encoded(texts, input_ids, attention_mask, encoder_output)
            mask, rows = encoded.attention_mask, np.arange(encoded.batch_size)
        labels = self._targets(targets, target_ids, len(rows))
        if len(rows) == 1 and labels.shape[0] > 1:  # one source, many targets
            rows = np.zeros(labels.shape[0], np.int64)
        self.limits.check(mask, labels.shape[1], labels.size * self.vocab_size * 4, "the logits of score()")
        if encoder_output is None:  # each distinct source once
            encoded = self.graphs.encode(ids[unique], mask[unique])
        valid = labels != -100
        st = self.manifest.special_tokens
        decoder_input_ids = np.empty_like(labels)
        decoder_input_ids[:, 0] = st.decoder_start_token_id
        decoder_input_ids[:, 1:] = np.where(valid[:, :-1], labels[:, :-1], st.pad_token_id)
        graphs = self.graphs
        if not np.array_equal(rows, np.arange(encoded.batch_size)):
            encoded = encoded[rows]
        state = graphs.start(encoded, capacity=decoder_input_ids.shape[1])
        lse = np.empty(decoder_input_ids.shape, np.float32)  # [N, T]
        logits, _ = graphs.forward(decoder_input_ids, state, logsumexp_out=lse)  # [N, T, vocab]
        checked(lse, "in score()")
        targets_clipped = np.where(valid, labels, 0)
        chosen = np.take_along_axis(logits, targets_clipped[:, :, None], axis=-1)[..., 0]
        token_logprobs = np.where(valid, chosen - lse, 0.0).astype(np.float32)
        return ScoreResult(
            logits=logits if output_logits else None,
            token_logprobs=token_logprobs,
            total_logprob=token_logprobs.sum(axis=1),
            target_ids=labels,
        )

    def _targets(self, targets, target_ids, batch: int) -> np.ndarray:
        if (targets is None) == (target_ids is None):
            raise ValueError("pass exactly one of targets or target_ids.")
        if targets is not None:
            ids, mask = self.encode_texts(targets)
            labels = np.where(mask == 1, ids, -100)
        else:
            labels = np.asarray(target_ids)
            if labels.ndim != 2 or labels.shape[1] == 0 or not np.issubdtype(labels.dtype, np.integer):
                raise ValueError(f"target_ids must be a non-empty 2-D integer array [N, T], got shape {labels.shape}.")
            bad = (labels != -100) & ((labels < 0) | (labels >= self.vocab_size))
            if bad.any():
                raise ValueError(f"target_ids must lie in [0, {self.vocab_size}) or be -100 (padding).")
        if labels.shape[0] != batch and batch != 1:
            raise ValueError(f"{labels.shape[0]} targets for {batch} inputs; pass one target per input, or "
                             "any number of targets for one input.")
        return labels.astype(np.int64)


def _distinct_rows(ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first index of each distinct (ids, mask) row, each row's index into those): so that a batch that
    repeats a source encodes it once."""
    keys = np.concatenate([ids, mask], axis=1)
    _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first)  # keep the first-seen order
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return first[order], rank[inverse.reshape(-1)]


def _positive_or_none(name: str, value) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be a positive int or None, got {value!r}.")


def load(
    directory: str | Path,
    *,
    provider: str = "cpu",
    threads: int | None = None,
    device_id: int = 0,
    verify: bool = True,
    max_input_tokens: int | None = None,
    max_new_tokens: int | None = None,
    max_result_bytes: int | None = DEFAULT_MAX_RESULT_BYTES,
    spin: bool = True,
) -> T5Runtime:
    """Load an export written by ``t5ort export``.

    - ``provider``: ``"cpu"`` or ``"cuda"`` (needs onnxruntime-gpu; never falls back silently).
    - ``threads``: ONNX Runtime intra-op threads of each of the runtime's two sessions (encoder and
      decoder, which one call runs in turn, never at once; None: onnxruntime's default, one per
      physical core). Idle threads sleep 1 ms after a call at most, so a loaded runtime that is not
      running costs no CPU, and calls sharing one runtime share its threads. Runtimes that run at the
      same time (several in one process, or one per server worker or process) each have their own:
      give each about (cores / runtimes running at once) threads so that together they do not
      oversubscribe the cores.
    - ``spin``: the threads spin between the ops of a run, the decoder's also for up to 1 ms between
      two steps, and the encoder's sleep as soon as its run ends (:func:`~t5ort.runtime.graphs.session_options`).
      On an idle 2-core VM that took 0.56-0.92x the time per step of never spinning. ``spin=False``:
      they always sleep, for cores that other work keeps busy, and where calls overlap on one runtime
      or more threads than cores run at once (there it was the faster one: 0.85-0.89x the time per step
      of spinning with two overlapping calls on one runtime, 0.67-0.75x with two 2-thread runtimes on 2
      cores; measured with benchmarks/overlap.py, removed in 021a351: docs/how-it-works.md).
    - ``verify``: check each graph file's sha256 against the manifest (about 1 s per GB).
    - ``max_input_tokens``, ``max_new_tokens``: caps for every request (None: no cap); a
      request over a cap is refused before any work.
    - ``max_result_bytes``: refuse requests whose per-step arrays (raw logits, scores)
      would need more memory than this (default 4 GiB; None: no budget).

    The runtime keeps up to 256 MiB of finished calls' logits and scores buffers and reuses one
    once no result refers to it any more (:mod:`t5ort.runtime.buffers`): a fresh buffer costs a
    page fault per 4 KiB while the graph writes into it.
    """
    _positive_or_none("threads", threads)
    _positive_or_none("max_input_tokens", max_input_tokens)
    _positive_or_none("max_new_tokens", max_new_tokens)
    _positive_or_none("max_result_bytes", max_result_bytes)
    directory = Path(directory)
    manifest = read_manifest(directory)
    graphs = T5Graphs(directory, manifest, provider=provider, threads=threads, device_id=device_id, verify=verify,
                      spin=spin)
    limits = Limits(max_input_tokens, max_new_tokens, max_result_bytes)
    return T5Runtime(directory, manifest, graphs, load_tokenizer(directory, manifest), limits)
