"""A custom decoding loop on the step-level decoder: greedy decoding that backtracks where it is unsure.

    python examples/custom_decoder.py [--threshold 0.6]

`rt.decoder(...)` hands out the raw logits of the next position and takes the tokens you choose. This loop
decodes greedily; where the best token's probability is under --threshold, it also tries the runner-up:
it keeps going from the runner-up for the rest of the sequence, scores both continuations by their total
log-probability, and rolls the decoder back (`rollback`) to keep the better one. Rows are independent, so
the loop runs one row at a time (`select` would fork rows instead; see tests/test_decoder_api.py).
"""

from __future__ import annotations

import argparse

import numpy as np

import t5ort
from t5ort.demo import PREFIX, bundled


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def greedy_rest(dec, eos: int, limit: int) -> tuple[list[int], float]:
    """Greedy from the decoder's position to EOS: the tokens appended and their total log-prob."""
    tokens, total = [], 0.0
    while dec.position < limit:
        logprobs = log_softmax(dec.logits[0])
        token = int(logprobs.argmax())
        dec.append(np.array([token]))
        tokens.append(token)
        total += float(logprobs[token])
        if token == eos:
            break
    return tokens, total


def decode(rt, text: str, threshold: float, limit: int = 16) -> tuple[str, list[str]]:
    eos = rt.manifest.special_tokens.eos_token_id[0]
    notes = []
    with rt.decoder([text]) as dec:
        while dec.position < limit:
            logprobs = log_softmax(dec.logits[0])            # raw logits [1, vocab] -> log-probs of one row
            best, second = np.argsort(logprobs)[::-1][:2]
            if np.exp(logprobs[best]) < threshold:
                start = dec.position
                dec.append(np.array([second]))
                rest, alt_total = greedy_rest(dec, eos, limit)
                alt_total += float(logprobs[second])
                dec.rollback(dec.position - start)           # back to before the unsure step
                dec.append(np.array([best]))
                kept_rest, best_total = greedy_rest(dec, eos, limit)
                best_total += float(logprobs[best])
                pick = "runner-up" if alt_total > best_total else "best"
                notes.append(f"step {start}: {rt.tokenizer.token_string(int(best))} {best_total:.2f} vs "
                             f"{rt.tokenizer.token_string(int(second))} {alt_total:.2f} -> {pick}")
                if pick == "runner-up":
                    dec.rollback(dec.position - start)
                    dec.append(np.array([second]))
                    if rest:
                        dec.append_many(np.array([rest]))    # teacher-force the remembered continuation
                break
            dec.append(np.array([best]))
            if best == eos:
                break
        return rt.tokenizer.decode_batch(dec.sequences)[0], notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threshold", type=float, default=0.6)
    threshold = parser.parse_args().threshold
    rt = t5ort.load(bundled("onnx"))
    for number in ("three hundred forty-two", "three hundrd forty-two", "one million"):
        text, notes = decode(rt, PREFIX + number, threshold)
        plain = rt.generate([PREFIX + number], max_new_tokens=16).texts[0]
        print(f"{number!r} -> {text!r} (generate: {plain!r})")
        for note in notes:
            print("  " + note)


if __name__ == "__main__":
    main()
