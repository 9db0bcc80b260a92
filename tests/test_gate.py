"""The export gate against float64: it accepts an ill-conditioned checkpoint the fp32-only rule refused,
and refuses deliberately broken graphs on a well-conditioned and an ill-conditioned checkpoint alike."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import t5ort
from broken_graphs import BREAKS, break_export
from conftest import assert_logits_match
from t5ort import ParityError
from t5ort.export import parity


@pytest.fixture(scope="module")
def ill_torch(ill_checkpoint):
    from t5ort.export.exporter import load_float32

    return load_float32(ill_checkpoint)


def test_ill_conditioned_checkpoint_is_like_t5_v1_1(ill_torch):
    """Feed-forward outputs past float16's 65504 and logits near 60, as in real T5 v1.1 checkpoints."""
    outputs = []
    hooks = [m.register_forward_hook(lambda mod, i, o: outputs.append(float(o.abs().max())))
             for name, m in ill_torch.named_modules() if name.endswith("DenseReluDense.wo")]
    ids, mask = parity.check_inputs(ill_torch.config.vocab_size)
    logits = parity.torch_logits(ill_torch, ids, mask, np.zeros((2, 8), dtype=np.int64))
    for h in hooks:
        h.remove()
    assert max(outputs) > 65504
    assert 40 < np.abs(logits).max() < 80


def test_gate_accepts_the_ill_conditioned_checkpoint_and_stores_every_figure(ill_export):
    """The fp32-only rule would refuse it (t5ort is closer to float64 than PyTorch fp32 is); the gate passes it."""
    p = json.loads((ill_export / "t5ort.json").read_text())["parity"]
    assert p["max_abs_diff"] > p["tolerance"]  # refused by the absolute rule alone
    assert p["passed_by"] == "float64"
    assert p["fp32_max_abs_diff_vs_float64"] > 2e-4  # PyTorch fp32 itself is far from exact here
    assert p["max_abs_diff_vs_float64"] <= p["float64_bound"] == pytest.approx(
        p["k"] * max(p["fp32_max_abs_diff_vs_float64"], p["floor"]))
    assert p["ratio"] == pytest.approx(p["max_abs_diff_vs_float64"] / p["fp32_max_abs_diff_vs_float64"])
    assert p["k"] == parity.K and "float64" in p["float64_reference"] and p["float64_missing"] is None
    tokens = p["tokens"]
    assert np.array(tokens["input_ids"]).shape == np.array(tokens["attention_mask"]).shape == (2, 13)
    assert np.array(tokens["decoder_input_ids"]).shape == (2, p["steps"])


def test_ill_conditioned_greedy_matches_transformers_by_the_float64_rule(ill_export, ill_torch):
    """t5ort's greedy logits on the ill-conditioned model, judged by the suite's one rule with a float64 reference."""
    rt = t5ort.load(ill_export)
    ids, mask = parity.check_inputs(rt.vocab_size, seed=3)
    res = rt.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10)
    with torch.no_grad():
        ref = ill_torch.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                                 max_new_tokens=10, do_sample=False, output_logits=True, return_dict_in_generate=True)
    np.testing.assert_array_equal(res.sequences, ref.sequences.numpy())
    model64, _ = parity.float64_copy(ill_torch)
    fp64 = parity.torch_logits(model64, ids, mask, res.sequences[:, :-1])
    assert_logits_match(res.logits, torch.stack(ref.logits, dim=1).numpy(), fp64)


@pytest.mark.parametrize("kind", BREAKS)
@pytest.mark.parametrize("conditioning", ["well", "ill"])
def test_gate_refuses_broken_graphs(kind, conditioning, sp_export, sp_torch, ill_export, ill_torch, tmp_path):
    export, model = (sp_export, sp_torch[0]) if conditioning == "well" else (ill_export, ill_torch)
    broken = tmp_path / "broken"
    shutil.copytree(export, broken)
    break_export(broken, kind, model.config.d_kv)
    with pytest.raises(ParityError, match=r"is [\d.e+]+x PyTorch fp32's own .* above the bound") as info:
        parity.gate_parity(model, broken, steps=8, atol=1e-4, rel_tol=2e-6)
    print(f"{conditioning}-conditioned, {kind}: {info.value}")


def test_without_room_for_float64_the_gate_says_so_and_uses_fp32(sp_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(parity, "available_memory", lambda: 1024)
    messages = []
    manifest = t5ort.export(sp_checkpoint, tmp_path / "out", progress=messages.append)
    p = manifest.parity
    assert p["float64_missing"].startswith("a float64 copy of the model needs about")
    assert p["float64_reference"] is None and p["max_abs_diff_vs_float64"] is None and p["ratio"] is None
    assert p["passed_by"] == "absolute" and p["max_abs_diff"] <= p["tolerance"]
    assert any(m.startswith("no float64 reference (a float64 copy") for m in messages)
    assert "no float64 reference" in messages[-1]
    assert json.loads((tmp_path / "out" / "t5ort.json").read_text())["parity"]["float64_missing"] == p["float64_missing"]


def test_rule():
    ref = np.array([[[10.0, -3.0]]], np.float32)
    fp64 = ref.astype(np.float64) + 1e-3  # PyTorch fp32 is 1e-3 from exact
    tol = 1e-4 + 2e-6 * 10
    assert parity.compare(ref + tol * 0.9, ref, None, atol=1e-4, rel_tol=2e-6).passed_by == "absolute"
    assert not parity.compare(ref + tol * 1.5, ref, None, atol=1e-4, rel_tol=2e-6).passed
    within = parity.compare(ref + 1e-3 + 3e-3, ref, fp64, atol=1e-4, rel_tol=2e-6)  # 3x fp32's own
    assert within.passed_by == "float64" and within.ratio == pytest.approx(3.0, rel=1e-2)
    beyond = parity.compare(ref + 1e-3 + 5e-3, ref, fp64, atol=1e-4, rel_tol=2e-6)  # 5x
    assert not beyond.passed and beyond.ratio == pytest.approx(5.0, rel=1e-2)
    nan = parity.compare(np.full_like(ref, np.nan), ref, fp64, atol=1e-4, rel_tol=2e-6)
    assert not nan.passed
    # fp32 exact: the floor (4 ulps of the largest logit) keeps the bound above zero
    exact = parity.compare(ref, ref, ref.astype(np.float64), atol=0, rel_tol=0)
    assert exact.passed and exact.float64_bound == pytest.approx(parity.K * 4 * np.finfo(np.float32).eps * 10)


def test_keep_float64_keeps_transformers_float32_casts_in_float64():
    x = torch.ones(3, dtype=torch.float64) / 3
    with parity.keep_float64():
        assert x.float().dtype == torch.float64 and x.to(torch.float32).dtype == torch.float64
        assert torch.arange(3).float().dtype == torch.float32  # integer tensors (bucket positions) untouched
        assert x.to("cpu").dtype == torch.float64
    assert x.float().dtype == torch.float32  # only inside the with
