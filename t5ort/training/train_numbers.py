"""Train the bundled model: a small T5 v1.1 that writes English number words in German.

    python -m t5ort.training.train_numbers --out DIR [--minutes N] [--seed S]

"translate English to German: three hundred forty-two" -> "dreihundertzweiundvierzig",
for every number 0..999999 (data: :mod:`t5ort.training.numbers`). On CPU, seeded, with
two threads. Steps:

1. the vocabulary (``--vocab``, default ``numbers``): a sentencepiece unigram model
   trained on the English side (the numbers and the task prefix), to which the German
   number words are added as pieces: ``null``, ``ein``, ``hundert``, ``tausend`` and
   the words for 1..99 (``eins``, ``zwölf``, ``zweiundvierzig``, ...). Every German
   number then splits the same, structural way, which follows the English words
   one for one::

       three hundred forty-two thousand nine -> ▁ drei hundert zweiundvierzig tausend neun

   Measured against the alternatives (the 1.2M-parameter d_model 128, 3+3 layer model,
   600 steps, seed 0, held-out test exact match): ``numbers`` 99.98% in 2.6 min;
   ``unigram`` (sentencepiece's own pieces for both languages, 256: "▁dreihundert",
   "tausendneun", "siebzehntausend", "e i n s") 99.62% in 2.5 min; ``char`` (one piece
   per character, targets of 46 tokens on average instead of 8) 86.0% in 14.8 min.
2. a T5 v1.1-style model (gated-GELU, untied head) of about half a million parameters,
   trained with AdamW and teacher forcing on numbers drawn from the training split,
   by magnitude (:data:`MAGNITUDE_WEIGHTS`);
3. greedy exact-match accuracy on the held-out validation split along the way and on
   the held-out test split at the end, measured on the saved checkpoint (float16
   safetensors, upcast to float32 as the ONNX export does);
4. ``DIR`` gets the checkpoint, the tokenizer (``spiece.model``, ``tokenizer.json``)
   and ``training.json`` (seed, steps, wall time, accuracies, failures).

``--minutes`` caps the training wall time; the run is reproducible (same seed, same
steps) only when the cap is not reached, which ``training.json`` records.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import random
import sys
import time
from collections import Counter
from pathlib import Path

from . import numbers as nb

# Share of each training batch by magnitude: the test split is mostly 5- and 6-digit
# numbers, the small ones are few and quickly learned.
MAGNITUDE_WEIGHTS = {(0, 99): 0.04, (100, 999): 0.08, (1_000, 9_999): 0.2, (10_000, 99_999): 0.26,
                     (100_000, nb.MAX): 0.42}

DEFAULTS = dict(
    vocab="numbers", vocab_size=96, d_model=96, d_kv=24, num_heads=4, d_ff=192, num_layers=2,
    num_decoder_layers=2, steps=1500, batch_size=128, lr=2e-3, warmup=150, weight_decay=0.01,
    eval_every=500, seed=0, minutes=20.0,
)


def log(message: str, start: float = time.monotonic()) -> None:
    print(f"[{time.monotonic() - start:7.1f}s] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- vocabulary


def german_pieces() -> list[str]:
    """The German pieces of the ``numbers`` vocabulary: every German number is a sequence of them."""
    return ["null", "ein", "hundert", "tausend"] + [nb.german(n) for n in range(1, 100)]


def german_segments(n: int) -> list[str]:
    """The structural split of ``german(n)`` into :func:`german_pieces` (what the ``numbers`` vocabulary yields)."""
    if n == 0:
        return ["null"]

    def below_1000(k: int, final: bool) -> list[str]:
        hundreds, rest = divmod(k, 100)
        out = []
        if hundreds:
            out += ["ein" if hundreds == 1 else nb.german(hundreds), "hundert"]
        if rest:
            out.append("ein" if rest == 1 and not final else nb.german(rest))
        return out

    thousands, rest = divmod(n, 1000)
    out = []
    if thousands:
        out += below_1000(thousands, final=False) + ["tausend"]
    if rest:
        out += below_1000(rest, final=True)
    return out


def _spm_train(texts, vocab_size: int, model_type: str = "unigram") -> bytes:
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size, model_type=model_type,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, hard_vocab_limit=False,
        minloglevel=2, num_threads=1,
        # No NFKC table: the texts are plain lower-case words, and the table would add 240 kB to
        # spiece.model and to every tokenizer.json.
        normalization_rule_name="identity",
    )
    return model.getvalue()


def _prefix_lines(rng: random.Random, count: int = 3000) -> list[str]:
    # The prefix words in varied order: sentencepiece seeds its pieces from repeated substrings that
    # are maximal, and a phrase that never varies yields none of its words (they end up as characters).
    words = nb.PREFIX.split() + ["German"]
    return [" ".join(rng.choice(words) for _ in range(5)) for _ in range(count)]


def build_vocabulary(path: Path, train: list[int], kind: str, vocab_size: int, seed: int) -> Path:
    """Write a T5-style sentencepiece model (pad 0, eos 1, unk 2) of the given kind to ``path``."""
    rng = random.Random(seed)
    sample = rng.sample(train, 20_000) + [n for n in train if n < 1000]
    english = [nb.english(n) for n in sample]
    german = [nb.german(n) for n in sample]
    if kind == "char":
        proto = _characters_only(_spm_train(_prefix_lines(rng) + english + german, vocab_size))
    elif kind == "unigram":
        proto = _spm_train(_prefix_lines(rng) + english + german, vocab_size)
    elif kind == "numbers":
        proto = _add_german_pieces(_spm_train(_prefix_lines(rng) + english, vocab_size))
    else:
        raise ValueError(f"unknown vocabulary kind {kind!r}")
    path.write_bytes(proto)
    return path


def _characters_only(proto_bytes: bytes) -> bytes:
    """Keep the special and single-character pieces of a unigram model: a character vocabulary."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(proto_bytes)
    keep = [p for p in proto.pieces if p.type != pb.ModelProto.SentencePiece.NORMAL or len(p.piece) == 1]
    del proto.pieces[:]
    proto.pieces.extend(keep)
    return proto.SerializeToString()


