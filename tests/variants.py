"""Tiny seeded checkpoints of every T5-family variant t5ort exports, and transformers references for them.

A helper module, not a conftest: ``tests/test_variants.py`` imports it as ``from variants import ...``
(tests/ is on sys.path because conftest.py lives there) and ``benchmarks/parity_matrix.py`` puts tests/
on sys.path to import it, so the parity tests and the parity table build exactly the same models.

Each builder writes a checkpoint directory with its tokenizer saved beside it:

=================  =====================================  =========================================
variant            model                                  what it covers
=================  =====================================  =========================================
t5-v1.0            T5, ReLU, tied (d_model**-0.5 scale)   the original T5; sentencepiece tokenizer
t5-v1.1            T5, gated-GELU, untied head            d_kv * heads != d_model, 3 enc / 2 dec
mt5                MT5ForConditionalGeneration            mT5 classes, gated-GELU, untied head
byt5               T5 + ByT5Tokenizer                     byte tokenizer, 3 enc / 1 dec (ByT5-like)
longt5-local       LongT5, local encoder attention        local_radius 4 < input lengths
longt5-tglobal     LongT5, transient-global attention     local_radius 4, global_block_size 4
umt5               UMT5ForConditionalGeneration           a position bias in every layer
=================  =====================================  =========================================

All are d_model 32 with 2-3 layers and the tokenizer's vocabulary size. Every model but
byt5 shares one sentencepiece vocabulary trained here on generated text (offline, seeded).
Models with an untied head get their EOS row tuned (:func:`make_eos_reachable`) so that
some rows of the padded batch stop early, and some go on.

The encoder is never shallower than the decoder: transformers 4.57's ``generate`` sizes
its cache by ``num_layers`` and breaks on the reverse.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

# Rows of different lengths (tokens with the shared sentencepiece vocabulary: about 22, 5 and 34),
# all but the second longer than LongT5's local radius (4) and block (5). Row 0 alone is the batch of 1.
SOURCES = [
    "translate English to German: the small house near the river and the old red garden",
    "summarize: one cat sleeps",
    "question: the old dog runs over the green garden and the blue bird sings seven hundred songs "
    "with three new cats near the house",
]
TARGETS = ["the small house", "one cat", "the blue bird sings seven songs near the river"]
BATCHES = {"batch1": SOURCES[:1], "padded3": SOURCES}
TARGET_BATCHES = {"batch1": TARGETS[:1], "padded3": TARGETS}

COMMON = dict(decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)


@dataclass(frozen=True)
class Variant:
    name: str
    build: Callable[[Path], None]  # writes the checkpoint and its tokenizer into the directory
    description: str


# ---- tokenizers -----------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _sentencepiece_bytes() -> bytes:
    """One seeded unigram vocabulary (pad 0, eos 1, unk 2), trained once per process."""
    import tempfile

    from t5ort.export.vocab import generated_corpus, train_sentencepiece

    with tempfile.TemporaryDirectory() as tmp:
        path = train_sentencepiece(Path(tmp) / "spiece.model", generated_corpus() + SOURCES + TARGETS)
        return path.read_bytes()


def sentencepiece_tokenizer(directory: Path):
    from t5ort.export.vocab import t5_tokenizer

    directory.mkdir(parents=True, exist_ok=True)
    spm_path = directory / "spiece.model"
    spm_path.write_bytes(_sentencepiece_bytes())
    return t5_tokenizer(spm_path)


def byte_tokenizer(directory: Path):
    from transformers import ByT5Tokenizer

    directory.mkdir(parents=True, exist_ok=True)
    return ByT5Tokenizer()


# ---- models -----------------------------------------------------------------------


def make_eos_reachable(model, tokenizer, step: int = 3) -> None:
    """Make EOS beat the token that row 0 of SOURCES produces at ``step``, so rows end at different steps.

    Only for an untied head (``lm_head`` is then not the input embedding). transformers 5 ties every T5's
    head; a head whose weights differ from the embedding's is loaded untied again, so it is untied here.
    """
    if model.lm_head.weight is model.shared.weight:
        model.lm_head.weight = torch.nn.Parameter(model.shared.weight.detach().clone())
    enc = tokenizer(SOURCES, return_tensors="pt", padding=True)
    with torch.no_grad():
        seq = model.generate(**enc, max_new_tokens=step + 1, do_sample=False)
        target = int(seq[0, step])
        model.lm_head.weight[model.config.eos_token_id] = model.lm_head.weight[target] * 1.02


def _save(model, tokenizer, directory: Path) -> None:
    model.eval().save_pretrained(directory)
    tokenizer.save_pretrained(directory)


SMALL = dict(d_model=32, num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=20)


def _build(directory: Path, tokenizer, model_class: str, config_class: str, seed: int,
           eos_step: int | None = None, **config) -> None:
    """A seeded tiny model of ``model_class`` saved with ``tokenizer``; EOS made reachable at ``eos_step``."""
    import transformers

    torch.manual_seed(seed)
    config = getattr(transformers, config_class)(vocab_size=len(tokenizer), **SMALL, **COMMON, **config)
    model = getattr(transformers, model_class)(config).eval()
    if eos_step is not None:
        make_eos_reachable(model, tokenizer, step=eos_step)
    _save(model, tokenizer, directory)


def build_t5_v1_0(directory: Path) -> None:
    _build(directory, sentencepiece_tokenizer(directory), "T5ForConditionalGeneration", "T5Config", seed=10,
           d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, feed_forward_proj="relu", tie_word_embeddings=True)


def build_t5_v1_1(directory: Path) -> None:
    _build(directory, sentencepiece_tokenizer(directory), "T5ForConditionalGeneration", "T5Config", seed=11,
           eos_step=3, d_kv=12, d_ff=48, num_layers=3, num_decoder_layers=2, feed_forward_proj="gated-gelu",
           tie_word_embeddings=False)


def build_mt5(directory: Path) -> None:
    _build(directory, sentencepiece_tokenizer(directory), "MT5ForConditionalGeneration", "MT5Config", seed=12,
           eos_step=2, d_kv=8, d_ff=40, num_layers=2, num_decoder_layers=2, feed_forward_proj="gated-gelu",
           tie_word_embeddings=False)


def build_byt5(directory: Path) -> None:
    _build(directory, byte_tokenizer(directory), "T5ForConditionalGeneration", "T5Config", seed=13,
           d_kv=8, d_ff=64, num_layers=3, num_decoder_layers=1, feed_forward_proj="gated-gelu",
           tie_word_embeddings=False)


def _longt5(directory: Path, attention: str, seed: int, **kwargs) -> None:
    _build(directory, sentencepiece_tokenizer(directory), "LongT5ForConditionalGeneration", "LongT5Config", seed=seed,
           eos_step=None if kwargs["tie_word_embeddings"] else 3, d_kv=8, d_ff=64, num_layers=2,
           num_decoder_layers=2, encoder_attention_type=attention, local_radius=4, **kwargs)


def build_longt5_local(directory: Path) -> None:
    _longt5(directory, "local", seed=14, feed_forward_proj="relu", tie_word_embeddings=True)


def build_longt5_tglobal(directory: Path) -> None:
    _longt5(directory, "transient-global", seed=15, global_block_size=4,
            feed_forward_proj="gated-gelu", tie_word_embeddings=False)


def build_umt5(directory: Path) -> None:
    _build(directory, sentencepiece_tokenizer(directory), "UMT5ForConditionalGeneration", "UMT5Config", seed=16,
           eos_step=3, d_kv=12, d_ff=48, num_layers=3, num_decoder_layers=2, feed_forward_proj="gated-gelu",
           tie_word_embeddings=False)


def build_ill_conditioned(directory: Path, model_type: str = "t5", seed: int = 1) -> None:
    """T5 v1.1-like activations: feed-forward outputs past 65504 in two residual dimensions, logits near 60.

    Real T5 v1.1 / Flan-T5 / mT5 checkpoints carry a few huge residual dimensions (which is why
    transformers keeps ``wo`` in fp32); on them PyTorch fp32 is itself ~1e-3 away from float64.
    Here every feed-forward output projection writes 40000x larger values into dimensions 0 and 1,
    and the head is scaled 2.5x. Seeded (4 encoder / 3 decoder layers, d_model 64, 32 buckets up to
    distance 128, gated-GELU, untied head). Measured: max |FF output| 7.9e4, max |logit| 57.6,
    PyTorch fp32 1.1e-3 from float64 on the export gate's inputs.
    """
    import transformers

    names = {"t5": ("T5Config", "T5ForConditionalGeneration"), "umt5": ("UMT5Config", "UMT5ForConditionalGeneration")}
    config_class, model_class = names[model_type]
    tokenizer = sentencepiece_tokenizer(directory)
    torch.manual_seed(seed)
    config = getattr(transformers, config_class)(
        vocab_size=len(tokenizer), d_model=64, num_heads=4, d_kv=16, d_ff=128, num_layers=4, num_decoder_layers=3,
        relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
        tie_word_embeddings=False, **COMMON)
    model = getattr(transformers, model_class)(config).eval()
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith("DenseReluDense.wo"):
                module.weight[[0, 1]] *= ILL_WO_SCALE
        model.lm_head.weight *= 2.5
    _save(model, tokenizer, directory)


ILL_WO_SCALE = 4e4
ILL_CONDITIONED = Variant("t5-v1.1-ill", build_ill_conditioned,
                          "T5 v1.1-like activations: FF outputs > 65504, logits near 60, 4 enc / 3 dec")
ILL_CONDITIONED_UMT5 = Variant("umt5-ill", functools.partial(build_ill_conditioned, model_type="umt5"),
                               "the same recipe on UMT5 (a position bias in every layer)")
ILL_VARIANTS = {v.name: v for v in (ILL_CONDITIONED, ILL_CONDITIONED_UMT5)}

VARIANTS = {
    v.name: v
    for v in [
        Variant("t5-v1.0", build_t5_v1_0, "T5, ReLU, tied embeddings, 2 enc / 2 dec"),
        Variant("t5-v1.1", build_t5_v1_1, "T5, gated-GELU, untied, d_kv*heads != d_model, 3 enc / 2 dec"),
        Variant("mt5", build_mt5, "MT5ForConditionalGeneration, gated-GELU, untied"),
        Variant("byt5", build_byt5, "T5 + ByT5Tokenizer, 3 enc / 1 dec"),
        Variant("longt5-local", build_longt5_local, "LongT5, local attention, radius 4, tied"),
        Variant("longt5-tglobal", build_longt5_tglobal, "LongT5, transient-global, radius 4, global block 4"),
        Variant("umt5", build_umt5, "UMT5ForConditionalGeneration, gated-GELU, untied, 3 enc / 2 dec"),
    ]
}
LONG_INPUT_VARIANT = "longt5-tglobal"
LONG_INPUT_TOKENS = 600
LONG_NEW_TOKENS = 64


def build(name: str, directory: Path) -> Path:
    """Build variant ``name`` into ``directory`` (created) and return it."""
    directory = Path(directory)
    (ILL_VARIANTS.get(name) or VARIANTS[name]).build(directory)
    return directory


def load_torch(checkpoint: Path):
    """The checkpoint's PyTorch model (eval, fp32) and tokenizer, as transformers loads them."""
    from transformers import AutoTokenizer

    from t5ort.export.exporter import load_float32

    model = load_float32(checkpoint)
    return model, AutoTokenizer.from_pretrained(str(checkpoint))


