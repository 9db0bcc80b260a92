"""Text <-> ids without transformers: a tokenizer.json through `tokenizers`, or ByT5's bytes."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from .errors import ArtifactError
from .manifest import Manifest


class TextTokenizer(Protocol):
    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...

    def decode_batch(self, ids: np.ndarray) -> list[str]: ...

    def token_string(self, token_id: int) -> str:
        """One vocabulary entry as the vocabulary spells it ("▁house"), for tables of tokens."""
        ...

    def token_text(self, token_id: int) -> str:
        """The text one token contributes to the output (" house"; "" for special tokens)."""
        ...


def clean_up_tokenization(text: str) -> str:
    """transformers' ``clean_up_tokenization``: drop spaces before punctuation and English contractions."""
    return (
        text.replace(" .", ".").replace(" ?", "?").replace(" !", "!").replace(" ,", ",")
        .replace(" ' ", "'").replace(" n't", "n't").replace(" 'm", "'m").replace(" 's", "'s")
        .replace(" 've", "'ve").replace(" 're", "'re")
    )


class JsonTokenizer:
    """A ``tokenizer.json`` (sentencepiece T5/mT5 vocabularies converted by transformers)."""

    def __init__(self, path: Path, clean_up: bool):
        from tokenizers import Tokenizer

        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises bare Exception on bad files
            raise ArtifactError(f"{path}: cannot load tokenizer ({exc}); re-export the model.") from exc
        self._tok.no_padding()
        self._tok.no_truncation()
        self._clean_up = clean_up
        self._special_ids = {
            i for i, tok in self._tok.get_added_tokens_decoder().items() if tok.special
        }

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts))]

    def decode_batch(self, ids: np.ndarray) -> list[str]:
        texts = self._tok.decode_batch([row.tolist() for row in ids], skip_special_tokens=True)
        return [clean_up_tokenization(t) for t in texts] if self._clean_up else texts

    def token_string(self, token_id: int) -> str:
        token = self._tok.id_to_token(int(token_id))
        return f"<{token_id}>" if token is None else token

    def token_text(self, token_id: int) -> str:
        token = self._tok.id_to_token(int(token_id))
        if token is None or token_id in self._special_ids:
            return ""
        if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):  # sentencepiece byte fallback
            return chr(int(token[3:5], 16))
        return token.replace("\u2581", " ")


class ByteTokenizer:
    """ByT5: UTF-8 bytes shifted by the three specials (pad 0, eos 1, unk 2), then EOS."""

    OFFSET = 3

    def __init__(self, eos_token_id: int, vocab_size: int):
        self.eos_token_id = eos_token_id
        self.vocab_size = vocab_size  # bytes, then <extra_id_N> counting down from the top

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [[b + self.OFFSET for b in t.encode("utf-8")] + [self.eos_token_id] for t in texts]

    def decode_batch(self, ids: np.ndarray) -> list[str]:
        out = []
        for row in ids:
            data = bytes(int(i) - self.OFFSET for i in row if self.OFFSET <= i < self.OFFSET + 256)
            out.append(data.decode("utf-8", errors="ignore"))
        return out

    def token_string(self, token_id: int) -> str:
        specials = {0: "<pad>", self.eos_token_id: "</s>", 2: "<unk>"}
        if token_id in specials:
            return specials[token_id]
        byte = token_id - self.OFFSET
        if 0 <= byte < 256:
            return chr(byte) if 32 <= byte < 127 else f"<0x{byte:02X}>"
        return f"<extra_id_{self.vocab_size - 1 - token_id}>"

    def token_text(self, token_id: int) -> str:
        byte = token_id - self.OFFSET
        return chr(byte) if 0 <= byte < 256 else ""


def load_tokenizer(directory: Path, manifest: Manifest) -> TextTokenizer | None:
    spec = manifest.tokenizer
    if spec.kind == "byt5":
        return ByteTokenizer(manifest.special_tokens.eos_token_id[0], manifest.geometry.vocab_size)
    if spec.kind == "tokenizers" and spec.file:
        path = directory / spec.file
        if not path.is_file():
            raise ArtifactError(f"{path}: tokenizer file missing; re-export the model.")
        tokenizer = JsonTokenizer(path, spec.clean_up_tokenization_spaces)
        size = tokenizer.vocab_size
        if size > manifest.geometry.vocab_size:
            raise ArtifactError(
                f"{path}: the tokenizer has {size} tokens but the model's vocabulary has "
                f"{manifest.geometry.vocab_size}: this tokenizer belongs to another model; re-export the model."
            )
        return tokenizer
    if spec.kind == "none":
        return None
    raise ArtifactError(f"{directory / 'manifest'}: unknown tokenizer kind {spec.kind!r}; re-export the model.")
