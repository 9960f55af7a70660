"""What makes two runs the same run: the result-affecting config, its hash, and the data checksum.

The planner names run directories with `config_hash`, and the trainer records the same hash (and
the data's checksum) in every checkpoint and in `result.json`, so a resume or a rerun on a
directory can prove it is the same run, or be refused with the keys that differ.

Rule `RUN_ID_RULE` (version 2), stated once here:
  1. Resolve the trainer config, with the model's data-dependent sizes filled from the data
     manifest (the planner fills them before hashing, as the trainer does after reading the data).
  2. Flatten it to dotted keys and drop the keys that do not change what a run computes
     (`NON_RESULT_KEYS`: where it logs, how often it checkpoints, how many threads it uses).
  3. Of the rest, keep `model.family` and every key whose value differs from the schema's default
     (the dataclass defaults of scaling/config.py for that family).
  4. The hash is the first 6 hex digits of SHA-256 of that dict as sorted JSON.
So adding a config key whose default keeps today's behaviour changes no existing id.

Rule 1, kept only to find the run directories of studies planned before version 2: the same
hash over every key of the schema as it was then (`_V1_KEYS`), values as the v1 planner saw them
(before the data manifest filled the model's sizes), defaults included. `legacy_config_hash`
reproduces it, and the planner keeps a run's old id where a directory of that id already exists.

Torch-free: the planner runs on login nodes.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from scaling.config import TrainAppConfig, to_dict
from scaling.families import DEFAULT, FAMILIES

RUN_ID_RULE = 2

# Keys of the resolved trainer config that do not change what a run computes (evaluation cadence
# included: evaluation draws no randomness and the final evaluation always runs). They may differ
# between a run and its resume, and are left out of the run id, so that, say, turning on periodic
# checkpoints does not orphan a half-finished study.
NON_RESULT_KEYS = (
    "run", "logger", "data.cache_dir", "data.num_workers", "train.device", "train.num_threads",
    "train.log_every_steps", "train.keep_checkpoints", "train.checkpoint_every_tokens", "train.nan_check",
    "train.trust_checkpoint", "train.eval_every_tokens", "train.compile", "train.callbacks",
    "train.final_checkpoint",
)  # fmt: skip

# Rule 1 hashed every schema key of its day; frozen here (and each family's model keys in its
# module, `Family.legacy_id_keys`) so that later keys do not move old ids.
_V1_COMMON = (
    "data.name", "data.path", "data.seq_len", "data.tokenizer", "data.vocab_size", "data.streams",
    "data.max_source_mb", "data.val_fraction", "data.shard_samples", "data.split_seed", "data.synthetic_vocab",
    "data.synthetic_tokens", "train.tokens", "train.flops", "train.flops_convention", "train.global_batch_size",
    "train.micro_batch_size", "train.lr", "train.min_lr_ratio", "train.schedule", "train.warmup_tokens",
    "train.decay_fraction", "train.weight_decay", "train.beta1", "train.beta2", "train.grad_clip",
    "train.zero_stage", "train.precision", "train.activation_checkpointing", "train.eval_every_tokens",
    "train.eval_tokens", "train.seed",
)  # fmt: skip



def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def is_result_key(key: str) -> bool:
    return not any(key == x or key.startswith(x + ".") for x in NON_RESULT_KEYS)


def _schema_defaults(family: str) -> dict[str, Any]:
    return flatten(to_dict(TrainAppConfig(model=FAMILIES[family].config())))


def result_config(cfg: TrainAppConfig) -> dict[str, Any]:
    """The result-affecting keys whose value differs from the schema's default (and the family):
    what the run id covers, and what a resume must match."""
    family = cfg.model.family
    defaults = _schema_defaults(family)
    flat = flatten(to_dict(cfg))
    return {
        k: v for k, v in sorted(flat.items())
        if is_result_key(k) and (k == "model.family" or k not in defaults or v != defaults[k])
    }  # fmt: skip


def _digest(obj: dict) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:6]


def config_hash(cfg: TrainAppConfig) -> str:
    """The run id's hash under rule 2 (see the module docstring)."""
    return _digest(result_config(cfg))


def legacy_config_hash(cfg: TrainAppConfig) -> str:
    """The run id's hash under rule 1, for a config as the v1 planner composed it."""
    flat = flatten(to_dict(cfg))
    keys = (*FAMILIES[cfg.model.family].legacy_id_keys, *_V1_COMMON)
    return _digest({k: flat[k] for k in keys if k in flat})


def config_differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """`key: recorded -> current` for every result-affecting key that differs (both sides as
    returned by `result_config`; a key absent on one side has its schema default there)."""
    family = current.get("model.family", recorded.get("model.family", DEFAULT))
    defaults = _schema_defaults(family) if family in FAMILIES else {}
    out = []
    for k in sorted(set(recorded) | set(current)):
        a, b = recorded.get(k, defaults.get(k)), current.get(k, defaults.get(k))
        if a != b:
            out.append(f"{k}: {a!r} -> {b!r}")
    return out


def data_checksum(manifest: Any) -> str:
    """SHA-256 (16 hex digits) of the manifest: shard names, sizes and checksums, tokenizer and
    shapes. Replacing the data changes it; moving it to another folder does not."""
    raw = manifest.to_json()
    return hashlib.sha256(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest()[:16]
