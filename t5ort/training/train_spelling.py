"""Train the spelling model and its draft model: misspelled English number words -> the same words spelled right.

    python -m t5ort.training.train_spelling --out DIR [--size task|draft] [--vocab-from DIR] [--init-from DIR]
        [--grow-from DIR --size wide]
        [--minutes N] [--seed S] [--lr LR] [--warmup N] [--steps N] [--batch-size N] [--threads N]
        [--bucket B] [--copy-steps N] [--pos-init S] [--short-steps N] [--scramble-steps N] [--test-count N]

"fix: fiv hundred seventy thousand six hundrwd sixty-five" -> "five hundred seventy thousand
six hundred sixty-five" (data: :mod:`t5ort.training.spelling`). On the CPU, seeded,
two threads, like :mod:`t5ort.training.train_numbers`:

1. the vocabulary: a sentencepiece unigram model trained on correct number texts and
   the task prefix (whole words become pieces; a misspelled word splits into smaller
   ones). ``--vocab-from DIR`` reuses another model's ``spiece.model``: the draft model
   shares the task model's vocabulary, as speculative decoding needs (the vocabulary is
   seeded, so two runs with the same ``--seed`` build the same one anyway);
2. a T5 model (gated-GELU), narrow and deep: ``--size task`` (d_model 128, d_ff 512,
   8 + 6 layers, untied head, 4.1M parameters) or ``--size draft`` (d_model 128, d_ff 256,
   4 + 1 layers, 0.9M parameters). transformers' generate (4.57 and 5.25) needs at least
   as many encoder layers as decoder layers (an IndexError in its cache otherwise).
   ``--grow-from DIR --size wide``: a trained model widened to d_model 512, d_ff 2048, 16
   heads (t5-small's width, its depths) by :func:`grow`, which keeps its function, then
   fine-tuned: the task model so grown, ``--lr 1e-4 --warmup 10`` for the default 100
   steps (7 minutes), keeps 99.4% held-out exact match at 65M parameters, a model whose
   decoder step reads the weights (~4 ms), which no model trained from scratch here
   reached (d_model 256 learned at a third of the narrow model's steps per second);
3. AdamW with teacher forcing on freshly generated pairs from the training pool, linear
   warm-up and cosine decay. ``--bucket B`` draws B batches' worth of pairs at a time,
   sorts them by length and cuts them into batches (less padding: about twice the steps
   per second). ``--copy-steps N`` raises the typo rate linearly from 0 (pure copying) to
   :data:`t5ort.training.spelling.TYPO_RATE` over the first N steps; ``--pos-init S``:
   :func:`positional_init`; ``--short-steps N`` trains the first N steps on one-number
   pairs only and ``--scramble-steps N`` copies the target's words in a random order
   (both off: neither helped). ``--threads N`` (default 2): torch threads, e.g. 1 to run
   two configurations side by side. The defaults are the recipe of the bundled models:
   ``--lr 1e-3 --warmup 100 --batch-size 32 --bucket 16 --copy-steps 300 --pos-init 5``,
   6000 steps (task) or 2500 (draft), at most ``--minutes 45``.

   What did not work (transformers 5.25, one thread each, two runs side by side, 6-14
   minutes each; held-out exact match on 500 pairs unless said otherwise):

   - d_model 256, 2 + 2 layers (the earlier task size): 11.2% at best (1668 steps); even
     pure copying (no typos) plateaued at a loss of ~0.4 per token for 1000 steps, with
     2 + 2 and 4 + 4 layers: it copied one number of a list right and wrote the words of
     one item into another;
   - d_model 256 at ``--lr 1e-3``: 6 + 4 layers reached 40% on 50 pairs at step 300,
     then fell back as the typos came in (15.6% at step 564); ``--lr 2e-3`` with batch 64
     diverged (loss 0.52 -> 1.02 in 150 steps). At ``--lr 5e-4`` the same 11.6M-parameter
     model learned (57% at step 403), at a third of the narrow model's steps per second;
   - without ``--pos-init`` no run passed 1% in 260-950 steps.

   What worked: the item markers of :mod:`t5ort.training.spelling` (their effect alone was
   not isolated: every run after them also changed the model), depth, and a width of 128:
   the draft size reached 85.8% in 2215 steps (8 minutes, one shared thread), the task size
   58% on 50 pairs at step 300;
4. greedy exact-match accuracy on the held-out test pairs (numbers never seen in
   training), measured on the saved float16 checkpoint upcast to float32, as the ONNX
   export loads it. ``DIR`` gets the checkpoint, the tokenizer and ``training.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import string
import sys
import time
from pathlib import Path

from . import spelling as sp
from .train_numbers import _spm_train, load_tokenizer, log

SIZES = {
    "task": dict(d_model=128, d_kv=32, num_heads=4, d_ff=512, num_layers=8, num_decoder_layers=6,
                 tie_word_embeddings=False),
    "draft": dict(d_model=128, d_kv=32, num_heads=4, d_ff=256, num_layers=4, num_decoder_layers=1,
                  tie_word_embeddings=False),
    # --grow-from a task model: its depths, t5-small's width (a decoder step that reads ~125 MB of fp32 weights)
    "wide": dict(d_model=512, num_heads=16, d_ff=2048),
}
STEPS = {"task": 6000, "draft": 2500, "wide": 100}  # --steps's default per size
DEFAULTS = dict(vocab_size=128, steps=0, batch_size=32, lr=1e-3, warmup=100, weight_decay=0.01, seed=0,
                minutes=45.0, eval_every=500, eval_count=50, test_count=500, threads=2, bucket=16, copy_steps=300,
                short_steps=0, scramble_steps=0, pos_init=5.0)


DID_NOT_WORK = [  # recorded in training.json; the module docstring gives the figures
    "d_model 256 with 2 + 2 layers (the earlier task size): 11.2% held-out exact match at best (1668 steps); even "
    "pure copying plateaued at ~0.4 loss per token with 2 + 2 and 4 + 4 layers, writing one item's words into another",
    "d_model 256 at lr 1e-3 (unstable once typos came in) and at lr 2e-3, batch 64 (diverged)",
    "no --pos-init: no run passed 1% in 260-950 steps",
    "more decoder layers than encoder layers: transformers' generate fails (IndexError in its cache)",
]


def build_vocabulary(path: Path, vocab_size: int, seed: int) -> Path:
    rng = random.Random(seed)
    _, pool = sp.split(0)
    texts = [sp.target([rng.choice(pool) for _ in range(rng.randint(1, sp.MAX_NUMBERS))]) for _ in range(20_000)]
    texts += [sp.PREFIX.strip()] * 100 + [" ".join(string.ascii_lowercase)] * 100  # every letter a typo can make
    path.write_bytes(_spm_train(texts, vocab_size))
    return path


def _tokenizer(out: Path):
    """The tokenizer of ``out/spiece.model``, checked against sentencepiece itself.

    Under transformers 5, ``T5TokenizerFast(vocab_file=...)`` silently builds an empty four-piece
    vocabulary: every word became ``<unk>`` and the model trained on ``<unk>`` sequences (the 0% of
    the first bundled model). :func:`load_tokenizer` rebuilds it with ``from_pretrained``; here the ids
    are also checked against sentencepiece on a typical input.
    """
    import sentencepiece

    spm = sentencepiece.SentencePieceProcessor(model_file=str(out / "spiece.model"))
    tokenizer = load_tokenizer(out / "spiece.model")  # rebuilt, and its size checked, where transformers 5 needs it
    probe = "fix: sven hundred welve thousand five hunred eighty, four hundred forty-seven thousan"
    assert tokenizer(probe).input_ids == spm.encode(probe) + [tokenizer.eos_token_id], "tokenizer != sentencepiece"
    return tokenizer


def example(rng: random.Random, pool: list[int], rate: float, short: bool = False,
            scramble: bool = False) -> tuple[str, str]:
    """:func:`t5ort.training.spelling.example` with typo rate ``rate`` (the copy curriculum);
    ``short``: one number only (the length curriculum)."""
    count = 1 if short else rng.choices(range(1, sp.MAX_NUMBERS + 1), sp.COUNT_WEIGHTS)[0]
    text = sp.target([rng.choice(pool) for _ in range(count)])
    if scramble:  # the words in a random order: no grammar to guess from, only copying helps
        words = text.split(" ")
        rng.shuffle(words)
        text = " ".join(words)
    return sp.PREFIX + sp.misspell(text, rng, rate), text


def positional_init(model, strength: float) -> None:
    """Give the relative position biases heads that attend to a fixed offset (``--pos-init S``).

    T5 initializes its relative attention biases near 0.06: the encoder is close to a bag of
    words, and the model learns the words of the answer long before their order (it wrote
    "four hundred sixty-three thousand four hundred sixty-three" for "six hundred fifty-four
    thousand four hundred sixty-three"). With ``S`` added to one bucket per head, encoder heads
    look at the previous token, the next one, two back and themselves, decoder heads at the
    previous tokens: the "what came before me" features that copying by content needs.
    """
    import torch

    with torch.no_grad():
        # bidirectional buckets (encoder): offset -k -> bucket k, +k -> 16 + k (k < 8)
        enc = model.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight
        for head, bucket in zip(range(enc.shape[1]), (1, 17, 2, 0)):
            enc[bucket, head] += strength
        # unidirectional buckets (decoder): offset -k -> bucket k (k < 16)
        dec = model.decoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight
        for head, bucket in zip(range(dec.shape[1]), (1, 2, 0, 3)):
            dec[bucket, head] += strength


def grow(model, d_model: int, d_ff: int, num_heads: int, seed: int):
    """A wider copy of a trained T5 model that computes the same function (``--grow-from``; Net2Net's
    function-preserving widening, as in bert2BERT): same depths, ``d_kv`` and vocabulary; ``d_model``, ``d_ff``
    and ``num_heads`` at least the model's.

    The old weights fill the top-left blocks; every weight that writes into the residual stream's new dimensions
    (embedding columns, attention and feed-forward output rows) and every output weight of a new head or
    feed-forward unit starts at zero, so the new dimensions stay 0 and the new units contribute nothing; the
    inputs of new units and the new heads' position biases take the wide model's own initialization, so that
    fine-tuning trains every weight. RMS norms average over ``d_model``: their weights are scaled by
    ``sqrt(d / D)`` so that the old dimensions are normalized as before, except the decoder's last one where the
    head scales the decoder output by ``d_model ** -0.5`` (its ``sqrt(D / d)`` more cancels that). The logits match
    the model's to float rounding (checked by the caller)."""
    import torch
    from transformers import T5ForConditionalGeneration

    from ..export.modules import scales_head

    old = model.config
    if d_model < old.d_model or d_ff < old.d_ff or num_heads < old.num_heads:
        raise ValueError(f"grow: the new sizes (d_model {d_model}, d_ff {d_ff}, heads {num_heads}) must be at least "
                         f"the model's ({old.d_model}, {old.d_ff}, {old.num_heads}).")
    if num_heads * old.d_kv != d_model:
        raise ValueError(f"grow: num_heads * d_kv ({num_heads} * {old.d_kv}) must equal d_model ({d_model}).")
    config = old.__class__.from_dict({**old.to_dict(), "d_model": d_model, "d_ff": d_ff, "num_heads": num_heads})
    torch.manual_seed(seed)
    wide = T5ForConditionalGeneration(config)
    d = old.d_model
    norm_scale = math.sqrt(d / d_model)
    last_norm = "decoder.final_layer_norm.weight"
    source = model.state_dict()
    with torch.no_grad():
        for name, target in wide.state_dict().items():
            if name not in source:
                continue
            w = source[name].to(target.dtype)
            leaf = name.rsplit(".", 2)[-2]
            if name.endswith("layer_norm.weight"):
                scale = 1.0 if name == last_norm and scales_head(old) else norm_scale
                target.mul_(scale)  # the new dimensions' weights: at the same scale
                target[:d] = w * scale
            elif leaf in ("o", "wo"):  # [d_model, inner or d_ff]: writes into the residual stream
                target.zero_()
                target[:d, : w.shape[1]] = w
            elif name in ("shared.weight", "lm_head.weight", "encoder.embed_tokens.weight",
                          "decoder.embed_tokens.weight"):
                target.zero_()
                target[:, :d] = w
            elif leaf == "relative_attention_bias":  # [buckets, heads]
                target[:, : w.shape[1]] = w
            else:  # q, k, v [inner, d_model]; wi, wi_0, wi_1 [d_ff, d_model]: new input columns multiply zeros
                target[: w.shape[0], :d] = w
    return wide


def _logits_diff(a, b, tokenizer, pairs) -> float:
    """The largest difference between two models' teacher-forced logits on ``pairs``."""
    import torch

    input_ids, attention_mask, labels = encode(tokenizer, pairs)
    with torch.no_grad():
        la, lb = (m.eval()(input_ids=input_ids, attention_mask=attention_mask, labels=labels).logits for m in (a, b))
    return float((la - lb).abs().max())


def build_model(vocab_size: int, size: str):
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(
        vocab_size=vocab_size, **SIZES[size], feed_forward_proj="gated-gelu", dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )
    return T5ForConditionalGeneration(config)


def encode(tokenizer, pairs):
    enc = tokenizer([s for s, _ in pairs], return_tensors="pt", padding=True)
    labels = tokenizer([t for _, t in pairs], return_tensors="pt", padding=True).input_ids
    labels[labels == tokenizer.pad_token_id] = -100
    return enc.input_ids, enc.attention_mask, labels


def predict(model, tokenizer, sources: list[str], max_new_tokens: int, batch_size: int = 100) -> list[str]:
    import torch

    out: list[str] = []
    model.eval()
    with torch.no_grad():
        for i in range(0, len(sources), batch_size):
            enc = tokenizer(sources[i: i + batch_size], return_tensors="pt", padding=True)
            seq = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
            out += tokenizer.batch_decode(seq, skip_special_tokens=True)
    return out


def accuracy(pairs, predictions) -> dict:
    right = [p == t for (_, t), p in zip(pairs, predictions)]
    unchanged = sum(s[len(sp.PREFIX):] == t for s, t in pairs)
    return {
        "exact_match": sum(right) / len(right), "correct": sum(right), "total": len(right),
        "inputs_already_correct": unchanged,
        "failures": [{"source": s, "expected": t, "predicted": p}
                     for (s, t), p, ok in zip(pairs, predictions, right) if not ok][:10],
    }


def train(args) -> dict:
    import torch
    import transformers
    from transformers import T5ForConditionalGeneration

    t_start = time.monotonic()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.vocab_from:
        shutil.copy(Path(args.vocab_from) / "spiece.model", out / "spiece.model")
    else:
        build_vocabulary(out / "spiece.model", args.vocab_size, args.seed)
    tokenizer = _tokenizer(out)
    tokenizer.save_pretrained(out)
    _, pool = sp.split(0)
    test = sp.test_pairs(0, args.test_count)
    lengths = [len(tokenizer(t).input_ids) for _, t in test]
    max_new_tokens = max(lengths) + 8
    log(f"vocabulary {len(tokenizer)} pieces; target tokens mean {sum(lengths) / len(lengths):.1f}, "
        f"max {max(lengths)}; example {test[0]}")

    grown = None
    if args.grow_from:  # a trained model, widened (its function kept), then fine-tuned
        source = T5ForConditionalGeneration.from_pretrained(args.grow_from, dtype=torch.float32)
        model = grow(source, seed=args.seed, **SIZES[args.size])
        grown = {"from": str(args.grow_from), "logits_max_abs_diff": _logits_diff(source, model, tokenizer, test[:32])}
        log(f"grown from {args.grow_from}: logits within {grown['logits_max_abs_diff']:.2e} of its own")
        del source
    elif args.init_from:  # continue training a saved checkpoint (its vocabulary: pass --vocab-from the same DIR)
        model = T5ForConditionalGeneration.from_pretrained(args.init_from, dtype=torch.float32)
    else:
        model = build_model(len(tokenizer), args.size)
    if args.pos_init and not (args.init_from or args.grow_from):
        positional_init(model, args.pos_init)
    model.generation_config.max_new_tokens = max_new_tokens
    params = sum(p.numel() for p in model.parameters())
    log(f"model ({args.size}): {params:,} parameters")
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "shared" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "shared" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.98))

    def lr_factor(step: int) -> float:  # linear warm-up, cosine decay to 5%
        if step < args.warmup:
            return (step + 1) / args.warmup
        progress = (step - args.warmup) / max(1, args.steps - args.warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    rng = random.Random(args.seed)
    history, losses, running, step, stopped_early = [], [], [], 0, False
    t_train = time.monotonic()
    deadline = t_train + args.minutes * 60
    batches: list = []
    while step < args.steps:
        model.train()
        if not batches:  # --bucket B: B batches' worth of pairs, sorted by length, cut into batches
            copying = args.copy_steps and not args.grow_from  # the copy curriculum: only from scratch
            rate = sp.TYPO_RATE * min(1.0, step / args.copy_steps) if copying else sp.TYPO_RATE
            pairs = sorted((example(rng, pool, rate, step < args.short_steps, step < args.scramble_steps)
                            for _ in range(args.batch_size * args.bucket)), key=lambda p: len(p[0]))
            batches = [pairs[i: i + args.batch_size] for i in range(0, len(pairs), args.batch_size)]
            rng.shuffle(batches)
        input_ids, attention_mask, labels = encode(tokenizer, batches.pop())
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        running.append(loss.item())
        step += 1
        if step % 50 == 0:
            mean, seconds = sum(running) / len(running), time.monotonic() - t_train
            log(f"step {step}/{args.steps} loss {mean:.4f} ({step / seconds:.2f} steps/s)")
            losses.append({"step": step, "seconds": round(seconds, 1), "loss": round(mean, 4)})
            running = []
        if step % args.eval_every == 0:
            sample = test[: args.eval_count]
            acc = accuracy(sample, predict(model, tokenizer, [s for s, _ in sample], max_new_tokens))
            history.append({"step": step, "seconds": round(time.monotonic() - t_train, 1),
                            "test_sample_exact_match": acc["exact_match"]})
            log(f"step {step}: exact match on {len(sample)} held-out pairs {acc['exact_match']:.3f}")
        if time.monotonic() > deadline and step < args.steps:
            stopped_early = True
            log(f"--minutes {args.minutes} reached: stopping at step {step} of {args.steps}")
            break
    train_seconds = time.monotonic() - t_train
    model.half().save_pretrained(out)
    saved = T5ForConditionalGeneration.from_pretrained(out, dtype=torch.float32)
    test_acc = accuracy(test, predict(saved, tokenizer, [s for s, _ in test], max_new_tokens))
    log(f"held-out test exact match (saved float16 checkpoint, upcast): {test_acc['exact_match']:.4f}")
    report = {
        "task": "misspelled English number words -> the same words spelled right (t5ort.training.spelling)",
        "command": "python -m t5ort.training.train_spelling " + " ".join(sys.argv[1:]),
        "size": args.size, "init_from": args.init_from, "grown_from": grown, "seed": args.seed, "steps": step, "planned_steps": args.steps,
        "stopped_early": stopped_early, "batch_size": args.batch_size, "lr": args.lr, "warmup": args.warmup,
        "training_seconds": round(train_seconds, 1), "total_seconds": round(time.monotonic() - t_start, 1),
        "threads": torch.get_num_threads(), "vocab_size": len(tokenizer),
        "model": dict({k: getattr(model.config, k) for k in SIZES["task"]}, parameters=params, saved_dtype="float16"),
        "max_new_tokens": max_new_tokens, "test": test_acc, "history": history,
        "loss_curve": losses, "did_not_work": DID_NOT_WORK,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__},
    }
    (out / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    log(f"wrote {out} (training {train_seconds / 60:.1f} min, {step} steps)")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m t5ort.training.train_spelling",
                                     description="Train the number-words spelling corrector (or its draft model).")
    parser.add_argument("--out", required=True, help="checkpoint directory to write")
    parser.add_argument("--size", choices=sorted(SIZES), default="task")
    parser.add_argument("--vocab-from", help="a checkpoint directory whose spiece.model to reuse (the draft model)")
    parser.add_argument("--init-from", help="a checkpoint directory to continue training (with --vocab-from it)")
    parser.add_argument("--grow-from", help="a trained checkpoint directory to widen to --size wide (its "
                        "vocabulary is reused), then fine-tune")
    for name, value in DEFAULTS.items():
        parser.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    args = parser.parse_args(argv)
    args.steps = args.steps or STEPS[args.size]
    if (args.size == "wide") != bool(args.grow_from):
        parser.error("--size wide and --grow-from go together: the wide model is grown from a trained one")
    if args.grow_from:
        args.vocab_from = args.vocab_from or args.grow_from
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
