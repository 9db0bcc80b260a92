"""EncoderCache: recent sources' encoder outputs reused, within a byte budget, with the results of a fresh encode."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import SOURCES
from t5ort.runtime.encoder_cache import EncoderCache
from t5ort.runtime.graphs import host_array
from t5ort.runtime.inflight import InflightBatch


def _kv(encoded, row, length):
    return [host_array(v)[row, :, :length] for v in encoded.cross_kv]


def test_hits_equal_a_fresh_encode_whatever_the_batch(sp_runtime):
    cache = EncoderCache(sp_runtime.graphs, max_bytes=1 << 20)
    ids, mask = sp_runtime.encode_texts(SOURCES)
    first = cache.encode(ids, mask)
    assert cache.stats().misses == 3 and cache.stats().hits == 0
    # the same sources again, in another order and batch (another padding width): all hits
    again_ids, again_mask = sp_runtime.encode_texts([SOURCES[1], SOURCES[0]])
    again = cache.encode(again_ids, again_mask)
    assert cache.stats().hits == 2 and cache.stats().misses == 3
    fresh = sp_runtime.graphs.encode(again_ids, again_mask)
    for row, n in enumerate(again_mask.sum(axis=1)):
        for got, want in zip(_kv(again, row, n), _kv(fresh, row, n)):
            np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(again.attention_mask, again_mask)
    # generating from it gives generate's answer
    res = sp_runtime.generate(encoder_output=again, max_new_tokens=8)
    np.testing.assert_array_equal(res.sequences, sp_runtime.generate([SOURCES[1], SOURCES[0]],
                                                                     max_new_tokens=8).sequences)
    assert first.batch_size == 3


def test_the_budget_evicts_the_least_recently_used(sp_runtime):
    def size(text):  # one row's bytes in the cache (its own length)
        alone = EncoderCache(sp_runtime.graphs, max_bytes=1 << 20)
        alone.encode(*sp_runtime.encode_texts([text]))
        return alone.stats().bytes

    sizes = [size(text) for text in SOURCES]
    assert sizes[1] < sizes[2]
    cache = EncoderCache(sp_runtime.graphs, max_bytes=sizes[0] + sizes[2])  # room for rows 0 and 2, not 1 too
    for text in (SOURCES[0], SOURCES[1], SOURCES[0], SOURCES[2]):  # the hit on 0 makes 1 the least recent
        cache.encode(*sp_runtime.encode_texts([text]))
    s = cache.stats()
    assert (s.hits, s.misses, s.evictions, s.entries, s.bytes) == (1, 3, 1, 2, sizes[0] + sizes[2])
    cache.encode(*sp_runtime.encode_texts([SOURCES[0]]))
    assert cache.stats().hits == 2  # 0 stayed; 1 went
    cache.encode(*sp_runtime.encode_texts([SOURCES[1]]))
    assert cache.stats().misses == 4
    off = EncoderCache(sp_runtime.graphs, max_bytes=0)
    off.encode(*sp_runtime.encode_texts(SOURCES))
    assert off.stats().entries == 0
    with pytest.raises(ValueError, match="max_bytes must be a non-negative int"):
        EncoderCache(sp_runtime.graphs, max_bytes=-1)


def test_inflight_batch_through_the_cache_gives_the_same_tokens(sp_runtime):
    cache = EncoderCache(sp_runtime.graphs, max_bytes=1 << 20)
    inputs = [sp_runtime.encode_texts([s])[0][0] for s in SOURCES + SOURCES[:2]]  # two repeats
    results = {}
    for encoder_cache in (None, cache):
        batch = InflightBatch(sp_runtime, encoder_cache=encoder_cache)
        members = [batch.add(x, max_new_tokens=6) for x in inputs]
        while len(batch):
            batch.step()
        results[encoder_cache is None] = [m.finalize().sequences for m in members]
    for a, b in zip(results[True], results[False]):
        np.testing.assert_array_equal(a, b)
    assert cache.stats().hits == 2 and cache.stats().misses == 3


def test_cached_rows_outlive_the_batch_they_came_from(sp_runtime):
    """Rows cached from a ragged batch (encoded in length groups, over numpy-owned memory) are copies: after the
    batch is gone and its memory reused, a hit still gives the fresh encoding."""
    import gc

    texts = ["a b c d e f g h i j k l m n o p q r s t u v w x y z " * 2, "a", "one two", "a b c d e f g h i j k " * 2]
    ids, mask = sp_runtime.encode_texts(texts)
    cache = EncoderCache(sp_runtime.graphs, 64 << 20)
    cache.encode(ids, mask)  # all misses: stored row by row
    gc.collect()
    junk = [np.full(1 << 20, np.nan, np.float32) for _ in range(64)]  # reuse the freed memory
    hit = cache.encode(ids, mask)
    fresh = sp_runtime.graphs.encode(ids, mask)
    for r in range(len(texts)):
        n = int(mask[r].sum())
        np.testing.assert_array_equal(_kv(hit, r, n), _kv(fresh, r, n))
    assert cache.stats().hits == len(texts) and junk
