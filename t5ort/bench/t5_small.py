"""Seeded random checkpoints of t5-small's and flan-t5-base's shapes, built offline (no hub, no tokenizer):
the benchmarks' models."""

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


FLAN_T5_BASE = dict(T5_SMALL, d_model=768, num_heads=12, num_layers=12, num_decoder_layers=12,
                    feed_forward_proj="gated-gelu", tie_word_embeddings=False)


def build_checkpoint(path: Path, seed: int = 0, shape: dict = T5_SMALL) -> Path:
    """Save ``T5ForConditionalGeneration(T5Config(**shape))`` initialised with ``torch.manual_seed(seed)``
    to ``path`` (kept if ``path/config.json`` exists already). An untied shape gets a head of its own
    (transformers 5 ties every T5 head at construction; one whose weights differ loads untied)."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(T5Config(**shape)).eval()
    if not shape["tie_word_embeddings"] and model.lm_head.weight is model.shared.weight:
        head = torch.empty_like(model.shared.weight)
        torch.nn.init.normal_(head, std=shape["d_model"] ** -0.5)
        model.lm_head.weight = torch.nn.Parameter(head)
    model.save_pretrained(path)
    return path
