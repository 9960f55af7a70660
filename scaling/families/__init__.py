"""The family registry: one module per model family, each building a `Family` (see `base`).

    FAMILIES        {name: Family}, a plain dict
    get(name)       the Family, or a ConfigError naming the known ones
    family_of(cfg)  the Family of a model config (by its `family` field)
    register(f)     add a family from outside the package (a test, a user's plugin)

Nothing outside this package names a family: the trainer, planner, ladder, manifest, size CLI
and counting code ask the registry. Torch-free: a Family builds its module lazily.
"""

from __future__ import annotations

from typing import Any

from scaling.errors import ConfigError
from scaling.families import cnn, gpt, vit
from scaling.families.base import Family, FlopTerms, ParamCount

FAMILIES: dict[str, Family] = {f.name: f for f in (gpt.FAMILY, cnn.FAMILY, vit.FAMILY)}
DEFAULT = gpt.NAME  # the family of a config that names none (scaling-train's default model)


def get(name: str, key: str = "model.family") -> Family:
    if name not in FAMILIES:
        raise ConfigError(f"{key}={name!r} is not a known family; use one of {sorted(FAMILIES)}")
    return FAMILIES[name]


def family_of(cfg: Any, key: str = "model.family") -> Family:
    """The Family of a model config; a config of no registered family raises ConfigError."""
    family = get(getattr(cfg, "family", cfg), key)
    if not isinstance(cfg, family.config):
        raise ConfigError(f"{key}={family.name!r} but the config is a {type(cfg).__name__}, "
                          f"not a {family.config.__name__}; build it from model={family.default_model}")
    return family


def register(family: Family, replace: bool = False) -> Family:
    """Add `family` to the registry (and its schema to Hydra's ConfigStore when Hydra is loaded).
    Registering a taken name raises unless `replace`."""
    if family.name in FAMILIES and not replace and FAMILIES[family.name] is not family:
        raise ConfigError(f"a family named {family.name!r} is registered already; pick another name")
    FAMILIES[family.name] = family
    return family


def unregister(name: str) -> None:
    FAMILIES.pop(name, None)


__all__ = ["FAMILIES", "DEFAULT", "Family", "FlopTerms", "ParamCount", "get", "family_of", "register", "unregister"]
