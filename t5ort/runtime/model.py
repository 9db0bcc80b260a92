"""``t5ort.load(OUT_DIR)`` and the runtime's public face: ``T5Runtime.generate``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .decoding import GenerationOptions, GreedySearch, build_processors, decode, logsumexp
from .graphs import T5Graphs
from .manifest import Manifest, read_manifest
from .tokenizer import TextTokenizer, load_tokenizer


@dataclass(frozen=True, eq=False)
class GenerationResult:
    """What one ``generate`` call produced. Arrays are numpy; nothing is normalised.

    - ``sequences``: int64 [N, 1 + steps], starting with the decoder start token;
      rows that finished early are padded with the pad token, as transformers does.
    - ``logits``: float32 [N, steps, vocab], the raw decoder outputs of every step
      (``np.stack(out.logits, 1)`` in transformers), or None with ``output_logits=False``.
    - ``scores``: float32 [N, steps, vocab], the logits after the logits processors
      (transformers' ``output_scores``), or None unless ``output_scores=True``.
    - ``token_logprobs``: float32 [N, steps], log-softmax of the raw logits at the
      chosen token; 0 at the padding after a row's EOS.
    - ``texts``: the decoded strings without special tokens (None without a tokenizer).
    """

    sequences: np.ndarray
    logits: np.ndarray | None
    scores: np.ndarray | None
    token_logprobs: np.ndarray
    texts: tuple[str, ...] | None

    @property
    def num_steps(self) -> int:
        return int(self.sequences.shape[1] - 1)

    def top_alternatives(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most likely tokens of every step under the raw logits, best first.

        Returns ``(token_ids, probs)``, int64 and float32 [N, steps, k].
        """
        if self.logits is None:
            raise ValueError("top_alternatives needs the raw logits; generate with output_logits=True.")
        if not 1 <= k <= self.logits.shape[-1]:
            raise ValueError(f"k must be in [1, {self.logits.shape[-1]}], got {k}.")
        ids = np.argpartition(-self.logits, k - 1, axis=-1)[..., :k]
        top = np.take_along_axis(self.logits, ids, axis=-1)
        order = np.argsort(-top, axis=-1, kind="stable")
        ids, top = np.take_along_axis(ids, order, axis=-1), np.take_along_axis(top, order, axis=-1)
        return ids.astype(np.int64), np.exp(top - logsumexp(self.logits)).astype(np.float32)


class T5Runtime:
    """A loaded export: tokenizer, graphs and generation defaults. Thread-safe: each call has its own state."""

    def __init__(self, directory: Path, manifest: Manifest, graphs: T5Graphs, tokenizer: TextTokenizer | None):
        self.directory = directory
        self.manifest = manifest
        self.graphs = graphs
        self.tokenizer = tokenizer

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

    def _inputs(self, texts, input_ids, attention_mask) -> tuple[np.ndarray, np.ndarray]:
        if (texts is None) == (input_ids is None):
            raise ValueError("pass exactly one of texts or input_ids.")
        if texts is not None:
            if attention_mask is not None:
                raise ValueError("attention_mask goes with input_ids, not with texts.")
            return self._check_ids(*self.encode_texts(texts))
        return self._check_ids(input_ids, attention_mask)

    # ---- generation ------------------------------------------------------------

    def generate(
        self,
        texts: Sequence[str] | None = None,
        *,
        input_ids: np.ndarray | None = None,
        attention_mask: np.ndarray | None = None,
        max_new_tokens: int = 20,
        min_new_tokens: int = 0,
        output_logits: bool = True,
        output_scores: bool = False,
    ) -> GenerationResult:
        """Greedy decoding with the raw logits of every step.

        Pass ``texts`` (a list of strings) or ``input_ids`` (int [N, L]) with an
        optional right-padded ``attention_mask``. Arguments follow transformers'
        ``generate``; the result matches ``generate(output_logits=True,
        return_dict_in_generate=True)``.
        """
        options = GenerationOptions(
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens,
            output_logits=output_logits,
            output_scores=output_scores,
        ).validate()
        ids, mask = self._inputs(texts, input_ids, attention_mask)
        special = self.manifest.special_tokens
        out = decode(
            self.graphs,
            self.graphs.encode(ids, mask),
            batch_size=ids.shape[0],
            options=options,
            processors=build_processors(options, special.eos_token_id),
            strategy=GreedySearch(),
            decoder_start_token_id=special.decoder_start_token_id,
            eos_token_ids=special.eos_token_id,
            pad_token_id=special.pad_token_id,
            vocab_size=self.vocab_size,
        )
        sequences = np.ascontiguousarray(out.sequences)
        texts_out = None if self.tokenizer is None else tuple(self.tokenizer.decode_batch(sequences))
        return GenerationResult(
            sequences=sequences,
            logits=out.logits,
            scores=out.scores,
            token_logprobs=np.ascontiguousarray(out.token_logprobs),
            texts=texts_out,
        )


def load(
    directory: str | Path,
    *,
    provider: str = "cpu",
    threads: int | None = None,
    device_id: int = 0,
) -> T5Runtime:
    """Load an export written by ``t5ort export``.

    ``provider``: ``"cpu"`` or ``"cuda"`` (needs onnxruntime-gpu; never falls back
    silently). ``threads``: ONNX Runtime intra-op threads (None: onnxruntime's default,
    one per physical core).
    """
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive int or None, got {threads!r}.")
    directory = Path(directory)
    manifest = read_manifest(directory)
    graphs = T5Graphs(directory, manifest, provider=provider, threads=threads, device_id=device_id)
    return T5Runtime(directory, manifest, graphs, load_tokenizer(directory, manifest))
