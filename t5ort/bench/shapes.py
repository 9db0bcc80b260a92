"""Seeded random checkpoints of T5-family shapes, built offline (no hub, no tokenizer): the benchmarks' models.

``SHAPES`` names them as ``benchmarks/compare.py --shape`` does: ``small`` (t5-small), ``base``
(flan-t5-base), ``large`` (flan-t5-large) and ``mt5-base``. Each is a ``T5Config`` keyword dict; only
the sizes are real, the weights are ``torch.manual_seed(seed)`` noise.
"""

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

# d_ff 2048 (T5_SMALL's) is flan-t5-base's too (google/flan-t5-base config.json).
FLAN_T5_BASE = dict(T5_SMALL, d_model=768, num_heads=12, num_layers=12, num_decoder_layers=12,
                    feed_forward_proj="gated-gelu", tie_word_embeddings=False)

FLAN_T5_LARGE = dict(FLAN_T5_BASE, d_model=1024, num_heads=16, d_ff=2816, num_layers=24, num_decoder_layers=24)

MT5_BASE = dict(FLAN_T5_BASE, vocab_size=250112, d_ff=2048)

SHAPES = {"small": T5_SMALL, "base": FLAN_T5_BASE, "large": FLAN_T5_LARGE, "mt5-base": MT5_BASE}


def parameter_count(shape: dict) -> int:
    """The checkpoint's parameters (embeddings and an untied head included), from the shape alone."""
    d, inner, ff, vocab = shape["d_model"], shape["num_heads"] * shape["d_kv"], shape["d_ff"], shape["vocab_size"]
    ff_weights = (3 if shape["feed_forward_proj"].startswith("gated") else 2) * d * ff
    attention = 4 * d * inner
    encoder = shape["num_layers"] * (attention + ff_weights + 2 * d)
    decoder = shape["num_decoder_layers"] * (2 * attention + ff_weights + 3 * d)
    bias = 2 * 32 * shape["num_heads"]  # relative_attention_num_buckets (32) x heads, encoder and decoder
    head = 0 if shape["tie_word_embeddings"] else vocab * d
    return vocab * d + head + encoder + decoder + 2 * d + bias


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
