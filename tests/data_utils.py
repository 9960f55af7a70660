"""A dataset whose rows can be told apart: every token distinct, so a row's first token names it."""

from __future__ import annotations

import os

import numpy as np
import pytest

from scaling.data.build import write_text

SEQ = 3  # samples hold 4 tokens


def unique_dataset(folder, n_train=128, shard_samples=16):
    """Two documents of n_train windows each with all-distinct tokens, so the first token of a row
    names it. One document goes to validation, the other gives n_train training rows."""
    os.makedirs(folder, exist_ok=True)
    length = n_train * (SEQ + 1) - 1
    docs = [np.arange(length), np.arange(length, 2 * length)]
    tokenizer = {"type": "synthetic", "vocab_size": 2 * length + 1, "eod_id": 2 * length, "file": None}
    return write_text(str(folder), docs, name="unique", tokenizer=tokenizer, seq_len=SEQ, val_fraction=0.01,
                      shard_samples=shard_samples, seed=0, source={"type": "test"})


@pytest.fixture(scope="module")
def uniq(tmp_path_factory):
    return unique_dataset(tmp_path_factory.mktemp("uniq"))
