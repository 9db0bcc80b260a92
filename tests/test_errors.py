"""Bad input and broken artifacts get clear errors that name the argument or file."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import t5ort
from t5ort import ArtifactError, ProviderError


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"texts": []}, ValueError, "texts is empty"),
        ({"texts": "one string"}, TypeError, "list of strings"),
        ({"texts": ["ok", 3]}, TypeError, r"texts\[1\]"),
        ({"input_ids": np.zeros((0, 4), np.int64)}, ValueError, "input_ids is empty"),
        ({"input_ids": np.array([1, 2, 3])}, ValueError, "2-D"),
        ({"input_ids": np.array([[5, 10**6]])}, ValueError, r"input_ids must lie in \[0, "),
        ({"input_ids": np.array([[5, -1]])}, ValueError, r"input_ids must lie in"),
        ({"input_ids": np.array([[5.0, 6.0]])}, TypeError, "integers"),
        ({"input_ids": np.array([[5, 6]]), "attention_mask": np.ones((1, 3))}, ValueError, "attention_mask has shape"),
        ({"input_ids": np.array([[5, 6]]), "attention_mask": np.array([[1, 2]])}, ValueError, "only 0 and 1"),
        ({"input_ids": np.array([[5, 6]]), "attention_mask": np.array([[0, 0]])}, ValueError, "no 1"),
        ({"texts": ["a"], "input_ids": np.array([[5]])}, ValueError, "exactly one of texts or input_ids"),
        ({}, ValueError, "exactly one of texts or input_ids"),
        ({"texts": ["a"], "max_new_tokens": 0}, ValueError, "max_new_tokens must be >= 1"),
        ({"texts": ["a"], "max_new_tokens": 2.5}, TypeError, "max_new_tokens must be an int"),
        ({"texts": ["a"], "min_new_tokens": 5, "max_new_tokens": 4}, ValueError, "min_new_tokens .5. must not exceed"),
        ({"texts": ["a"], "min_new_tokens": -1}, ValueError, "min_new_tokens must be >= 0"),
    ],
)
def test_bad_generate_arguments(sp_runtime, kwargs, error, match):
    with pytest.raises(error, match=match):
        sp_runtime.generate(**kwargs)


def test_options_are_validated_before_any_work(sp_runtime, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("the encoder ran before the options were checked")

    monkeypatch.setattr(sp_runtime.graphs, "encode", boom)
    with pytest.raises(ValueError, match="max_new_tokens"):
        sp_runtime.generate(["a"], max_new_tokens=0)


def test_not_an_export(tmp_path):
    with pytest.raises(ArtifactError, match=r"t5ort\.json: not found"):
        t5ort.load(tmp_path)
    with pytest.raises(ArtifactError, match="no such directory"):
        t5ort.load(tmp_path / "missing")


def copy_export(src, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    return dst


def test_manifest_of_another_format_version(sp_export, tmp_path):
    d = copy_export(sp_export, tmp_path)
    manifest = json.loads((d / "t5ort.json").read_text())
    manifest["format_version"] = 99
    (d / "t5ort.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"t5ort\.json: format_version 99.*re-export"):
        t5ort.load(d)


def test_format_4_export_is_refused_with_how_to_re_export(sp_export, tmp_path):
    """A format-4 export (the runtime wrote the new keys/values), as t5ort 0.2 wrote it."""
    d = copy_export(sp_export, tmp_path)
    manifest = json.loads((d / "t5ort.json").read_text())
    manifest["format_version"] = 4
    (d / "t5ort.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"format_version 4, but this t5ort reads format_version 5 \(older "
                                            r"formats' decoder graphs do not write the cache.*re-export.*--force"):
        t5ort.load(d)


def test_self_attention_mask_declared_with_the_wrong_axes(sp_export, tmp_path):
    d = copy_export(sp_export, tmp_path)
    manifest = json.loads((d / "t5ort.json").read_text())
    for t in manifest["graphs"]["decoder"]["inputs"]:
        if t["name"] == "cache_mask":
            t["shape"] = ["batch_size", "decoder_sequence_length"]
    (d / "t5ort.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"'cache_mask' is int64 \['batch_size', 'decoder_sequence_length'\]; "
                                            r"the self-attention mask must be int64 \[batch_size, "
                                            r"'cache_capacity'\]"):
        t5ort.load(d)


def test_unreadable_manifest(sp_export, tmp_path):
    d = copy_export(sp_export, tmp_path)
    (d / "t5ort.json").write_text("{ not json")
    with pytest.raises(ArtifactError, match=r"t5ort\.json: unreadable manifest"):
        t5ort.load(d)


def test_manifest_naming_a_tensor_the_graph_lacks(sp_export, tmp_path):
    d = copy_export(sp_export, tmp_path)
    manifest = json.loads((d / "t5ort.json").read_text())
    manifest["graphs"]["decoder"]["io"]["logits"] = "lm_logits"
    (d / "t5ort.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="'lm_logits' is not in the signature of decoder_model.onnx"):
        t5ort.load(d)


def test_truncated_graph(sp_export, tmp_path):
    d = copy_export(sp_export, tmp_path)
    graph = d / "decoder_model.onnx"
    graph.write_bytes(graph.read_bytes()[:1000])
    with pytest.raises(ArtifactError, match=r"decoder_model\.onnx: checksum differs.*re-export"):
        t5ort.load(d)
    with pytest.raises(ArtifactError, match=r"decoder_model\.onnx: onnxruntime cannot load"):
        t5ort.load(d, verify=False)


@pytest.mark.parametrize("name", ["encoder_model.onnx", "weights.bin"])
def test_corrupted_byte_is_caught_by_the_checksum(sp_export, tmp_path, name):
    d = copy_export(sp_export, tmp_path)
    path = d / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # weights.bin: onnxruntime would load it and compute nonsense
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=name.replace(".", r"\.") + ": checksum differs"):
        t5ort.load(d)


def test_missing_weights_file(sp_export, tmp_path):
    d = copy_export(sp_export, tmp_path)
    (d / "weights.bin").unlink()
    with pytest.raises(ArtifactError, match=r"weights\.bin: weights file missing; re-export"):
        t5ort.load(d, verify=False)


def test_manifest_geometry_that_does_not_match_the_graphs(sp_export, tmp_path):
    d = copy_export(sp_export, tmp_path)
    manifest = json.loads((d / "t5ort.json").read_text())
    manifest["geometry"]["num_heads"] += 1
    (d / "t5ort.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"geometry does not match decoder_model\.onnx"):
        t5ort.load(d)


def test_graph_swapped_for_another_models_graph(sp_export, byte_export, tmp_path):
    d = copy_export(sp_export, tmp_path)
    for name in ("encoder_model.onnx", "decoder_model.onnx", "weights.bin"):
        shutil.copy(byte_export / name, d / name)
    with pytest.raises(ArtifactError, match=r"_model\.onnx: the graph's tensors do not match"):
        t5ort.load(d, verify=False)


def test_tokenizer_of_another_model(sp_export, tmp_path):
    from tokenizers import Tokenizer, models

    d = copy_export(sp_export, tmp_path)
    big = Tokenizer(models.WordLevel({f"w{i}": i for i in range(5000)}, unk_token="w0"))
    big.save(str(d / "tokenizer.json"))
    with pytest.raises(ArtifactError, match=r"tokenizer\.json: the tokenizer has 5000 tokens"):
        t5ort.load(d)


def test_missing_graph(sp_export, tmp_path):
    d = copy_export(sp_export, tmp_path)
    (d / "encoder_model.onnx").unlink()
    with pytest.raises(ArtifactError, match=r"encoder_model\.onnx: graph file missing"):
        t5ort.load(d)


def test_unknown_provider_and_bad_threads(sp_export):
    with pytest.raises(ValueError, match="provider='tpu'"):
        t5ort.load(sp_export, provider="tpu")
    with pytest.raises(ValueError, match="threads must be a positive int"):
        t5ort.load(sp_export, threads=0)


def test_cuda_without_cuda_provider_is_an_error_not_a_fallback(sp_export):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA; see test_cuda.py")
    with pytest.raises(ProviderError, match="onnxruntime-gpu"):
        t5ort.load(sp_export, provider="cuda")


def test_cuda_provider_options_keep_fp32_matmuls_exact(monkeypatch):
    """TF32 (onnxruntime's CUDA default on Ampere and later) would break fp32 parity: t5ort turns it off."""
    from t5ort.runtime import graphs

    monkeypatch.setattr(graphs.ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    cuda, cpu = graphs._providers("cuda", 1)
    assert cuda == ("CUDAExecutionProvider", {"device_id": 1, "use_tf32": 0}) and cpu == "CPUExecutionProvider"


def test_step_refuses_an_out_buffer_of_the_wrong_shape_or_type(sp_runtime):
    graphs = sp_runtime.graphs
    ids, mask = sp_runtime.encode_texts(["a b c"])
    state = graphs.start(graphs.encode(ids, mask))
    vocab = sp_runtime.vocab_size
    for bad in (np.empty((1, vocab + 1), np.float32), np.empty((1, vocab), np.float64),
                np.empty((1, 2 * vocab), np.float32)[:, ::2]):
        with pytest.raises(ValueError, match="out must be a C-contiguous float32 array"):
            graphs.step(np.array([0]), state, out=bad)
    out = np.empty((1, vocab), np.float32)
    logits, _ = graphs.step(np.array([0]), state, out=out)
    assert np.shares_memory(logits, out) and np.isfinite(out).all()


def test_an_onnxruntime_too_old_for_the_in_place_attention_is_refused_with_the_fix():
    from t5ort.runtime.errors import ProviderError
    from t5ort.runtime.graphs import _check_onnxruntime

    with pytest.raises(ProviderError, match=r"onnxruntime 1\.30\.0 is too old.*pip install 'onnxruntime>=1\.31'"):
        _check_onnxruntime("1.30.0")
    _check_onnxruntime("1.31.1")
    _check_onnxruntime("1.33.0.dev20261201")
