"""The bundled model: English number words -> German, in fp32 and int8, and `t5ort demo`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import t5ort
from conftest import assert_logits_match
from t5ort.demo import PREFIX, bundled
from t5ort.training import numbers

KNOWN = {
    "three hundred forty-two": "dreihundertzweiundvierzig",
    "seventy-one thousand nine": "einundsiebzigtausendneun",
    "one": "eins",
    "twenty-one": "einundzwanzig",
    "one hundred one": "einhunderteins",
    "nine hundred ninety-nine thousand nine hundred ninety-nine":
        "neunhundertneunundneunzigtausendneunhundertneunundneunzig",
    "sixteen thousand": "sechzehntausend",
}


@pytest.fixture(scope="module")
def fp32():
    return t5ort.load(bundled("onnx"))


@pytest.fixture(scope="module")
def int8():
    return t5ort.load(bundled("onnx-int8"))


def translate(runtime, english: list[str], **options) -> list[str]:
    return list(runtime.generate([PREFIX + e for e in english], max_new_tokens=16, **options).texts)


def test_known_numbers(fp32):
    assert translate(fp32, list(KNOWN)) == list(KNOWN.values())


def test_greedy_and_beam_search_agree_on_easy_inputs(fp32):
    easy = [numbers.english(n) for n in (5, 42, 300, 1000, 2024, 80000)]
    assert translate(fp32, easy) == translate(fp32, easy, num_beams=4)


def held_out_accuracy(runtime, count: int) -> float:
    _, _, test = numbers.split(seed=0)
    picked = test[:: max(1, len(test) // count)][:count]
    predicted = translate(runtime, [numbers.english(n) for n in picked])
    return float(np.mean([p == numbers.german(n) for p, n in zip(predicted, picked)]))


def test_int8_accuracy_within_one_point_of_fp32(fp32, int8):
    a32, a8 = held_out_accuracy(fp32, 500), held_out_accuracy(int8, 500)
    print(f"held-out exact match on 500 numbers: fp32 {a32:.1%}, int8 {a8:.1%}")
    assert a32 >= 0.97
    assert a8 >= a32 - 0.01


def test_bundled_export_matches_its_pytorch_checkpoint(fp32):
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    checkpoint = bundled("checkpoint")
    model = T5ForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    sources = [PREFIX + e for e in KNOWN]
    enc = tokenizer(sources, return_tensors="pt", padding=True)
    with torch.no_grad():
        ref = model.generate(**enc, max_new_tokens=16, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
    res = fp32.generate(sources, max_new_tokens=16)
    logits = torch.stack(ref.logits, 1).numpy()
    np.testing.assert_array_equal(res.sequences, ref.sequences.numpy())
    assert_logits_match(res.logits, logits)


def test_demo_prints_translations_tables_and_parity(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from t5ort.cli import main

    png = tmp_path / "steps.png"
    assert main(["demo", "--quiet", "--plot", str(png), "three hundred forty-two"]) == 0
    out = capsys.readouterr().out
    assert "'three hundred forty-two' -> 'dreihundertzweiundvierzig'" in out
    assert "top-3" in out and "sequences equal: yes" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_streamed_text_equals_the_generated_text(fp32, capsys):
    from t5ort.cli import main

    source = PREFIX + "five hundred thousand one"
    assert main(["generate", str(bundled("onnx")), source, "--stream"]) == 0
    assert capsys.readouterr().out == fp32.generate([source]).texts[0] + "\n"
