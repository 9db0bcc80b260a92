"""A seeded random checkpoint of t5-small's shape, built offline (no hub, no tokenizer): the benchmarks' model."""

from __future__ import annotations

from pathlib import Path

T5_SMALL = dict(
    vocab_size=32128,
    d_model=512,
    d_kv=64,
    num_heads=8,
    d_ff=2048,
    num_layers=6,
    num_decoder_layers=6,
    feed_forward_proj="relu",
    tie_word_embeddings=True,
    decoder_start_token_id=0,
    pad_token_id=0,
    eos_token_id=1,
)


def build_checkpoint(path: Path, seed: int = 0) -> Path:
    """Save ``T5ForConditionalGeneration(T5Config(**T5_SMALL))`` initialised with ``torch.manual_seed(seed)``
    to ``path`` (kept if ``path/config.json`` exists already)."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    T5ForConditionalGeneration(T5Config(**T5_SMALL)).eval().save_pretrained(path)
    return path
