"""What a model family is, in one object, and the counting types every family shares.

A `Family` holds everything the rest of the project needs to know about a family: its config
class, the fields it takes from the data manifest, its sample unit, its parameter and FLOP
counts, its ladder rule, its named sizes and a lazy builder of its torch module. The trainer,
the planner, the ladder, the manifest, the size CLI and the counting code ask a `Family`; none
of them branches on a family's name. A new family is one module that builds a `Family` and
registers it (`scaling.families.register`).

Torch-free: `build()` imports the module's torch code only when it is called.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Optional

from scaling.errors import ConfigError

FLOPS_CONVENTIONS = ("kaplan", "6n", "chinchilla")

# Estimated FLOPs per element for the elementwise work in `FlopTerms.other`. FlopCounterMode does
# not count these, so they are estimates: mean, variance, normalize, scale and shift for a norm;
# GELU (erf) is a handful of operations.
NORM_FLOPS_PER_ELEMENT = 5
GELU_FLOPS_PER_ELEMENT = 8
SOFTMAX_FLOPS_PER_ELEMENT = 4  # scale, exp, sum, divide


@dataclass(frozen=True)
class ParamCount:
    total: int
    embedding: int
    nonembedding: int


@dataclass(frozen=True)
class FlopTerms:
    """Forward FLOPs of one sample (a sequence, or an image), term by term."""

    matmul: dict[str, int] = field(default_factory=dict)  # matmuls and convolutions, exact
    other: dict[str, int] = field(default_factory=dict)  # elementwise work, estimated

    @property
    def matmul_total(self) -> int:
        return sum(self.matmul.values())

    @property
    def other_total(self) -> int:
        return sum(self.other.values())

    @property
    def total(self) -> int:
        return self.matmul_total + self.other_total


def require_sizes(cfg: Any, keys: tuple[str, ...], what: str) -> None:
    """Counting needs the data-derived sizes; name the missing ones and how to set them, and
    every other problem of the config."""
    problems = [
        f"model.{key} is None: {what} needs it; set model.{key} or let it come from the data manifest"
        for key in keys
        if getattr(cfg, key) is None
    ]
    problems += cfg.problems()
    if problems:
        raise ConfigError(problems)


def check_convention(convention: str) -> None:
    if convention not in FLOPS_CONVENTIONS:
        raise ConfigError(f"flops_convention={convention!r} is not known; use one of {FLOPS_CONVENTIONS}")


def per_sample_from_matmuls(forward: Callable[[Any], FlopTerms]) -> Callable[[Any, str], float]:
    """Training FLOPs per sample as 3 x the forward matmuls (forward + backward), the same under
    every convention: the conventions differ only in what they leave out of a transformer's
    per-token count, which has no meaning for a per-image count."""

    def flops_per_sample(cfg: Any, convention: str = "6n") -> float:
        check_convention(convention)
        return 3.0 * forward(cfg).matmul_total

    return flops_per_sample


@dataclass(frozen=True)
class Family:
    """One model family. Every field is data or a plain function of a config.

    name            the value of `model.family`, and the Hydra schema `schema/model/NAME`
    config          the config dataclass; its `family` field defaults to `name`
    data_kind       the manifest kind it trains on: "text" or "image"
    data_fields     {model field: manifest attribute} filled from the data manifest
    padded_fields   data fields the model may set larger than the data's (a padded vocabulary)
    sequence_field  the field that holds tokens per sample (seq_len), or None: one image is one sample
    count_params    cfg -> ParamCount, exact (tested against `numel`)
    forward_flops   cfg -> FlopTerms of one sample's forward pass (tested against FlopCounterMode)
    flops_per_sample (cfg, convention) -> training FLOPs per token or image
    ladder          (target, base cfg with data fields, count) -> the ladder's config
    sizes           named sizes, each family has `debug`
    module          "package.module:Class", the torch module, imported by `build`
    default_model   the conf/model file a study of this family starts from
    parametrizations how the family can be parametrized ("sp" today)
    legacy_id_keys  the keys run-id rule 1 hashed (frozen; empty for families born after it)
    describe        cfg -> [(key, value)] rows for `scaling-size`
    """

    name: str
    config: type
    data_kind: str
    data_fields: dict[str, str]
    count_params: Callable[[Any], ParamCount]
    forward_flops: Callable[[Any], FlopTerms]
    flops_per_sample: Callable[[Any, str], float]
    ladder: Callable[[float, Any, str], Any]
    sizes: dict[str, Any]
    module: str
    default_model: str
    padded_fields: tuple[str, ...] = ()
    sequence_field: Optional[str] = None
    parametrizations: tuple[str, ...] = ("sp",)
    legacy_id_keys: tuple[str, ...] = ()
    describe: Optional[Callable[[Any], list[tuple[str, str]]]] = None

    @property
    def unit(self) -> str:
        """What a budget counts: tokens, or images."""
        return "tokens" if self.sequence_field else "images"

    def tokens_per_sample(self, cfg: Any) -> int:
        """Tokens (or images) in one sample: `seq_len` for a sequence model, 1 for an image."""
        if self.sequence_field is None:
            return 1
        value = cfg[self.sequence_field] if isinstance(cfg, dict) else getattr(cfg, self.sequence_field)
        return int(value)

    def problems(self, cfg: Any, prefix: str = "model") -> list[str]:
        """Every reason `cfg` cannot be built: missing data fields, then the config's own checks."""
        out = [
            f"{prefix}.{key} is None: it comes from the data manifest; set data.* or {prefix}.{key}"
            for key in self.data_fields
            if getattr(cfg, key) is None
        ]
        return out + cfg.problems(prefix)

    def build(self, cfg: Any) -> Any:
        """The torch module for `cfg` (imports torch). Checks the config first and raises
        ConfigError listing every problem before any parameter is allocated."""
        problems = self.problems(cfg)
        if problems:
            raise ConfigError(problems)
        module, _, cls = self.module.partition(":")
        return getattr(importlib.import_module(module), cls)(cfg)

    def shape_rows(self, cfg: Any) -> list[tuple[str, str]]:
        """(field, value) rows of a config's shape; a width left as None to mean its default
        (`d_ff` -> `ffn_dim`) is shown resolved."""
        if self.describe is not None:
            return self.describe(cfg)
        rows = []
        for f in fields(cfg):
            value = getattr(cfg, f.name)
            if value is None and f.name == "d_ff" and hasattr(cfg, "ffn_dim"):
                value = cfg.ffn_dim
            if f.name != "family":
                rows.append((f.name, str(value)))
        return rows
