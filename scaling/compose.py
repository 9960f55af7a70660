"""The trainer's config, composed as Hydra composes it, once per base in a long-lived process.

A warm worker (scaling/worker.py) trains run after run, and Hydra's `compose` of conf/train.yaml
takes about 70 ms each time on a laptop core: it rereads the YAML files, rebuilds the defaults
list and the structured schema. For the smallest runs of a study (about 1 s of steps) that alone
is 5% of the run. The runs of a study differ only in value overrides of nested keys
(`train.lr=...`, `model.d_model=...`), so this module composes each base once and applies a run's
value overrides to a copy.

Why this equals `compose(config_name="train", overrides=...)`. Hydra composes in two stages: it
builds the defaults list from the overrides that choose config groups, composes the config from
it and sets the root to struct mode, then applies the remaining (value) overrides in their order,
with `ConfigLoaderImpl._apply_overrides_to_config`. Here an override is a value override when it
names a dotted key (a group is named with `/`, never `.`), has no package (`@`), and is not a
Hydra or sweep override. The base is the compose of every other override, cached by that list;
the value overrides are then applied to a deep copy with Hydra's own function, so their errors
read as Hydra's. Where a value override comes before another override in the list, the split
could reorder them, so the whole list goes to `compose` instead. A test checks the two paths
give the same config for a study's runs and for bad keys.

The cache is per process and keyed also by the newest modification time of conf/, so an edited
config file is composed afresh.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
CONFIG_NAME = "train"

_BASES: dict[tuple, Any] = {}  # (conf/ mtime, base overrides) -> composed DictConfig


def _conf_mtime() -> float:
    return max(p.stat().st_mtime for p in CONF_DIR.rglob("*.yaml"))


def compose_full(overrides: list[str]) -> Any:
    """Hydra's compose of conf/train.yaml with `overrides` (the hydra node removed), as
    `scaling-train` composes it. Works inside a running Hydra app (`scaling-study`, whose search
    path is the same conf/) and outside one."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from scaling.config import register_configs

    register_configs()
    if GlobalHydra.instance().is_initialized():
        return compose(config_name=CONFIG_NAME, overrides=list(overrides))
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=CONFIG_NAME, overrides=list(overrides))


def _is_value(override: Any) -> bool:
    key = override.key_or_group
    return ("." in key and "/" not in key and override.package is None and not override.is_hydra_override()
            and not override.is_sweep_override())  # fmt: skip


def compose_train(overrides: list[str]) -> Any:
    """conf/train.yaml composed with `overrides`: the same DictConfig as `compose_full`, with the
    base composed once per process (module docstring)."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides=list(overrides))
    except Exception:  # noqa: BLE001 - a malformed override: Hydra's compose words the error
        return compose_full(overrides)
    values = [_is_value(o) for o in parsed]
    first_value = values.index(True) if True in values else len(values)
    if not all(values[first_value:]):  # a value override before a base one: keep Hydra's order
        return compose_full(overrides)
    base = tuple(overrides[:first_value])
    key = (_conf_mtime(), base)
    if key not in _BASES:
        _BASES.clear()  # one base at a time: a study's runs share one
        _BASES[key] = compose_full(list(base))
    cfg = copy.deepcopy(_BASES[key])
    ConfigLoaderImpl._apply_overrides_to_config(parsed[first_value:], cfg)
    return cfg
