"""Typed config of the data section. Torch-free: the planner sizes studies from it on login nodes.

Built-in datasets (used when `path` is None) are prepared into `cache_dir` on first use. Every
knob that changes the prepared shards is part of the cache folder's name, so changing one prepares
a new folder instead of silently reusing a stale one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

BUILTIN_DATASETS = ("stdlib_text", "digits", "synthetic")
TOKENIZERS = ("byte", "bpe")


@dataclass
class DataConfig:
    name: str = "stdlib_text"  # a built-in dataset, used when `path` is None
    path: Optional[str] = None  # a folder or URL prefix holding manifest.json and shards
    cache_dir: Optional[str] = None  # where built-in datasets are prepared; default $SCALING_CACHE or ~/.cache/scaling
    seq_len: int = 128  # sequence length when a built-in text set is prepared
    tokenizer: str = "byte"  # byte | bpe
    vocab_size: Optional[int] = None  # BPE only
    num_workers: int = 0
    # Loader: the number of data streams. The content of every global batch depends on it (and on
    # the seed and the global batch size) but never on the world size or the worker count. None
    # means gcd(global batch size, 8). It must be a multiple of the world size.
    streams: Optional[int] = None
    # Preparation (built-in sets and `scaling-data`).
    max_source_mb: float = 4.0  # stdlib_text: cap on the source text read, in MB; raise it for more data
    val_fraction: float = 0.05  # share of documents (images) held out for validation
    shard_samples: int = 1024  # samples per shard file
    split_seed: int = 0  # seeds the train/val split and the order samples are written in
    synthetic_vocab: int = 64  # synthetic: tokens of the Markov language (an end-of-document token is added)
    synthetic_tokens: int = 262144  # synthetic: tokens generated in total

    def problems(self, prefix: str = "data") -> list[str]:
        out = []
        if self.path is None and self.name not in BUILTIN_DATASETS:
            out.append(f"{prefix}.name={self.name!r} is not built in; use one of {BUILTIN_DATASETS} or set {prefix}.path")
        if self.path is not None and not str(self.path).strip():
            out.append(f"{prefix}.path is empty; set it to a folder holding manifest.json, or null for a built-in set")
        if self.seq_len <= 0:
            out.append(f"{prefix}.seq_len={self.seq_len} must be positive")
        if self.tokenizer not in TOKENIZERS:
            out.append(f"{prefix}.tokenizer={self.tokenizer!r}; use byte or bpe")
        if self.tokenizer == "bpe" and self.vocab_size is None:
            out.append(f"{prefix}.tokenizer=bpe needs {prefix}.vocab_size; set e.g. {prefix}.vocab_size=4096")
        if self.vocab_size is not None and self.tokenizer == "byte":
            out.append(
                f"{prefix}.vocab_size={self.vocab_size} applies to the BPE tokenizer only (byte-level is 257); "
                f"set {prefix}.tokenizer=bpe or remove {prefix}.vocab_size"
            )
        if self.vocab_size is not None and not 258 <= self.vocab_size <= 65535:
            out.append(f"{prefix}.vocab_size={self.vocab_size}; a BPE vocabulary must lie in [258, 65535]")
        if self.num_workers < 0:
            out.append(f"{prefix}.num_workers={self.num_workers} must be >= 0")
        if self.streams is not None and self.streams <= 0:
            out.append(f"{prefix}.streams={self.streams} must be positive, or null for gcd(global batch, 8)")
        if not (math.isfinite(self.max_source_mb) and self.max_source_mb > 0):
            out.append(f"{prefix}.max_source_mb={self.max_source_mb} must be a positive number of MB")
        if not 0 < self.val_fraction < 1:
            out.append(f"{prefix}.val_fraction={self.val_fraction} must lie strictly between 0 and 1, e.g. 0.05")
        if self.shard_samples <= 0:
            out.append(f"{prefix}.shard_samples={self.shard_samples} must be positive, e.g. 1024")
        if not 2 <= self.synthetic_vocab <= 65534:
            out.append(f"{prefix}.synthetic_vocab={self.synthetic_vocab} must lie in [2, 65534]")
        if self.synthetic_tokens <= 0:
            out.append(f"{prefix}.synthetic_tokens={self.synthetic_tokens} must be positive")
        return out