def load_tokenizer(spm_path: Path):
    """The fast tokenizer of a sentencepiece model, splitting text exactly as sentencepiece does.

    ``add_prefix_space=True``: without it transformers converts the model with the Metaspace
    prepend scheme "never", and the first word of every text is split differently from
    sentencepiece and the slow ``T5Tokenizer`` ("translate" as characters, not "▁translate").

    Under transformers 5, ``T5TokenizerFast(vocab_file=...)`` silently builds a four-piece vocabulary
    (every word ``<unk>``); there the tokenizer is made with ``from_pretrained`` on ``spm_path``'s
    directory (which must hold it as ``spiece.model``), and its size is checked against sentencepiece's.
    """
    import sentencepiece
    from transformers import T5Tokenizer, T5TokenizerFast

    pieces = sentencepiece.SentencePieceProcessor(model_file=str(spm_path)).get_piece_size()
    tokenizer = T5TokenizerFast(vocab_file=str(spm_path), extra_ids=0, legacy=False, add_prefix_space=True)
    if len(tokenizer) != pieces:
        if spm_path.name != "spiece.model":
            raise ValueError(f"{spm_path}: name it spiece.model (transformers 5 loads a T5 vocabulary from there).")
        tokenizer = T5Tokenizer.from_pretrained(spm_path.parent, extra_ids=0, legacy=False, add_prefix_space=True)
    if len(tokenizer) != pieces:
        raise RuntimeError(f"{spm_path}: transformers made a tokenizer of {len(tokenizer)} pieces from a "
                           f"sentencepiece model of {pieces}.")
    # Saved with add_prefix_space, the tokenizer would be rebuilt from spiece.model at every load (which
    # needs sentencepiece); without it, tokenizer.json (prepend scheme "first") is loaded as it is.
    tokenizer.init_kwargs.pop("add_prefix_space", None)
    return tokenizer


