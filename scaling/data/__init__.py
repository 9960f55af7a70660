"""Data: webdataset shards with a manifest, built-in offline datasets, and a deterministic loader.

    manifest = prepare_dataset(cfg.data)              # built-in sets are prepared on first use
    model_cfg = apply_manifest(cfg.model, manifest)   # vocab, seq_len, image shape come from the data
    batches = train_batches(manifest, global_batch_size=G, rank=r, world_size=W, seed=s, start_step=k)
    val = eval_batches(manifest, num_samples=n, batch_size=b, rank=r, world_size=W)

`scaling.config` imports `scaling.data.config`, and the planner must stay torch-free, so the
torch-dependent loader is imported only when `train_batches` or `eval_batches` is first used.
"""

from __future__ import annotations

from typing import Any

from scaling.data.config import BUILTIN_DATASETS, DataConfig
from scaling.data.manifest import Manifest, ShardInfo, apply_manifest, load_manifest
from scaling.data.prepare import default_cache_dir, prepare_dataset
from scaling.data.tokenizer import load_tokenizer

_LAZY = {"train_batches", "eval_batches", "TrainBatches"}

__all__ = [
    "BUILTIN_DATASETS",
    "DataConfig",
    "Manifest",
    "ShardInfo",
    "apply_manifest",
    "default_cache_dir",
    "eval_batches",
    "load_manifest",
    "load_tokenizer",
    "prepare_dataset",
    "train_batches",
    "TrainBatches",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from scaling.data import loader

        return getattr(loader, name)
    raise AttributeError(f"module 'scaling.data' has no attribute {name!r}")
