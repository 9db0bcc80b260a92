"""Your own decoding loop on the export's decoder: the raw logits of the next position out, your tokens in.

    with rt.decoder(["translate English to German: two"]) as dec:
        for _ in range(20):
            token = dec.logits.argmax(-1)        # raw logits [rows, vocab] of the next position
            dec.append(token)                    # one token per row
            if (token == eos).all():
                break
        dec.sequences                            # int64 [rows, 1 + appended], the start token first

It is ``generate``'s own loop opened up: the same decoder graph, the same in-place cache
(:class:`~t5ort.runtime.graphs.T5Graphs`), one pass per ``logits`` read. Beyond appending:
``append_many`` teacher-forces k tokens per row in one pass and returns their k logits (verify
or score continuations), ``select`` reorders, drops or duplicates rows (a beam search's reorder,
forking a prefix into branches), ``rollback`` forgets the last positions (backtracking).
"""

from __future__ import annotations

import numpy as np

from .graphs import EncoderOutput, T5Graphs


class Decoder:
    """A decoding state over one in-place cache; made by :meth:`t5ort.T5Runtime.decoder`. Use it as a
    context manager, or call :meth:`close` to free the cache."""

    def __init__(self, graphs: T5Graphs, encoder_output: EncoderOutput, start_token_id: int, vocab_size: int):
        self._graphs = graphs
        self._vocab = vocab_size
        self._state = graphs.start(encoder_output)
        self._sequences = np.full((encoder_output.batch_size, 1), start_token_id, np.int64)
        self._fed = 0  # tokens of the sequences whose keys/values are in the cache
        self._logits: np.ndarray | None = None  # after the whole sequences, once computed

    # ---- what has been decoded ----------------------------------------------------------

    @property
    def rows(self) -> int:
        self._check_open()
        return int(self._sequences.shape[0])

    @property
    def sequences(self) -> np.ndarray:
        """int64 [rows, 1 + position]: the decoder start token, then every token appended (a copy)."""
        self._check_open()
        return self._sequences.copy()

    @property
    def position(self) -> int:
        """How many tokens each row has appended (the next position's index)."""
        self._check_open()
        return int(self._sequences.shape[1] - 1)

    @property
    def logits(self) -> np.ndarray:
        """float32 [rows, vocab]: the raw logits of the next position, computed once (read-only)."""
        self._check_open()
        if self._logits is None:
            self._logits = self._feed(self._sequences[:, self._fed:])[:, -1]
        return self._logits

    # ---- tokens in ------------------------------------------------------------------------

    def append(self, tokens) -> None:
        """Append one token per row (int [rows]); the next :attr:`logits` read runs the decoder step."""
        tokens = self._tokens(tokens, "tokens", 1)
        self._sequences = np.concatenate([self._sequences, tokens.reshape(-1, 1)], axis=1)
        self._logits = None

    def append_many(self, tokens) -> np.ndarray:
        """Teacher-force k tokens per row (int [rows, k]) in one decoder pass. Returns their raw logits
        float32 [rows, k, vocab]: ``[:, i]`` is the next position's after ``tokens[:, i]``, what
        :attr:`logits` would be after appending ``tokens[:, :i + 1]`` one by one."""
        tokens = self._tokens(tokens, "tokens", 2)
        pending = self._sequences[:, self._fed:]
        self._sequences = np.concatenate([self._sequences, tokens], axis=1)
        logits = self._feed(np.concatenate([pending, tokens], axis=1))[:, pending.shape[1]:]
        self._logits = logits[:, -1]
        return logits

    # ---- rows and positions ----------------------------------------------------------------

    def select(self, rows) -> None:
        """Keep only ``rows`` (int [n], n >= 1, in the order given; repeats duplicate a row): a beam
        search's reorder, or forking a prefix into branches."""
        self._check_open()
        rows = np.asarray(rows)
        if rows.ndim != 1 or rows.size == 0 or not np.issubdtype(rows.dtype, np.integer):
            raise ValueError(f"rows must be a non-empty 1-D array of row indices, got {rows!r}.")
        if rows.min() < 0 or rows.max() >= self.rows:
            raise ValueError(f"rows must lie in [0, {self.rows}) (the decoder's rows), got values in "
                             f"[{rows.min()}, {rows.max()}].")
        rows = rows.astype(np.int64)
        if len(rows) == self.rows:
            self._state = self._graphs.reorder(self._state, rows)  # in place
        else:
            self._state = self._graphs.select(self._state, rows)
        self._sequences = self._sequences[rows]
        if self._logits is not None:
            self._logits = self._logits[rows]

    def rollback(self, n: int = 1) -> None:
        """Forget the last ``n`` tokens of every row; the next :attr:`logits` are those after what remains."""
        self._check_open()
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}.")
        if n > self.position:
            raise ValueError(f"rollback({n}) goes past the start: the rows have appended {self.position} tokens.")
        if n == 0:
            return
        keep = self._sequences.shape[1] - n
        self._sequences = self._sequences[:, :keep]
        if self._fed >= keep:  # the last kept token is fed again for its logits
            self._state = self._graphs.truncate(self._state, self._state.past_length - (self._fed - keep + 1))
            self._fed = keep - 1
        self._logits = None

    def close(self) -> None:
        """Free the cache; the decoder cannot be used afterwards."""
        self._state = None

    def __enter__(self) -> Decoder:
        self._check_open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- internals ----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._state is None:
            raise ValueError("this decoder is closed; make another with runtime.decoder(...).")

    def _tokens(self, tokens, name: str, ndim: int) -> np.ndarray:
        self._check_open()
        array = np.asarray(tokens)
        shape = "[rows]" if ndim == 1 else "[rows, k]"
        if array.ndim != ndim or array.shape[0] != self.rows or (ndim == 2 and array.shape[1] == 0):
            raise ValueError(f"{name} must have shape {shape} with rows = {self.rows}, got {array.shape}.")
        if not np.issubdtype(array.dtype, np.integer):
            raise TypeError(f"{name} must hold integer token ids, got dtype {array.dtype}.")
        if array.min() < 0 or array.max() >= self._vocab:
            raise ValueError(f"{name} must lie in [0, {self._vocab}) (the vocabulary), got values in "
                             f"[{array.min()}, {array.max()}].")
        return array.astype(np.int64)

    def _feed(self, tokens: np.ndarray) -> np.ndarray:
        """Run the decoder over ``tokens`` [rows, t] after the cache; [rows, t, vocab] raw logits."""
        logits, self._state = self._graphs.forward(tokens, self._state)
        if not np.isfinite(logits).all():
            raise FloatingPointError(f"non-finite raw logits (NaN or inf) at position {self._fed}.")
        self._fed += tokens.shape[1]
        logits.flags.writeable = False
        return logits
