"""Recent sources' encoder outputs, kept within a byte budget, least recently used out first.

    cache = EncoderCache(runtime.graphs, max_bytes=256 << 20)
    encoded = cache.encode(input_ids, attention_mask)   # rows seen recently are not encoded again

A row's key is its unpadded token ids, so the same source in another batch, at another padding
width, is a hit. Misses are encoded together in one encoder pass; each row is kept at its own
length (its cross-attention keys/values cut to its tokens). The batch handed back is padded to its
longest row like a fresh encoder output, with the same values: the encoder graph computes each row
alone (padding is masked), so a cached row equals a freshly encoded one (tests/test_encoder_cache.py).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from .graphs import EncoderOutput, T5Graphs, host_array


@dataclass(frozen=True)
class EncoderCacheStats:
    hits: int  # rows found
    misses: int  # rows encoded
    evictions: int  # rows dropped for room
    entries: int
    bytes: int  # held now
    max_bytes: int


class EncoderCache:
    """A byte-bounded LRU of per-row encoder outputs in front of :meth:`T5Graphs.encode` (thread-safe)."""

    def __init__(self, graphs: T5Graphs, max_bytes: int):
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(f"max_bytes must be a non-negative int, got {max_bytes!r}.")
        self.graphs = graphs
        self.max_bytes = max_bytes
        self._rows: OrderedDict[bytes, tuple[tuple[np.ndarray, ...], int]] = OrderedDict()  # key -> (kv, bytes)
        self._bytes = self._hits = self._misses = self._evictions = 0
        self._lock = threading.Lock()

    def stats(self) -> EncoderCacheStats:
        with self._lock:
            return EncoderCacheStats(self._hits, self._misses, self._evictions, len(self._rows), self._bytes,
                                     self.max_bytes)

    def encode(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> EncoderOutput:
        """As :meth:`T5Graphs.encode` (int64 [batch, src_len], right-padded), with recent rows reused."""
        if self.max_bytes == 0:
            return self.graphs.encode(input_ids, attention_mask)
        lengths = attention_mask.sum(axis=1)
        keys = [input_ids[i, :n].tobytes() for i, n in enumerate(lengths)]
        with self._lock:
            found = {k: self._rows[k][0] for k in keys if k in self._rows}
            for k in found:
                self._rows.move_to_end(k)
        first = {}  # each key's first row: a source repeated in the batch is encoded once
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        missing = [first[k] for k in first if k not in found]
        new = {}
        if missing:
            width = int(lengths[missing].max())
            encoded = self.graphs.encode(np.ascontiguousarray(input_ids[missing, :width]),
                                         np.ascontiguousarray(attention_mask[missing, :width]))
            host = [host_array(v) for v in encoded.cross_kv]  # [miss, heads, width, d_kv] each
            for j, i in enumerate(missing):  # each row at its own length, a copy of its own
                new[keys[i]] = tuple(h[j:j + 1, :, :lengths[i]].copy() for h in host)  # never a view into the batch
        rows = [found.get(k) or new[k] for k in keys]
        with self._lock:
            self._hits += len(keys) - len(missing)  # a repeat within the batch counts as a hit
            self._misses += len(missing)
            for key, kv in new.items():
                self._put(key, kv)
        if len(missing) == len(keys) and width == input_ids.shape[1]:
            return encoded  # nothing was cached and no row repeats: the encoder's own batch is the answer
        return self._batch(rows, input_ids, attention_mask)

    def _put(self, key: bytes, kv: tuple[np.ndarray, ...]) -> None:
        size = sum(a.nbytes for a in kv)
        if size > self.max_bytes or key in self._rows:
            return
        while self._bytes + size > self.max_bytes:
            _, (_, dropped) = self._rows.popitem(last=False)
            self._bytes -= dropped
            self._evictions += 1
        self._rows[key] = (kv, size)
        self._bytes += size

    def _batch(self, rows: list[tuple[np.ndarray, ...]], input_ids: np.ndarray,
               attention_mask: np.ndarray) -> EncoderOutput:
        """Per-row keys/values padded (zeros, masked) to the batch's width, as the encoder returns them."""
        batch, width = attention_mask.shape
        device, device_id = self.graphs._device, self.graphs._device_id
        cross_kv = []
        for layer in range(len(rows[0])):
            first = rows[0][layer]
            out = np.zeros((batch, first.shape[1], width, first.shape[3]), first.dtype)  # [batch, heads, width, d]
            for i, kv in enumerate(rows):
                out[i, :, :kv[layer].shape[2]] = kv[layer][0]
            cross_kv.append(ort.OrtValue.ortvalue_from_numpy(out, device, device_id))
        return EncoderOutput(tuple(cross_kv), np.ascontiguousarray(attention_mask, np.int64),
                             input_ids=np.ascontiguousarray(input_ids, np.int64), device=(device, device_id))
