"""``t5ort demo``: the whole job end to end on a model that needs no download.

Until a trained model is bundled, the demo builds a small seeded *random* T5
(v1.1 style) with a sentencepiece vocabulary trained here on generated English,
exports it, decodes with per-step logits,
and checks the result against PyTorch's ``generate``. The text it produces is
noise; the logits are real and the parity figures are measured.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

from .vocab import generated_corpus, train_sentencepiece

import numpy as np

DEMO_TEXTS = ["translate English to German: The house is wonderful.", "summarize: t5ort returns raw logits."]


def build_random_checkpoint(path: Path, seed: int = 0) -> Path:
    """A seeded random T5 v1.1-style model (gated-GELU, untied head) with a sentencepiece tokenizer."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration, T5TokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    spm_path = train_sentencepiece(path / "spiece.model", generated_corpus() + DEMO_TEXTS)
    tokenizer = T5TokenizerFast(vocab_file=str(spm_path), extra_ids=0, legacy=False)
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=len(tokenizer), d_model=128, d_kv=32, num_heads=4, d_ff=256, num_layers=4,
        num_decoder_layers=2, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )
    T5ForConditionalGeneration(config).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def torch_reference(checkpoint: Path, texts: list[str], max_new_tokens: int):
    """transformers' greedy ``generate(output_logits=True)``: sequences and stacked raw logits."""
    import torch
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    model = T5ForConditionalGeneration.from_pretrained(checkpoint).eval()
    enc = AutoTokenizer.from_pretrained(checkpoint)(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(
            **enc, max_new_tokens=max_new_tokens, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
    return out.sequences.numpy(), torch.stack(out.logits, dim=1).numpy()


def run_demo(workdir: str | None, progress: Callable[[str], None], max_new_tokens: int = 12) -> int:
    import t5ort
    from t5ort.cli import step_table

    with tempfile.TemporaryDirectory(prefix="t5ort-demo-") as tmp:
        root = Path(workdir) if workdir else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        progress("building a small seeded random T5 (no trained model is bundled yet: its text is noise)")
        checkpoint = build_random_checkpoint(root / "checkpoint")
        t5ort.export(checkpoint, root / "onnx", force=True, progress=progress)

        runtime = t5ort.load(root / "onnx")
        result = runtime.generate(DEMO_TEXTS, max_new_tokens=max_new_tokens)
        print("Random weights: the generated text is noise; the per-step logits are real.\n")
        for row, (source, text) in enumerate(zip(DEMO_TEXTS, result.texts)):
            print(f"input : {source}\noutput: {text!r}")
            print(step_table(runtime, result, row, k=3))
            print()

        progress("checking against PyTorch generate(output_logits=True)")
        sequences, logits = torch_reference(checkpoint, DEMO_TEXTS, max_new_tokens)
        same = sequences.shape == result.sequences.shape and bool((sequences == result.sequences).all())
        diff = float(np.abs(result.logits - logits).max()) if result.logits.shape == logits.shape else float("nan")
        print(f"parity with PyTorch: sequences equal: {'yes' if same else 'NO'}; "
              f"max |raw logit diff| over {result.num_steps} steps x {len(DEMO_TEXTS)} rows: {diff:.2e}")
        if workdir:
            print(f"checkpoint and export kept in {root}")
        return 0 if same and diff <= 1e-4 + 2e-6 * float(np.abs(logits).max()) else 1
