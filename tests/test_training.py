"""The spelling trainer runs end to end (a few steps of the draft size): the files speculative decoding loads."""

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("sentencepiece")


def test_train_spelling_writes_a_checkpoint_and_its_record(tmp_path):
    from t5ort.training import train_spelling

    out = tmp_path / "draft"
    assert train_spelling.main(["--out", str(out), "--size", "draft", "--steps", "4", "--eval-every", "2",
                                "--eval-count", "2", "--test-count", "3", "--threads", "1"]) == 0
    record = json.loads((out / "training.json").read_text())
    assert record["steps"] == 4 and record["test"]["total"] == 3 and len(record["history"]) == 2
    assert record["lr"] == train_spelling.DEFAULTS["lr"] and record["did_not_work"]
    assert record["model"]["num_layers"] >= record["model"]["num_decoder_layers"]  # transformers' generate needs it
    for name in ("model.safetensors", "spiece.model", "tokenizer_config.json", "config.json"):
        assert (out / name).exists(), name
    with pytest.raises(SystemExit):
        train_spelling.main(["--out", str(out), "--size", "huge"])