def long_input_ids(vocab_size: int, length: int = LONG_INPUT_TOKENS, seed: int = 0) -> np.ndarray:
    """One row of ``length`` seeded token ids in [3, vocab): int64 [1, length]."""
    return np.random.default_rng(seed).integers(3, vocab_size, size=(1, length), dtype=np.int64)


# ---- transformers references ------------------------------------------------------------


def hf_generate(model, tokenizer=None, texts=None, *, input_ids=None, **kwargs):
    """transformers' ``generate(output_logits=True, return_dict_in_generate=True)`` on texts or ids.

    Returns the output object with ``logits`` stacked to a numpy array [rows, steps, vocab]
    and numpy ``sequences`` (and ``beam_indices`` / ``sequences_scores`` for beam search).
    """
    if input_ids is None:
        enc = dict(tokenizer(texts, return_tensors="pt", padding=True))
    else:
        enc = dict(input_ids=torch.from_numpy(input_ids), attention_mask=torch.ones(input_ids.shape, dtype=torch.long))
    with torch.no_grad():
        # output_scores: transformers returns sequences_scores (beam search) only with it.
        out = model.generate(**enc, do_sample=False, output_logits=True, output_scores=True,
                             return_dict_in_generate=True, **kwargs)
    ref = {"sequences": out.sequences.numpy(), "logits": torch.stack(out.logits, dim=1).numpy()}
    if getattr(out, "beam_indices", None) is not None:
        ref["beam_indices"] = out.beam_indices.numpy()
        ref["sequences_scores"] = out.sequences_scores.numpy()
    if tokenizer is not None:
        ref["texts"] = tokenizer.batch_decode(out.sequences, skip_special_tokens=True)
    return ref


def hf_score(model, tokenizer, texts, targets):
    """``model(**enc, labels=labels).logits`` with labels padded by -100: (logits, labels) numpy."""
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    tgt = tokenizer(targets, return_tensors="pt", padding=True)
    labels = tgt["input_ids"].masked_fill(tgt["attention_mask"] == 0, -100)
    with torch.no_grad():
        logits = model(**enc, labels=labels).logits
    return logits.numpy(), labels.numpy()
