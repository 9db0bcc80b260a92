"""The command line: generate (text, --top, --json, --save-logits) and export errors."""

from __future__ import annotations

import json

import numpy as np

from t5ort.cli import main

TEXT = "translate English to German: the small house near the river"


def test_generate_prints_the_texts(sp_runtime, sp_export, capsys):
    assert main(["generate", str(sp_export), TEXT, "the old dog", "--max-new-tokens", "8"]) == 0
    expected = sp_runtime.generate([TEXT, "the old dog"], max_new_tokens=8).texts
    assert capsys.readouterr().out.splitlines() == list(expected)


def test_generate_top_table(sp_runtime, sp_export, capsys):
    assert main(["generate", str(sp_export), TEXT, "--max-new-tokens", "5", "--top", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    res = sp_runtime.generate([TEXT], max_new_tokens=5)
    ids, probs = res.top_alternatives(3)
    assert out[1].split() == ["step", "token", "p", "top-3"]
    first = out[2]
    assert first.split()[0] == "0"
    token = sp_runtime.tokenizer.token_string(int(res.sequences[0, 1]))
    assert repr(token) in first and f"{np.exp(res.token_logprobs[0, 0]):.3f}" in first
    assert f"{probs[0, 0, 2]:.3f}" in first


def test_generate_json_and_save_logits(sp_runtime, sp_export, tmp_path, capsys):
    npz = tmp_path / "run.npz"
    assert main(["generate", str(sp_export), TEXT, "--max-new-tokens", "6", "--json", "--top", "2",
                 "--save-logits", str(npz)]) == 0
    data = json.loads(capsys.readouterr().out)
    res = sp_runtime.generate([TEXT], max_new_tokens=6)
    assert data["texts"] == list(res.texts)
    assert data["sequences"] == res.sequences.tolist()
    assert np.array(data["top_ids"]).shape == (1, res.num_steps, 2)
    saved = np.load(npz)
    np.testing.assert_array_equal(saved["sequences"], res.sequences)
    np.testing.assert_array_equal(saved["logits"], res.logits)
    np.testing.assert_array_equal(saved["token_logprobs"], res.token_logprobs)
    assert [p.name for p in tmp_path.iterdir()] == ["run.npz"]


def test_generate_on_a_directory_that_is_no_export(tmp_path, capsys):
    assert main(["generate", str(tmp_path), "hello"]) == 2
    err = capsys.readouterr().err
    assert "t5ort.json: not found" in err and "t5ort export" in err


def test_export_refuses_existing_out_dir(sp_checkpoint, tmp_path, capsys):
    assert main(["export", str(sp_checkpoint), str(tmp_path), "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_generate_stream_prints_the_same_text(sp_runtime, sp_export, capsys):
    assert main(["generate", str(sp_export), TEXT, "--max-new-tokens", "8", "--stream"]) == 0
    expected = sp_runtime.generate([TEXT], max_new_tokens=8).texts[0]
    assert capsys.readouterr().out.rstrip("\n") == expected


def test_generate_beam_search_prints_scores(sp_runtime, sp_export, capsys):
    assert main(["generate", str(sp_export), TEXT, "--max-new-tokens", "6", "--num-beams", "3",
                 "--num-return-sequences", "2"]) == 0
    res = sp_runtime.generate([TEXT], max_new_tokens=6, num_beams=3, num_return_sequences=2)
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"{t}\t(score {s:.4f})" for t, s in zip(res.texts, res.sequences_scores)]


def test_score_command(sp_runtime, sp_export, capsys):
    assert main(["score", str(sp_export), "--source", TEXT, "--target", "the red house", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    expected = sp_runtime.score([TEXT], ["the red house"])
    np.testing.assert_allclose(data["total_logprob"], expected.total_logprob, rtol=1e-6)
    assert main(["score", str(sp_export), "--source", TEXT, "--target", "a", "--target", "b"]) == 2
    assert "in pairs" in capsys.readouterr().err


BLOCK_EXTRAS = ("import sys\n"
                "for name in ('fastapi', 'uvicorn', 'prometheus_client', 'pyarrow', 'tqdm', 'ray'):\n"
                "    sys.modules[name] = None  # as if the [serve], [batch] and [ray] extras were not installed\n"
                "from t5ort.cli import main\n"
                "sys.exit(main(sys.argv[1:]))\n")


def run_without_extras(*argv: str):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", BLOCK_EXTRAS, *argv], capture_output=True, text=True, timeout=120)


def test_commands_run_without_the_serve_batch_and_ray_extras():
    from t5ort.demo import bundled

    out = run_without_extras("generate", str(bundled("onnx")), "translate English to German: nineteen")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "neunzehn"


def test_a_command_whose_extra_is_missing_names_the_extra():
    from t5ort.demo import bundled

    out = run_without_extras("serve", str(bundled("onnx")), "--port", "0")
    assert out.returncode == 2
    assert "pip install 't5ort[serve]'" in out.stderr and "Traceback" not in out.stderr
    out = run_without_extras("batch", str(bundled("onnx")), "in.jsonl", "out")
    assert out.returncode == 2
    assert "pip install 't5ort[batch]'" in out.stderr and "Traceback" not in out.stderr


def test_spin_is_on_by_default_and_no_spin_turns_it_off(sp_export, monkeypatch):
    """--spin/--no-spin reach t5ort.load(spin=...) (on by default, like load's own default)."""
    import t5ort

    seen = []
    real_load = t5ort.load

    def load(*args, **kwargs):
        seen.append(kwargs["spin"])
        return real_load(*args, **kwargs)

    monkeypatch.setattr(t5ort, "load", load)
    for flag in ([], ["--no-spin"], ["--spin"]):
        assert main(["generate", str(sp_export), TEXT, "--max-new-tokens", "2", *flag]) == 0
    assert seen == [True, False, True]
