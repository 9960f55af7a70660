"""Tokenizers: byte-level by default (no files, nothing to download), or a BPE tokenizer trained
locally on the corpus with the `tokenizers` library and stored beside the shards.

Torch-free.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Sequence

import numpy as np

from scaling.errors import DataError

BYTE_VOCAB = 257  # 256 byte values and one end-of-document token
BYTE_EOD = 256
EOD_TEXT = "<|eod|>"
BPE_FILE = "tokenizer.json"


class ByteTokenizer:
    """UTF-8 bytes are the tokens; id 256 ends a document."""

    vocab_size = BYTE_VOCAB
    eod_id = BYTE_EOD

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(int(i) for i in ids if int(i) < 256).decode("utf-8", errors="replace")

    def spec(self) -> dict[str, Any]:
        return {"type": "byte", "vocab_size": BYTE_VOCAB, "eod_id": BYTE_EOD, "file": None}


class BPETokenizer:
    """A byte-level BPE tokenizer from the `tokenizers` library, read from or written to a file."""

    def __init__(self, tok: Any, requested_vocab: int | None = None):
        self.tok = tok
        self.eod_id = tok.token_to_id(EOD_TEXT)
        self.vocab_size = tok.get_vocab_size()
        self.requested_vocab = requested_vocab

    @classmethod
    def train(cls, texts: Sequence[str], vocab_size: int) -> "BPETokenizer":
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOD_TEXT],
            # Every byte is in the vocabulary, so any text encodes without an unknown token.
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer)
        return cls(tok, vocab_size)

    @classmethod
    def load(cls, path_or_bytes: str | bytes) -> "BPETokenizer":
        from tokenizers import Tokenizer

        if isinstance(path_or_bytes, bytes):
            return cls(Tokenizer.from_str(path_or_bytes.decode()))
        return cls(Tokenizer.from_file(path_or_bytes))

    def save(self, folder: str) -> str:
        path = os.path.join(folder, BPE_FILE)
        self.tok.save(path)
        return path

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.tok.encode(text).ids, dtype=np.int64)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [np.asarray(e.ids, dtype=np.int64) for e in self.tok.encode_batch(list(texts))]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode([int(i) for i in ids if int(i) != self.eod_id])

    def spec(self) -> dict[str, Any]:
        return {
            "type": "bpe",
            "vocab_size": self.vocab_size,
            "requested_vocab_size": self.requested_vocab,
            "eod_id": self.eod_id,
            "file": BPE_FILE,
            "library": "tokenizers",
        }


def load_tokenizer(manifest: Any) -> ByteTokenizer | BPETokenizer:
    """The tokenizer a text manifest records, to encode prompts and decode samples."""
    from scaling.data.manifest import read_bytes

    spec = manifest.tokenizer or {}
    kind = spec.get("type")
    if kind == "byte":
        return ByteTokenizer()
    if kind == "bpe":
        url = manifest.url(spec["file"])
        try:
            return BPETokenizer.load(read_bytes(url))
        except OSError as exn:
            raise DataError(f"{url}: the BPE tokenizer recorded in the manifest cannot be read ({exn}); re-create the dataset") from exn
    raise DataError(f"{manifest.url('manifest.json')}: tokenizer {kind!r} has no encoder (synthetic data is already tokens)")
