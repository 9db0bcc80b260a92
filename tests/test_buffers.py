"""The result-buffer pool: a buffer is reused only once nothing refers to it, so reuse never shows."""

import numpy as np
import pytest

from conftest import SOURCES
from t5ort.runtime.buffers import MIN_BYTES, BufferPool
from t5ort.runtime.numerics import logsumexp



def test_a_buffer_comes_back_only_when_nothing_refers_to_it():
    pool = BufferPool(max_bytes=64 << 20)
    shape = (4, 2, MIN_BYTES // 8)  # 4 MiB of float32
    a = pool.empty(shape)
    address = a.ctypes.data
    view = a[:3].transpose(1, 0, 2)  # what a result holds
    del a
    b = pool.empty(shape)
    assert b.ctypes.data != address  # the view keeps the first buffer in use
    del view, b
    c = pool.empty(shape)
    assert c.ctypes.data == address and c.shape == shape and c.dtype == np.float32


def test_small_and_oversized_requests_get_their_own_memory():
    pool = BufferPool(max_bytes=8 << 20)
    pool.empty((16,))
    pool.empty((4 << 20,))  # 16 MiB of float32: over the pool's budget
    assert pool.held_bytes == 0
    pool.empty((1 << 20,))
    assert pool.held_bytes == 4 << 20


def test_the_pool_stays_within_its_budget():
    pool = BufferPool(max_bytes=10 << 20)
    for n in (1, 2, 3, 2, 1, 3):  # MiB x 4: idle buffers that are too small make room
        pool.empty((n << 20,))
        assert pool.held_bytes <= 10 << 20


def test_results_held_at_once_keep_their_own_logits(sp_runtime):
    options = dict(max_new_tokens=64, min_new_tokens=64, output_logits=True)
    first = sp_runtime.generate(SOURCES[:1] * 64, **options)
    expected = first.logits.copy()
    second = sp_runtime.generate(SOURCES[1:2] * 64, **options)
    assert first.logits.nbytes >= MIN_BYTES
    np.testing.assert_array_equal(first.logits, expected)  # not overwritten by the second call
    assert not np.shares_memory(first.logits, second.logits)
    address = first.logits.ctypes.data
    del first
    third = sp_runtime.generate(SOURCES[:1] * 64, **options)
    np.testing.assert_array_equal(third.logits, expected)  # the same answer in reused memory
    assert third.logits.ctypes.data == address


def test_the_temporary_changes_nothing():
    x = np.random.default_rng(0).standard_normal((5, 300)).astype(np.float32) * 30
    np.testing.assert_array_equal(logsumexp(x, np.empty_like(x)), logsumexp(x))
    np.testing.assert_array_equal(logsumexp(x, np.empty((2, 2), np.float32)), logsumexp(x))  # wrong shape: ignored
