"""Small vocabularies for tests and toy models: seeded generated English, a sentencepiece model trained on it."""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Iterable

WORDS = (
    "the a house garden river small old new red green blue cat dog bird runs sleeps sings is are was "
    "near under over and with one two three four five six seven eight nine ten hundred thousand "
    "translate English to German summarize question answer wonderful returns raw logits model"
).split()


def generated_corpus(n: int = 2000, seed: int = 0) -> list[str]:
    """Seeded random sentences over a small English word list: training text for a demo vocabulary."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(n)]


def train_sentencepiece(path: Path, texts: Iterable[str], vocab_size: int = 160) -> Path:
    """Train a T5-style unigram sentencepiece model (pad 0, eos 1, unk 2, no bos) and write it to ``path``."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, hard_vocab_limit=False, minloglevel=2,
    )
    path.write_bytes(model.getvalue())
    return path


def t5_tokenizer(spm_path: Path):
    """transformers' T5 tokenizer over the sentencepiece model at ``spm_path`` (no extra ids), the same on
    transformers 4.x and 5.x: 5.x's constructor takes no ``vocab_file``, and ``from_pretrained`` on a
    directory holding ``spiece.model`` converts it alike on both. That directory is made beside
    ``spm_path`` and kept: a 4.x tokenizer saves its ``spiece.model`` from there."""
    import shutil

    from transformers import AutoTokenizer

    directory = spm_path.parent / f"{spm_path.stem}-tokenizer"
    directory.mkdir(exist_ok=True)
    shutil.copy(spm_path, directory / "spiece.model")
    (directory / "config.json").write_text('{"model_type": "t5"}')
    return AutoTokenizer.from_pretrained(str(directory), extra_ids=0, legacy=False)
