"""The CUDA provider: parity with PyTorch with the cache kept on the device. Skips without a GPU."""

from __future__ import annotations

import numpy as np
import pytest

import t5ort
from conftest import SOURCES, tolerance

ort = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.skipif(
    "CUDAExecutionProvider" not in ort.get_available_providers(), reason="no CUDA provider in this onnxruntime"
)


def test_cuda_matches_cpu_and_pytorch(sp_export, sp_runtime):
    cuda = t5ort.load(sp_export, provider="cuda")
    assert "CUDAExecutionProvider" in cuda.graphs.decoder_session.get_providers()
    on_gpu = cuda.generate(SOURCES, max_new_tokens=12)
    on_cpu = sp_runtime.generate(SOURCES, max_new_tokens=12)
    np.testing.assert_array_equal(on_gpu.sequences, on_cpu.sequences)
    np.testing.assert_allclose(on_gpu.logits, on_cpu.logits, rtol=0, atol=tolerance(on_cpu.logits))
