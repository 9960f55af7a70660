"""The torch modules of the model families, one file per family, and the entry points that
build them through the family registry (`scaling.families`).

`SIZES` maps a family to its named configs (each table has a `debug` size). Named sizes leave
the data-derived fields (`vocab_size`, `seq_len`, image shape, `n_classes`) as None: they come
from the data manifest.

Counting parameters and FLOPs needs no model: see `scaling.counting`, which does not import torch.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from scaling.families import FAMILIES, family_of

SIZES: dict[str, dict[str, Any]] = {name: fam.sizes for name, fam in FAMILIES.items()}
# The fields that come from the data manifest, per family.
DATA_FIELDS: dict[str, tuple[str, ...]] = {name: tuple(fam.data_fields) for name, fam in FAMILIES.items()}


def model_problems(cfg: Any, prefix: str = "model") -> list[str]:
    """Every reason `cfg` cannot be built, each naming the key, the value and the fix."""
    family = FAMILIES.get(getattr(cfg, "family", None))
    if family is None or not isinstance(cfg, family.config):
        name = getattr(cfg, "family", cfg)
        return [f"{prefix}.family={name!r} is not a known family; use one of {sorted(FAMILIES)}"]
    return family.problems(cfg, prefix)


def build_model(cfg: Any) -> nn.Module:
    """Build the module for `cfg`, after checking the config: raises ConfigError, listing every
    problem, before any parameter is allocated."""
    return family_of(cfg).build(cfg)
