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


@pytest.mark.parametrize("tied", [True, False])
def test_grow_keeps_the_models_function(tied):
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    from t5ort.training.train_spelling import grow

    torch.manual_seed(0)
    config = T5Config(vocab_size=40, d_model=16, d_kv=8, num_heads=2, d_ff=24, num_layers=2, num_decoder_layers=2,
                      feed_forward_proj="gated-gelu", dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0,
                      eos_token_id=1, tie_word_embeddings=tied)
    small = T5ForConditionalGeneration(config).eval()
    wide = grow(small, d_model=48, d_ff=64, num_heads=6, seed=1).eval()
    assert wide.config.d_model == 48 and wide.config.d_ff == 64 and wide.config.num_heads == 6
    ids = torch.randint(2, 40, (3, 7))
    labels = torch.randint(2, 40, (3, 5))
    with torch.no_grad():
        a, b = small(input_ids=ids, labels=labels).logits, wide(input_ids=ids, labels=labels).logits
    assert a.abs().max() > 0.1
    torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
    # the new heads' output weights start at zero, and fine-tuning moves them: their gradient is not zero
    out = wide.encoder.block[0].layer[0].SelfAttention.o.weight  # [48, 6 heads * 8]
    assert not out[:, 16:].any()
    wide(input_ids=ids, labels=labels).loss.backward()
    assert out.grad[:16, 16:].abs().max() > 0
    with pytest.raises(ValueError, match="d_model"):
        grow(small, d_model=8, d_ff=64, num_heads=1, seed=0)


def test_train_spelling_grows_a_trained_model(tmp_path):
    from t5ort.training import train_spelling

    base, out = tmp_path / "draft", tmp_path / "wide"
    common = ["--eval-every", "2", "--eval-count", "2", "--test-count", "3", "--threads", "1"]
    assert train_spelling.main(["--out", str(base), "--size", "draft", "--steps", "2", *common]) == 0
    assert train_spelling.main(["--out", str(out), "--size", "wide", "--grow-from", str(base), "--steps", "2",
                                "--batch-size", "4", *common]) == 0
    record = json.loads((out / "training.json").read_text())
    assert record["grown_from"]["from"] == str(base) and record["grown_from"]["logits_max_abs_diff"] < 1e-3
    assert record["model"]["d_model"] == 512 and record["model"]["num_decoder_layers"] == 1  # the draft's depth
    assert (out / "spiece.model").read_bytes() == (base / "spiece.model").read_bytes()
    with pytest.raises(SystemExit):
        train_spelling.main(["--out", str(out), "--size", "wide"])  # no --grow-from
