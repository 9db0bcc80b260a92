"""The in-flight batch's decoder: a step graph over a self-attention cache that stays in place.

:class:`~t5ort.runtime.graphs.T5Graphs` runs optimum's with-past decoder, which
concatenates every layer's cache with the new position's keys/values and returns the
whole cache again: each step copies the cache once more before attention reads it. An
in-flight batch holds many rows and a cache as wide as its oldest row's history, so that
copy is a large share of its steps. The export's step graph (``decoder_step_model.onnx``,
t5ort/export/step_decoder.py) reads the cache from host buffers with spare columns and
returns only the new position's keys/values, which :meth:`StepGraphs.step` writes into
the next free column; attention reads the cache once and nothing else copies it.

The layout is :class:`T5Graphs`' in-flight one: rows share one width (``past_length``
used columns of ``capacity``), a row that joined late sits left-padded with its padding
masked out, and columns from ``past_length`` on are free (masked). The buffers grow by
``GROW`` columns when full. Same methods, same meaning as :class:`T5Graphs`' in-flight
ones, so :class:`~t5ort.runtime.inflight.InflightBatch` runs on either.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import onnxruntime as ort

from .graphs import (EncoderOutput, T5Graphs, _leading_unused, _pad_axis, check_sources_fit, host_array,
                     write_sources)

GROW = 16  # free columns added when the cache is full: one copy of the cache per GROW steps


@dataclass(frozen=True)
class BufferState:
    """A running batch: the cache buffers, their mask, and the encoder output the rows attend to.

    ``cache``: [key_0, value_0, key_1, ...], each float [rows, heads, capacity, d_kv]; columns
    ``past_length`` and later are free. ``self_mask``: int64 [rows, capacity], 1 where a row
    attends (0 from ``past_length`` on). ``binding``: the step graph's inputs bound to these
    arrays (they are updated in place between steps).
    """

    cache: tuple[np.ndarray, ...]
    self_mask: np.ndarray
    past_length: int
    encoder: EncoderOutput
    binding: ort.IOBinding
    position: np.ndarray  # int64 [1]: past_length, bound

    @property
    def capacity(self) -> int:
        return int(self.self_mask.shape[1])


class StepGraphs:
    """The in-flight decoder ops of :class:`T5Graphs` (join, fill, step, reorder, select, compact)
    on the step graph; encoding is :class:`T5Graphs`' own. CPU only (the buffers are host memory)."""

    def __init__(self, graphs: T5Graphs, session: ort.InferenceSession):
        self.graphs = graphs
        self.session = session
        self.io = graphs.manifest.step_io
        g = graphs.manifest.geometry
        self._heads, self._d_kv, self._vocab = g.num_heads, g.d_kv, g.vocab_size
        self._dtype = graphs._dtype
        self._cache_names = [n for pair in zip(self.io.cache_key, self.io.cache_value) for n in pair]
        self._cross_names = [n for pair in zip(self.io.cross_key, self.io.cross_value) for n in pair]
        self._new_names = [n for pair in zip(self.io.new_key, self.io.new_value) for n in pair]

    # ---- what T5Graphs does as it is --------------------------------------------------

    def encode(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> EncoderOutput:
        return self.graphs.encode(input_ids, attention_mask)

    def expand(self, encoder_output: EncoderOutput, times) -> EncoderOutput:
        return self.graphs.expand(encoder_output, times)

    def take(self, encoder_output: EncoderOutput, rows: np.ndarray) -> EncoderOutput:
        return self.graphs.take(encoder_output, rows)

    # ---- states ---------------------------------------------------------------------------

    def _state(self, cache: tuple[np.ndarray, ...], self_mask: np.ndarray, past_length: int,
               encoder: EncoderOutput) -> BufferState:
        """A state over these arrays, with a fresh binding of all of them."""
        binding = self.session.io_binding()
        position = np.array([past_length], np.int64)
        named = [(self.io.past_length, position), (self.io.self_attention_mask, self_mask),
                 (self.io.encoder_attention_mask, encoder.attention_mask),
                 *zip(self._cache_names, cache), *zip(self._cross_names, encoder.host_kv)]
        for name, array in named:  # OrtValues over the arrays' own memory: written in place between steps
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array))
        return BufferState(cache, self_mask, past_length, encoder, binding, position)

    def _buffers(self, cache, self_mask: np.ndarray, used: int) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
        """New buffers holding the first ``used`` columns of ``cache``/``self_mask``, with GROW free columns."""
        rows, capacity = self_mask.shape[0], used + GROW
        mask = np.zeros((rows, capacity), np.int64)
        mask[:, :used] = self_mask[:, :used]
        out = []
        for value in cache:
            buffer = np.empty((rows, self._heads, capacity, self._d_kv), self._dtype)
            buffer[:, :, :used] = value[:, :, :used]
            buffer[:, :, used:] = 0
            out.append(buffer)
        return tuple(out), mask

    @staticmethod
    def _host(host_kv, attention_mask: np.ndarray) -> EncoderOutput:
        """An encoder output held as writable, contiguous host arrays, which the step graph binds
        (and :meth:`fill` writes in place); no OrtValues of its own."""
        return EncoderOutput((), np.ascontiguousarray(attention_mask, np.int64),
                             tuple(np.ascontiguousarray(h) for h in host_kv))

    # ---- rows join, leave, start over ---------------------------------------------------------

    def join(self, state: BufferState | None, encoder_output: EncoderOutput) -> BufferState:
        """As :meth:`T5Graphs.join`: ``state``'s rows then ``encoder_output``'s, which have no history yet."""
        new_kv = [host_array(v) for v in encoder_output.cross_kv]  # read-only views of onnxruntime's outputs
        new_mask, rows = encoder_output.attention_mask, encoder_output.batch_size
        if state is None:
            cache = tuple(np.zeros((rows, self._heads, GROW, self._d_kv), self._dtype) for _ in self._cache_names)
            encoder = self._host((np.array(v) for v in new_kv), np.array(new_mask, np.int64))  # copies
            return self._state(cache, np.zeros((rows, GROW), np.int64), 0, encoder)
        old = state.encoder
        width = max(old.attention_mask.shape[1], new_mask.shape[1])
        host_kv = (np.concatenate([_pad_axis(a, 2, width), _pad_axis(b, 2, width)])
                   for a, b in zip(old.host_kv, new_kv))  # [rows + new, heads, width, d_kv]
        encoder_mask = np.concatenate([_pad_axis(old.attention_mask, 1, width), _pad_axis(new_mask, 1, width)])
        cache = tuple(np.concatenate([v, np.zeros((rows, *v.shape[1:]), self._dtype)]) for v in state.cache)
        self_mask = np.concatenate([state.self_mask, np.zeros((rows, state.capacity), np.int64)])
        return self._state(cache, self_mask, state.past_length, self._host(host_kv, encoder_mask))

    def fill(self, state: BufferState, rows: np.ndarray, encoder_output: EncoderOutput,
             source_rows: np.ndarray) -> BufferState:
        """As :meth:`T5Graphs.fill`: done rows start over as new ones, in place (no copy of the cache)."""
        rows = np.asarray(rows, np.int64)
        check_sources_fit(state.encoder.attention_mask, encoder_output, source_rows)
        write_sources(state.encoder.host_kv, state.encoder.attention_mask, rows, encoder_output,
                      source_rows)  # the bound arrays themselves
        state.self_mask[rows] = 0  # their old history is not theirs
        return state

    def select(self, state: BufferState, rows: np.ndarray) -> BufferState:
        """As :meth:`T5Graphs.select`: only ``rows``, without the columns none of them attends to."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            raise ValueError("select() needs at least one row to keep.")
        encoder_mask = state.encoder.attention_mask[rows]
        width = int(np.flatnonzero(encoder_mask.any(axis=0)).max()) + 1  # right-padded sources
        host_kv = (v[rows, :, :width] for v in state.encoder.host_kv)  # copies (rows is an index array)
        used = state.self_mask[rows, :state.past_length]
        start = _leading_unused(used)
        cache, mask = self._buffers(tuple(v[rows, :, start:state.past_length] for v in state.cache),
                                    used[:, start:], state.past_length - start)
        return self._state(cache, mask, state.past_length - start, self._host(host_kv, encoder_mask[:, :width]))

    def unused_columns(self, state: BufferState) -> int:
        """Leading cached positions that no row attends to (what :meth:`compact` would drop)."""
        return _leading_unused(state.self_mask[:, :state.past_length])

    def compact(self, state: BufferState) -> BufferState:
        """Drop the leading cached positions that every row has masked."""
        start = self.unused_columns(state)
        if start == 0:
            return state
        cache, mask = self._buffers(tuple(v[:, :, start:state.past_length] for v in state.cache),
                                    state.self_mask[:, start:state.past_length], state.past_length - start)
        return self._state(cache, mask, state.past_length - start, state.encoder)

    def reorder(self, state: BufferState, source: np.ndarray) -> BufferState:
        """Cache rows taken from ``source`` [rows] (beam search); cross keys/values stay (same input)."""
        if np.array_equal(source, np.arange(len(source))):
            return state
        cache = tuple(np.ascontiguousarray(v[source]) for v in state.cache)
        return self._state(cache, np.ascontiguousarray(state.self_mask[source]), state.past_length, state.encoder)

    # ---- the step ---------------------------------------------------------------------------

    def step(self, tokens: np.ndarray, state: BufferState) -> tuple[np.ndarray, BufferState]:
        """Feed one token per row (int64 [rows]); return the step's raw logits [rows, vocab]."""
        if state.past_length == state.capacity:  # full: grow by GROW columns (one copy)
            cache, mask = self._buffers(state.cache, state.self_mask, state.past_length)
            state = self._state(cache, mask, state.past_length, state.encoder)
        rows, past = state.self_mask.shape[0], state.past_length
        binding = state.binding
        binding.bind_cpu_input(self.io.input_ids, np.ascontiguousarray(tokens, np.int64).reshape(rows, 1))
        logits = np.empty((rows, 1, self._vocab), np.float32)
        binding.bind_output(self.io.logits, "cpu", 0, logits.dtype, list(logits.shape), logits.ctypes.data)
        new = np.empty((len(self._new_names), rows, self._heads, 1, self._d_kv), self._dtype)
        for i, name in enumerate(self._new_names):
            binding.bind_output(name, "cpu", 0, new.dtype, list(new.shape[1:]), new[i].ctypes.data)
        state.position[0] = past
        self.session.run_with_iobinding(binding)
        binding.clear_binding_outputs()
        for buffer, value in zip(state.cache, new):  # the new position, into the next free column
            buffer[:, :, past] = value[:, :, 0]
        state.self_mask[:, past] = 1
        return logits[:, 0], replace(state, past_length=past + 1)