def _add_german_pieces(proto_bytes: bytes) -> bytes:
    """Append the German number pieces (and any missing characters) to an English sentencepiece model."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(proto_bytes)
    have = {p.piece for p in proto.pieces}
    normal = [p.score for p in proto.pieces if p.type == pb.ModelProto.SentencePiece.NORMAL and len(p.piece) > 1]
    word_score = min(normal)  # as likely as the rarest English word piece: whole pieces beat any split
    char_score = word_score - 10.0
    chars = sorted({c for word in german_pieces() for c in word} | {"▁"})
    for piece, score in [(w, word_score) for w in german_pieces()] + [(c, char_score) for c in chars]:
        if piece not in have:
            proto.pieces.add(piece=piece, score=score, type=pb.ModelProto.SentencePiece.NORMAL)
            have.add(piece)
    return proto.SerializeToString()


# ----------------------------------------------------------------------------- model and data


def build_model(vocab_size: int, args):
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(
        vocab_size=vocab_size, d_model=args.d_model, d_kv=args.d_kv, num_heads=args.num_heads, d_ff=args.d_ff,
        num_layers=args.num_layers, num_decoder_layers=args.num_decoder_layers, feed_forward_proj="gated-gelu",
        tie_word_embeddings=False, dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )
    return T5ForConditionalGeneration(config)


class Batches:
    """Seeded training batches: numbers drawn from the training split by :data:`MAGNITUDE_WEIGHTS`."""

    def __init__(self, train: list[int], tokenizer, batch_size: int, seed: int):
        self.rng = random.Random(seed)
        self.pools = [[n for n in train if low <= n <= high] for low, high in MAGNITUDE_WEIGHTS]
        self.weights = list(MAGNITUDE_WEIGHTS.values())
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    def numbers(self) -> list[int]:
        pools = self.rng.choices(self.pools, self.weights, k=self.batch_size)
        return [self.rng.choice(pool) for pool in pools]

    def __next__(self):
        return encode(self.tokenizer, self.numbers())


def encode(tokenizer, numbers: list[int]):
    enc = tokenizer([nb.source(n) for n in numbers], return_tensors="pt", padding=True)
    labels = tokenizer([nb.german(n) for n in numbers], return_tensors="pt", padding=True).input_ids
    labels[labels == tokenizer.pad_token_id] = -100
    return enc.input_ids, enc.attention_mask, labels


def predict(model, tokenizer, numbers: list[int], max_new_tokens: int, batch_size: int = 500) -> list[str]:
    """Greedy translations of ``numbers`` by transformers' ``generate``."""
    import torch

    out: list[str] = []
    model.eval()
    with torch.no_grad():
        for i in range(0, len(numbers), batch_size):
            chunk = numbers[i : i + batch_size]
            enc = tokenizer([nb.source(n) for n in chunk], return_tensors="pt", padding=True)
            seq = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
            out += tokenizer.batch_decode(seq, skip_special_tokens=True)
    return out


def accuracy(numbers: list[int], predictions: list[str]) -> dict:
    """Exact match overall and by number of digits, and the first failures."""
    right = [p == nb.german(n) for n, p in zip(numbers, predictions)]
    total, hits = Counter(), Counter()
    for n, ok in zip(numbers, right):
        total[nb.magnitude(n)] += 1
        hits[nb.magnitude(n)] += ok
    return {
        "exact_match": sum(right) / len(right),
        "correct": sum(right),
        "total": len(right),
        "by_digits": {str(d): round(hits[d] / total[d], 4) for d in sorted(total)},
        "failures": [
            {"number": n, "source": nb.english(n), "expected": nb.german(n), "predicted": p}
            for n, p, ok in zip(numbers, predictions, right) if not ok
        ][:20],
    }


# ----------------------------------------------------------------------------- training


