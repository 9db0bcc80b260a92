"""--dtype fp16: half-precision graphs checked against PyTorch fp32, with T5's fp16 overflow kept out.

Run on the CPU provider (onnxruntime has float16 kernels there too); the CUDA path
uses the same graphs.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch

import t5ort
from t5ort.export.fp16 import FP16_ATOL, FP16_REL_TOL

from conftest import SOURCES, assert_logits_match


@pytest.fixture(scope="module")
def fp16_export(sp_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("fp16") / "onnx"
    t5ort.export(sp_checkpoint, out, dtype="float16")
    return out


def test_fp16_manifest_graphs_and_caches(fp16_export):
    m = json.loads((fp16_export / "t5ort.json").read_text())
    assert m["dtype"] == "float16"
    parity = m["quantization"]["parity_fp16"]
    assert parity["max_abs_diff"] <= parity["tolerance"] and parity["atol"] == FP16_ATOL
    dec = {t["name"]: t["dtype"] for t in m["graphs"]["decoder"]["inputs"] + m["graphs"]["decoder"]["outputs"]}
    assert dec["cache.0.key"] == dec["present.1.value"] == "float16"  # the in-place decoder, as on fp32
    assert dec["cross.0.key"] == "float16" and dec["logits"] == dec["logsumexp"] == "float32"
    enc = {t["name"]: t["dtype"] for t in m["graphs"]["encoder"]["outputs"]}
    assert enc["cross.0.key"] == "float16"
    graph = onnx.load(str(fp16_export / "decoder_model.onnx"), load_external_data=False).graph
    weights = [t for t in graph.initializer if len(t.dims) == 2]
    halves = [t for t in weights if t.data_type == onnx.TensorProto.FLOAT16]
    assert len(halves) > len(weights) / 2  # attention, wi, embeddings, lm_head; wo stays fp32


@pytest.mark.parametrize("num_beams", [1, 3])
def test_fp16_generate_matches_pytorch_fp32(fp16_export, sp_torch, num_beams):
    model, tokenizer = sp_torch
    enc = tokenizer(SOURCES, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**enc, num_beams=num_beams, do_sample=False, max_new_tokens=10,
                             output_logits=True, return_dict_in_generate=True)
    logits = torch.stack(out.logits, dim=1).numpy()
    res = t5ort.load(fp16_export).generate(SOURCES, num_beams=num_beams, max_new_tokens=10)
    np.testing.assert_array_equal(res.sequences, out.sequences.numpy())
    assert res.logits.dtype == np.float32
    diff = np.abs(res.logits - logits).max()
    print(f"fp16 num_beams={num_beams}: max |raw logit diff| vs PyTorch fp32 = {diff:.3g}")
    assert_logits_match(res.logits, logits, atol=FP16_ATOL, rel_tol=FP16_REL_TOL)  # the fp16 bound, no float64 rule


def test_fp16_survives_a_residual_stream_beyond_65504(sp_checkpoint, tmp_path):
    """Feed-forward outputs scaled past float16's range: the float32 islands (residual adds, RMSNorms, wo) must
    pass them on unclipped. onnxruntime's converter alone casts each island's output to float16 and back (inf
    past 65504); t5ort rewires those round trips, and the export's parity gate against PyTorch fp32 holds.

    On the CPU provider onnxruntime runs most float16 nodes through float32 kernels, so this checks the
    graph's float32 islands, not float16 arithmetic itself (that needs CUDA).
    """
    from transformers import T5ForConditionalGeneration

    from t5ort.export.fp16 import drop_fp16_round_trips

    model = T5ForConditionalGeneration.from_pretrained(sp_checkpoint).eval()
    with torch.no_grad():  # larger feed-forward output weights (still inside float16) -> outputs past 65504
        for stack in (model.encoder, model.decoder):
            stack.block[0].layer[-1].DenseReluDense.wo.weight.mul_(3e4)
    assert max(float(p.abs().max()) for p in model.parameters()) < 65504
    seen = []  # the encoder's residual stream after block 0, in PyTorch fp32
    hook = model.encoder.block[0].register_forward_hook(lambda mod, args, out: seen.append(out[0].abs().max()))
    with torch.no_grad():
        enc = model.get_encoder()(input_ids=torch.tensor([[5, 6, 7, 8]])).last_hidden_state
    hook.remove()
    assert seen[0] > 65504 and torch.isfinite(enc).all()
    big = tmp_path / "big"
    model.save_pretrained(big)
    for f in sp_checkpoint.iterdir():
        if "token" in f.name or f.name.endswith(".model"):
            shutil.copy(f, big / f.name)

    out = tmp_path / "fp16"
    t5ort.export(big, out, dtype="float16")  # raises ParityError unless within the fp16 tolerance
    parity = json.loads((out / "t5ort.json").read_text())["quantization"]["parity_fp16"]
    assert parity["max_abs_diff"] <= parity["tolerance"]
    for name in ("encoder_model.onnx", "decoder_model.onnx"):
        assert drop_fp16_round_trips(onnx.load(str(out / name), load_external_data=False).graph) == 0


def test_fp16_and_int8_exclude_each_other(sp_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="exclude each other"):
        t5ort.export(sp_checkpoint, tmp_path / "x", dtype="float16", quantize="int8")
    with pytest.raises(ValueError, match="dtype='bfloat16' is not supported"):
        t5ort.export(sp_checkpoint, tmp_path / "y", dtype="bfloat16")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
