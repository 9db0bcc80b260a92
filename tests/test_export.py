"""The exporter: manifest contract, atomic output, parity gate, and a torch-free runtime."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import t5ort
from t5ort import ExportError, ParityError
from t5ort.export import exporter


def test_manifest_records_geometry_tokens_graphs_and_parity(sp_export, sp_checkpoint):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(sp_checkpoint)
    m = json.loads((sp_export / "t5ort.json").read_text())
    assert m["format_version"] == 5
    g = m["geometry"]
    assert (g["vocab_size"], g["d_model"], g["d_kv"], g["num_heads"]) == (config.vocab_size, 32, 12, 4)
    assert (g["num_layers"], g["num_decoder_layers"]) == (3, 2)
    assert g["tie_word_embeddings"] == config.tie_word_embeddings
    assert m["special_tokens"] == {"pad_token_id": 0, "eos_token_id": [1], "decoder_start_token_id": 0}
    dec = m["graphs"]["decoder"]  # the one decoder: T new positions over a cache held in place
    assert dec["file"] == "decoder_model.onnx"
    assert dec["io"]["self_attention_mask"] == "cache_mask" and dec["io"]["past_length"] == "past_length"
    names = {t["name"]: t for t in dec["inputs"]}
    assert names["cache.0.key"]["shape"] == ["batch_size", 4, "cache_capacity", 12]
    assert names["cache_mask"] == {"name": "cache_mask", "dtype": "int64", "shape": ["batch_size", "cache_capacity"]}
    assert names["input_ids"]["shape"] == ["batch_size", "decoder_sequence_length"]
    assert dec["io"]["present_key"] == ["present.0.key", "present.1.key"]  # written in place (bound to cache.*)
    outputs = {t["name"]: t for t in dec["outputs"]}
    assert outputs["present.1.value"]["shape"] == ["batch_size", 4, "cache_capacity", 12]
    assert outputs["logsumexp"] == {"name": "logsumexp", "dtype": "float32",
                                    "shape": ["batch_size", "decoder_sequence_length"]}
    enc = m["graphs"]["encoder"]
    assert enc["io"]["cross_key"] == ["cross.0.key", "cross.1.key"] == dec["io"]["cross_key"]
    names = {t["name"]: t for t in enc["outputs"]}
    assert names["cross.1.value"]["shape"] == ["batch_size", 4, "encoder_sequence_length", 12]
    p = m["parity"]
    assert p["steps"] == 8 and 0 <= p["max_abs_diff"] <= p["tolerance"] and p["passed_by"] == "absolute"
    assert 0 < p["max_abs_diff_vs_float64"] < 1e-4 and 0 < p["fp32_max_abs_diff_vs_float64"] < 1e-4
    assert p["ratio"] == pytest.approx(p["max_abs_diff_vs_float64"] / p["fp32_max_abs_diff_vs_float64"])
    assert set(p) >= {"k", "floor", "float64_bound", "float64_reference", "rule", "tokens"}
    assert len(m["source"]["checkpoint_sha256"]) == 64
    assert sorted(p.name for p in sp_export.iterdir()) == [
        "decoder_model.onnx", "encoder_model.onnx", "generation_config.json", "t5ort.json", "tokenizer.json",
        "weights.bin",
    ]
    assert m["weights"]["file"] == "weights.bin" and m["weights"]["bytes"] == (sp_export / "weights.bin").stat().st_size


def leftovers(parent):
    return sorted(p.name for p in parent.iterdir() if ".partial-" in p.name or ".old-" in p.name)


def test_existing_out_dir_is_refused_without_force(sp_checkpoint, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="already exists.*--force"):
        t5ort.export(sp_checkpoint, out)
    assert (out / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("stage", ["_load", "_export_graphs", "_build_manifest", "_replace_dir"])
def test_failure_at_any_stage_leaves_previous_out_dir_and_no_temp(sp_checkpoint, tmp_path, monkeypatch, stage):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("previous export")

    def fail(*args, **kwargs):
        raise RuntimeError(f"injected fault in {stage}")

    monkeypatch.setattr(exporter, stage, fail)
    with pytest.raises(RuntimeError, match="injected fault"):
        t5ort.export(sp_checkpoint, out, force=True)
    assert (out / "keep.txt").read_text() == "previous export"
    assert leftovers(tmp_path) == []


def test_parity_failure_aborts_the_export(sp_checkpoint, tmp_path, monkeypatch):
    from t5ort.export import parity

    monkeypatch.setattr(parity, "K", 0.0)  # with atol=0 and rel_tol=0: no rule can pass
    out = tmp_path / "out"
    with pytest.raises(ParityError, match="above the absolute tolerance .* above the bound"):
        t5ort.export(sp_checkpoint, out, atol=0.0, rel_tol=0.0)
    assert not out.exists() and leftovers(tmp_path) == []


def test_force_replaces_and_progress_reports_stages(sp_checkpoint, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    messages = []
    t5ort.export(sp_checkpoint, out, force=True, progress=messages.append)
    assert not (out / "stale.txt").exists() and (out / "t5ort.json").is_file()
    assert [m.split()[0] for m in messages] == ["loading", "exporting", "checking", "wrote"]
    assert leftovers(tmp_path) == []


def test_unsupported_model_type_is_refused(tmp_path):
    from transformers import BartConfig, BartForConditionalGeneration

    ckpt = tmp_path / "bart"
    BartForConditionalGeneration(BartConfig(vocab_size=50, d_model=16, encoder_layers=1, decoder_layers=1,
                                            encoder_attention_heads=2, decoder_attention_heads=2,
                                            encoder_ffn_dim=16, decoder_ffn_dim=16)).save_pretrained(ckpt)
    with pytest.raises(ExportError, match="model_type 'bart' is not supported"):
        t5ort.export(ckpt, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_loading_and_generating_never_imports_torch_or_transformers(sp_export):
    code = (
        "import sys, t5ort\n"
        f"rt = t5ort.load({str(sp_export)!r})\n"
        "res = rt.generate(['the small house'], max_new_tokens=4)\n"
        "assert res.logits.shape[1] >= 1\n"
        "bad = [m for m in ('torch', 'transformers', 'optimum') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_export_is_reproducible_at_runtime(sp_export):
    """Two loads of one export give bit-identical logits (no hidden state between calls)."""
    a = t5ort.load(sp_export).generate(["the old dog"], max_new_tokens=6)
    b = t5ort.load(sp_export).generate(["the old dog"], max_new_tokens=6)
    np.testing.assert_array_equal(a.logits, b.logits)


def test_weights_are_stored_once(sp_export, sp_checkpoint):
    """The embedding both graphs read lies once in weights.bin; the file holds no more than the checkpoint's weights."""
    import onnx
    from safetensors import safe_open

    regions = {}
    for name in ("encoder_model.onnx", "decoder_model.onnx"):
        graph = onnx.load(str(sp_export / name), load_external_data=False).graph
        for tensor in graph.initializer:
            info = {e.key: e.value for e in tensor.external_data}
            if info:
                assert info["location"] == "weights.bin"
                regions.setdefault((int(info["offset"]), int(info["length"])), set()).add(name)
    assert any(len(graphs) == 2 for graphs in regions.values())  # the shared embedding
    with safe_open(str(sp_checkpoint / "model.safetensors"), "np") as f:
        checkpoint_bytes = sum(f.get_tensor(k).nbytes for k in f.keys())
        if "lm_head.weight" not in f.keys():  # a tied head: the graph's MatMul reads it transposed, a copy
            checkpoint_bytes += f.get_tensor("shared.weight").nbytes
    stored = sum(length for _, length in regions)
    assert stored <= checkpoint_bytes
    assert (sp_export / "weights.bin").stat().st_size < 1.1 * checkpoint_bytes


