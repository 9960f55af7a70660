"""Typed config of the data section. Torch-free."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

BUILTIN_DATASETS = ("stdlib_text", "digits", "synthetic")


@dataclass
class DataConfig:
    name: str = "stdlib_text"  # a built-in dataset, used when `path` is None
    path: Optional[str] = None  # a folder or URL prefix holding manifest.json and shards
    cache_dir: Optional[str] = None  # where built-in datasets are prepared; default ~/.cache/scaling
    seq_len: int = 128  # sequence length when a built-in text set is prepared
    tokenizer: str = "byte"  # byte | bpe
    vocab_size: Optional[int] = None  # BPE only
    num_workers: int = 0

    def problems(self, prefix: str = "data") -> list[str]:
        out = []
        if self.path is None and self.name not in BUILTIN_DATASETS:
            out.append(f"{prefix}.name={self.name!r} is not built in; use one of {BUILTIN_DATASETS} or set {prefix}.path")
        if self.seq_len <= 0:
            out.append(f"{prefix}.seq_len={self.seq_len} must be positive")
        if self.tokenizer not in ("byte", "bpe"):
            out.append(f"{prefix}.tokenizer={self.tokenizer!r}; use byte or bpe")
        if self.num_workers < 0:
            out.append(f"{prefix}.num_workers={self.num_workers} must be >= 0")
        return out
