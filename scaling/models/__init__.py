"""Model families and named sizes.

`FAMILIES` maps a family name to its module class, `SIZES` maps a family to named configs (each
table has a `debug` size). Named sizes leave the data-derived fields (`vocab_size`, `seq_len`,
image shape, `n_classes`) as None: they come from the data manifest.

Counting parameters and FLOPs needs no model: see `scaling.counting`, which does not import torch.
"""

from __future__ import annotations

import torch.nn as nn

from scaling.config import CNNConfig, GPTConfig
from scaling.errors import ConfigError
from scaling.models.cnn import CNN
from scaling.models.gpt import GPT

FAMILIES: dict[str, type[nn.Module]] = {"gpt": GPT, "cnn": CNN}

SIZES: dict[str, dict[str, GPTConfig | CNNConfig]] = {
    "gpt": {
        "debug": GPTConfig(n_layers=2, d_model=64, n_heads=2),
        "tiny": GPTConfig(n_layers=4, d_model=128, n_heads=2),
        "small": GPTConfig(n_layers=6, d_model=384, n_heads=6),
        "gpt2-small": GPTConfig(n_layers=12, d_model=768, n_heads=12, tie_embeddings=True),
        "gpt2-medium": GPTConfig(n_layers=24, d_model=1024, n_heads=16, tie_embeddings=True),
    },
    "cnn": {
        "debug": CNNConfig(width=8, depth=1, n_stages=2),
        "small": CNNConfig(width=16, depth=1, n_stages=3),
        "resnet20": CNNConfig(width=16, depth=3, n_stages=3),  # He et al.'s CIFAR ResNet-20
        "resnet56": CNNConfig(width=16, depth=9, n_stages=3),
        "wide": CNNConfig(width=64, depth=2, n_stages=3),
    },
}

# The fields that come from the data manifest, and the key a user sets to fill each by hand.
DATA_FIELDS: dict[str, tuple[str, ...]] = {
    "gpt": ("vocab_size", "seq_len"),
    "cnn": ("image_size", "in_channels", "n_classes"),
}


def model_problems(cfg: GPTConfig | CNNConfig, prefix: str = "model") -> list[str]:
    """Every reason `cfg` cannot be built, each naming the key, the value and the fix."""
    family = getattr(cfg, "family", cfg)
    if family not in FAMILIES or not isinstance(cfg, (GPTConfig, CNNConfig)):
        return [f"{prefix}.family={family!r} is not a known family; use one of {sorted(FAMILIES)}"]
    out = [
        f"{prefix}.{key} is None: it comes from the data manifest; set data.* or {prefix}.{key}"
        for key in DATA_FIELDS[family]
        if getattr(cfg, key) is None
    ]
    return out + cfg.problems(prefix)


def build_model(cfg: GPTConfig | CNNConfig) -> nn.Module:
    """Build the module for `cfg`, after checking the config: raises ConfigError, listing every
    problem, before any parameter is allocated."""
    problems = model_problems(cfg)
    if problems:
        raise ConfigError(problems)
    return FAMILIES[cfg.family](cfg)