def train(args) -> dict:
    import torch
    import transformers
    from transformers import T5ForConditionalGeneration

    t_start = time.monotonic()
    torch.set_num_threads(2)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train_split, validation, test = nb.split(0)  # the split is fixed; --seed moves everything else
    log(f"split: {len(train_split)} train, {len(validation)} validation, {len(test)} test numbers")

    spm_path = build_vocabulary(out / "spiece.model", train_split, args.vocab, args.vocab_size, args.seed)
    tokenizer = load_tokenizer(spm_path)
    tokenizer.save_pretrained(out)  # before any use: padding settings would be saved in tokenizer.json
    target_lengths = [len(tokenizer(nb.german(n)).input_ids) for n in validation + test + [777_777, 999_999]]
    max_new_tokens = max(target_lengths) + 2
    log(f"vocabulary: {args.vocab}, {len(tokenizer)} pieces; 342 -> {tokenizer.tokenize(nb.german(342))}; "
        f"target length mean {sum(target_lengths) / len(target_lengths):.1f}, max {max(target_lengths)}")

    model = build_model(len(tokenizer), args)
    model.generation_config.max_new_tokens = max_new_tokens
    params = sum(p.numel() for p in model.parameters())
    log(f"model: {params:,} parameters ({params * 2 / 1e6:.2f} MB in float16, {params * 4 / 1e6:.2f} MB in float32)")

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n and "shared" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n and "shared" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.98), eps=1e-8,
    )

    def lr_factor(step: int) -> float:  # linear warm-up, cosine decay to 5%
        if step < args.warmup:
            return (step + 1) / args.warmup
        progress = (step - args.warmup) / max(1, args.steps - args.warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    batches = Batches(train_split, tokenizer, args.batch_size, args.seed)
    history = []
    t_train = time.monotonic()
    deadline = t_train + args.minutes * 60
    step, running, stopped_early = 0, [], False
    while step < args.steps:
        model.train()
        input_ids, attention_mask, labels = next(batches)
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        running.append(loss.item())
        step += 1
        if step % 100 == 0:
            elapsed = time.monotonic() - t_train
            log(f"step {step}/{args.steps} loss {sum(running) / len(running):.4f} lr {scheduler.get_last_lr()[0]:.2e} "
                f"({step / elapsed:.1f} steps/s)")
            running = []
        if step % args.eval_every == 0 or step == args.steps:
            acc = accuracy(validation, predict(model, tokenizer, validation, max_new_tokens))
            history.append({"step": step, "seconds": round(time.monotonic() - t_train, 1),
                            "validation_exact_match": acc["exact_match"]})
            log(f"step {step}: validation exact match {acc['exact_match']:.4f} {acc['by_digits']}")
        if time.monotonic() > deadline and step < args.steps:
            stopped_early = True
            log(f"--minutes {args.minutes} reached: stopping at step {step} of {args.steps}")
            break
    train_seconds = time.monotonic() - t_train

    fp32_test = accuracy(test, predict(model, tokenizer, test, max_new_tokens))
    log(f"test exact match (float32 weights as trained): {fp32_test['exact_match']:.4f}")
    model.half().save_pretrained(out)
    saved = T5ForConditionalGeneration.from_pretrained(out, dtype=torch.float32)  # as the ONNX export loads it
    test_acc = accuracy(test, predict(saved, tokenizer, test, max_new_tokens))
    val_acc = accuracy(validation, predict(saved, tokenizer, validation, max_new_tokens))
    log(f"test exact match (saved float16 checkpoint, upcast to float32): {test_acc['exact_match']:.4f} "
        f"{test_acc['by_digits']}")

    report = {
        "task": "English number words -> German number words, 0..999999 (t5ort.training.numbers)",
        "command": "python -m t5ort.training.train_numbers " + " ".join(sys.argv[1:]),
        "seed": args.seed,
        "split": {"seed": 0, "train": len(train_split), "validation": len(validation), "test": len(test)},
        "steps": step,
        "planned_steps": args.steps,
        "stopped_early": stopped_early,
        "batch_size": args.batch_size,
        "optimizer": {"name": "AdamW", "lr": args.lr, "betas": [0.9, 0.98], "weight_decay": args.weight_decay,
                      "warmup_steps": args.warmup, "schedule": "linear warm-up, cosine decay to 5%",
                      "grad_clip": 1.0},
        "magnitude_weights": {f"{lo}-{hi}": w for (lo, hi), w in MAGNITUDE_WEIGHTS.items()},
        "training_seconds": round(train_seconds, 1),
        "total_seconds": round(time.monotonic() - t_start, 1),
        "threads": torch.get_num_threads(),
        "vocabulary": {"kind": args.vocab, "size": len(tokenizer), "spm_vocab_size_arg": args.vocab_size},
        "model": {k: getattr(model.config, k) for k in (
            "d_model", "d_kv", "num_heads", "d_ff", "num_layers", "num_decoder_layers", "feed_forward_proj",
            "tie_word_embeddings", "relative_attention_num_buckets", "relative_attention_max_distance",
            "vocab_size")} | {"parameters": params, "saved_dtype": "float16"},
        "max_new_tokens": max_new_tokens,
        "test": test_acc,
        "test_float32_before_saving": {k: fp32_test[k] for k in ("exact_match", "correct", "total")},
        "validation": {k: val_acc[k] for k in ("exact_match", "correct", "total", "by_digits")},
        "history": history,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__},
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
    }
    (out / "training.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    log(f"wrote {out} (training {train_seconds / 60:.1f} min, {step} steps)")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m t5ort.training.train_numbers",
        description="Train the bundled English->German number-words T5 on the CPU (seeded).",
    )
    parser.add_argument("--out", required=True, help="checkpoint directory to write")
    parser.add_argument("--minutes", type=float, default=DEFAULTS["minutes"], help="cap on the training wall time")
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    parser.add_argument("--steps", type=int, default=DEFAULTS["steps"])
    parser.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    parser.add_argument("--lr", type=float, default=DEFAULTS["lr"])
    parser.add_argument("--warmup", type=int, default=DEFAULTS["warmup"])
    parser.add_argument("--weight-decay", type=float, default=DEFAULTS["weight_decay"])
    parser.add_argument("--eval-every", type=int, default=DEFAULTS["eval_every"])
    parser.add_argument("--vocab", choices=["numbers", "unigram", "char"], default=DEFAULTS["vocab"],
                        help="numbers: English sentencepiece + German number words as pieces (default); "
                             "unigram: sentencepiece's own pieces for both languages; char: characters")
    parser.add_argument("--vocab-size", type=int, default=DEFAULTS["vocab_size"],
                        help="sentencepiece vocab_size (for 'numbers': of the English part)")
    for name in ("d_model", "d_kv", "num_heads", "d_ff", "num_layers", "num_decoder_layers"):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=DEFAULTS[name])
    args = parser.parse_args(argv)
    if "torch" not in sys.modules:
        # Two spinning OpenMP threads on two shared cores slow each other and any neighbour down
        # several-fold; passive waiting keeps the speed when the cores are busy with other work.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