def test_storing_the_weights_again_keeps_them(sp_export, tmp_path):
    """store_weights over graphs that already read weights.bin writes a fresh file before replacing it."""
    import shutil

    from t5ort.export.weights import store_weights

    d = tmp_path / "copy"
    shutil.copytree(sp_export, d)
    before = t5ort.load(d).generate(["a b c"], max_new_tokens=4).logits
    store_weights(d, ["encoder_model.onnx", "decoder_model.onnx"])
    after = t5ort.load(d, verify=False).generate(["a b c"], max_new_tokens=4).logits
    np.testing.assert_array_equal(after, before)
    assert not list(d.glob(".weights.bin*"))


def test_decoder_is_one_branch_free_graph_and_the_encoder_computes_cross_kv(sp_export, sp_runtime, sp_torch):
    """No If node (every step runs the one decoder graph); the encoder's cross keys/values equal PyTorch's."""
    import onnx
    import torch

    graph = onnx.load(str(sp_export / "decoder_model.onnx"), load_external_data=False).graph
    assert "If" not in {node.op_type for node in graph.node}
    model, tokenizer = sp_torch
    ids, mask = sp_runtime.encode_texts(["translate English to German: the small house"])
    cross = sp_runtime.graphs.encode(ids, mask).cross_kv  # [key_0, value_0, key_1, ...]
    with torch.no_grad():
        hidden = model.get_encoder()(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))[0]
        for i, block in enumerate(model.decoder.block):
            attention = block.layer[1].EncDecAttention
            for j, linear in enumerate((attention.k, attention.v)):
                expected = linear(hidden).view(1, -1, attention.n_heads, attention.key_value_proj_dim).transpose(1, 2)
                np.testing.assert_allclose(cross[2 * i + j].numpy(), expected.numpy(), rtol=0, atol=1e-5)
