"""`t5ort check` / t5ort.export.check: pass, fail on a tampered export, a wrong checkpoint, exit codes."""

from __future__ import annotations

import json
import shutil

import pytest

import t5ort.export
from broken_graphs import break_export
from conftest import SOURCES
from t5ort.cli import main
from t5ort.export.recheck import CheckpointMismatchError


def test_check_passes_on_the_exports_own_checkpoint(sp_export, sp_checkpoint):
    result = t5ort.export.check(sp_export, sp_checkpoint, SOURCES[:2], num_beams=3, max_new_tokens=8)
    assert result.passed
    assert [(i.index, i.strategy) for i in result.inputs] == [(0, "greedy"), (0, "beam-3"), (1, "greedy"),
                                                               (1, "beam-3")]
    for item in result.inputs:
        assert item.sequences_equal and item.logits_passed_by == "absolute" and item.passed
        assert 0 < item.max_abs_diff_vs_fp32 <= item.tolerance
        assert 0 < item.max_abs_diff_vs_float64 < 1e-4 and 0 < item.fp32_max_abs_diff_vs_float64 < 1e-4
        assert item.ratio == pytest.approx(item.max_abs_diff_vs_float64 / item.fp32_max_abs_diff_vs_float64)
    assert result.float64_missing is None and "float64" in result.float64_reference


def test_cli_check_pass_prints_every_figure_and_exits_0(sp_export, sp_checkpoint, tmp_path, capsys):
    inputs = tmp_path / "inputs.txt"
    inputs.write_text(f"{SOURCES[0]}\n\n{SOURCES[1]}\n")
    code = main(["check", str(sp_export), "--checkpoint", str(sp_checkpoint), "--inputs", str(inputs),
                 "--max-new-tokens", "6", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0] == f"input 1: {SOURCES[0]!r}" and lines[2] == f"input 2: {SOURCES[1]!r}"
    assert lines[1].split()[:4] == ["greedy", "sequences", "equal:", "yes"]
    for figure in ("max |logit diff| vs fp32", ", vs float64", "PyTorch fp32's own", "ratio"):
        assert figure in lines[1]
    assert lines[1].endswith("pass")
    assert lines[-1].startswith("PASS: 2 of 2 checks passed")


def test_cli_check_json(sp_export, sp_checkpoint, capsys):
    code = main(["check", str(sp_export), "--checkpoint", str(sp_checkpoint), "--json", "--max-new-tokens", "4"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and data["passed"] is True
    assert [i["text"] for i in data["inputs"]] == [None, None]  # the export gate's two check inputs (ids)
    assert {"max_abs_diff_vs_fp32", "max_abs_diff_vs_float64", "fp32_max_abs_diff_vs_float64", "ratio",
            "sequences_equal", "passed"} <= set(data["inputs"][0])


def test_tampered_export_fails_with_exit_code_1(sp_export, sp_checkpoint, tmp_path, capsys):
    tampered = tmp_path / "tampered"
    shutil.copytree(sp_export, tampered)
    break_export(tampered, "weight", d_kv=12)  # the lm_head perturbed by 1e-3 relative; checksums resealed
    result = t5ort.export.check(tampered, sp_checkpoint, SOURCES[:1], max_new_tokens=6)
    assert not result.passed and result.inputs[0].logits_passed_by is None
    assert result.inputs[0].ratio > 10
    code = main(["check", str(tampered), "--checkpoint", str(sp_checkpoint), SOURCES[0], "--max-new-tokens", "6",
                 "--quiet"])
    out = capsys.readouterr().out
    assert code == 1
    assert "FAIL (" in out.splitlines()[1] and "logits beyond the tolerance" in out
    assert out.splitlines()[-1].startswith("FAIL: 0 of 1 checks passed")


def test_wrong_checkpoint_geometry_is_refused_with_exit_code_2(sp_export, byte_checkpoint, capsys):
    with pytest.raises(CheckpointMismatchError, match="is not the source of .* differ in vocab_size"):
        t5ort.export.check(sp_export, byte_checkpoint)
    code = main(["check", str(sp_export), "--checkpoint", str(byte_checkpoint), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert "t5ort check: error:" in err and "pass the checkpoint" in err and "was exported from" in err


def test_same_geometry_other_weights_is_refused(sp_export, sp_checkpoint, tmp_path, capsys):
    import torch
    from transformers import T5ForConditionalGeneration

    other = tmp_path / "other"
    shutil.copytree(sp_checkpoint, other)
    model = T5ForConditionalGeneration.from_pretrained(other)
    with torch.no_grad():
        model.encoder.block[0].layer[1].DenseReluDense.wo.weight[0, 0] += 1e-3  # e.g. a later fine-tuning step
    model.save_pretrained(other)
    code = main(["check", str(sp_export), "--checkpoint", str(other), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "same geometry, but its weights differ" in err


def test_bad_arguments_exit_2(sp_export, sp_checkpoint, tmp_path, capsys):
    assert main(["check", str(sp_export), "--checkpoint", str(sp_checkpoint), "a", "--inputs", "x.txt"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["check", str(sp_export), "--checkpoint", str(tmp_path / "missing"), "--quiet"]) == 2
    assert "cannot read a model config" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    assert main(["check", str(sp_export), "--checkpoint", str(sp_checkpoint), "--inputs", str(empty)]) == 2
    assert "holds no input" in capsys.readouterr().err
    with pytest.raises(TypeError, match="list of strings"):
        t5ort.export.check(sp_export, sp_checkpoint, "one string")


def test_quantized_exports_are_refused_with_the_reason(sp_export, sp_checkpoint, tmp_path):
    from t5ort import ExportError

    int8 = tmp_path / "int8"
    shutil.copytree(sp_export, int8)
    manifest = json.loads((int8 / "t5ort.json").read_text())
    manifest["quantization"] = {"weights": "int8"}
    (int8 / "t5ort.json").write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match="holds int8 graphs.*Check the fp32 export"):
        t5ort.export.check(int8, sp_checkpoint)
