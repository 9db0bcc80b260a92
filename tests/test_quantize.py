"""--quantize int8: int8 weights in both graphs, fidelity against fp32 measured and recorded."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import t5ort
from t5ort.runtime.inflight import InflightBatch
from conftest import SOURCES, tolerance


@pytest.fixture(scope="module")
def int8_export(sp_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "onnx"
    t5ort.export(sp_checkpoint, out, quantize="int8")
    return out


def int8_weight_fraction(path) -> float:
    """The share of weight elements stored as int8 in a graph, subgraphs included."""
    model = onnx.load(str(path))
    sizes = {"int8": 0, "other": 0}

    def visit(graph):
        for init in graph.initializer:
            n = int(np.prod(init.dims)) if init.dims else 1
            sizes["int8" if init.data_type == onnx.TensorProto.INT8 else "other"] += n
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g)

    visit(model.graph)
    return sizes["int8"] / (sizes["int8"] + sizes["other"])


def test_int8_graphs_hold_int8_weights(int8_export, sp_export):
    for name in ("encoder_model.onnx", "decoder_model.onnx"):
        assert int8_weight_fraction(sp_export / name) == 0
        assert int8_weight_fraction(int8_export / name) > 0.85  # the rest: norms and position biases, large next to a 32-wide model


def test_int8_fidelity_is_recorded_and_plausible(int8_export, sp_export):
    manifest = json.loads((int8_export / "t5ort.json").read_text())
    q = manifest["quantization"]
    assert q["weights"] == "int8" and "one scale per weight tensor" in q["method"]
    fidelity = q["fidelity"]
    print(f"int8 fidelity: {fidelity}")
    assert fidelity["top1_agreement"] >= 0.8
    assert 0 < fidelity["max_abs_diff_vs_fp32"] < 0.25 * fidelity["max_abs_logit_fp32"]
    assert manifest["parity"]["max_abs_diff"] <= manifest["parity"]["tolerance"]  # the fp32 graphs were checked


def test_int8_runtime_generates_close_to_fp32(int8_export, sp_runtime):
    int8 = t5ort.load(int8_export)
    a = sp_runtime.generate(SOURCES, max_new_tokens=8, min_new_tokens=8)
    scored = int8.score(SOURCES, target_ids=a.sequences[:, 1:])
    agree = (scored.logits.argmax(-1) == a.logits.argmax(-1)).mean()
    assert agree >= 0.8
    res = int8.generate(SOURCES, max_new_tokens=8, num_beams=2)
    assert res.sequences.shape[0] == 3 and np.isfinite(res.logits).all()


def test_unknown_quantization_is_refused(sp_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="quantize='int2' is not supported"):
        t5ort.export(sp_checkpoint, tmp_path / "out", quantize="int2")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="quantize='int4' exclude each other"):
        t5ort.export(sp_checkpoint, tmp_path / "out", quantize="int4", dtype="float16")


# ---- int4 ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def numbers_int4(tmp_path_factory):
    """The bundled numbers model exported from its checkpoint with quantize="int4"."""
    from t5ort.demo import bundled

    out = tmp_path_factory.mktemp("int4") / "onnx"
    t5ort.export(bundled("checkpoint"), out, quantize="int4")
    return out


def op_counts(path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def test_int4_graphs_hold_4bit_matmuls_and_embeddings(numbers_int4):
    enc, dec = (op_counts(numbers_int4 / name) for name in ("encoder_model.onnx", "decoder_model.onnx"))
    assert dec["MatMulNBits"] == 2 * 9 + 1  # 2 layers (self q, k, v, o; cross q, o; wi_0, wi_1, wo) + lm_head
    assert enc["MatMulNBits"] == 2 * 7 + 2 * 2  # 2 layers (q, k, v, o; wi_0, wi_1, wo) + the decoder's cross k, v
    assert dec["GatherBlockQuantized"] == 1 and enc["GatherBlockQuantized"] == 1  # the word embedding
    for path in (numbers_int4 / "encoder_model.onnx", numbers_int4 / "decoder_model.onnx"):
        model = onnx.load(str(path), load_external_data=False)
        weights = {t.name for t in model.graph.initializer}
        float_matmuls = [n.name for n in model.graph.node if n.op_type == "MatMul" and weights & set(n.input)]
        assert float_matmuls == [], float_matmuls  # every MatMul with a constant weight became MatMulNBits


def test_int4_fidelity_is_recorded(numbers_int4):
    q = json.loads((numbers_int4 / "t5ort.json").read_text())["quantization"]
    assert q["weights"] == "int4" and "MatMulNBits" in q["method"] and "blocks of 128" in q["method"]
    fidelity = q["fidelity"]
    print(f"int4 fidelity: {fidelity}")
    assert fidelity["top1_agreement"] >= 0.9 and fidelity["reference"].endswith("through the int4 graphs")
    assert 0 < fidelity["max_abs_diff_vs_fp32"] < 0.5 * fidelity["max_abs_logit_fp32"]


def test_int4_held_out_accuracy_within_one_point_of_fp32(numbers_int4):
    from t5ort.demo import bundled
    from test_numbers_model import held_out_accuracy

    a32, a4 = held_out_accuracy(t5ort.load(bundled("onnx")), 300), held_out_accuracy(t5ort.load(numbers_int4), 300)
    print(f"held-out exact match on 300 numbers: fp32 {a32:.1%}, int4 {a4:.1%}")
    assert a32 >= 0.97
    assert a4 >= a32 - 0.01
