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


PARAMETRIZATIONS = ("sp", "mup")
ROLES = ("input", "hidden", "output", "vector")


@dataclass
class MupConfig:
    """The base shape of a muP parametrization: the width and depth the hyperparameters were
    tuned at. Every multiplier is relative to it, so at the base shape muP computes exactly what
    the standard parametrization computes.

    base_width     the family's width (a transformer's d_model, a CNN's stage-0 channels)
    base_depth     the family's depth (a transformer's n_layers, a CNN's blocks per stage)
    depth_alpha    residual branches are multiplied by (base_depth / depth)^alpha; CompleteP's
                   alpha = 1 by default (Dey et al. 2025); 0.5 is Bordelon et al.'s depth-muP
    base_head_dim  a transformer's head dimension at the base shape; None: the model's own, so
                   attention keeps 1/sqrt(d_head). Set it when the head dimension grows with width.
    """

    base_width: Optional[int] = None
    base_depth: Optional[int] = None
    depth_alpha: float = 1.0
    base_head_dim: Optional[int] = None


@dataclass(frozen=True)
class MupScales:
    """The multipliers of one shape relative to its base shape (Yang et al. 2022, "Tensor
    Programs V", table 3, for Adam; depth as in CompleteP). With m = width / base_width and
    r = depth / base_depth:
        hidden matrices    init std x 1/sqrt(m), Adam LR x (1/m) * r^(alpha - 1)
        input weights      (embeddings, patch and stem projections) init and LR unchanged
        output logits      x 1/m (the head's init and LR unchanged)
        vectors            (biases, norm gains) init and LR unchanged
        residual branches  x r^(-alpha)
    Weight decay is AdamW's decoupled decay, lr * lambda per step, with lambda unchanged: a
    hidden matrix's decay per step shrinks with its LR, as in the mup package's MuAdam. Adam's
    epsilon stays 1e-8: at these widths it is orders of magnitude below the gradients' RMS, where
    Everett et al. (2024, "Scaling Exponents Across Parameterizations and Optimizers") found its
    width scaling to matter only once gradients approach it."""

    width_mult: float = 1.0
    depth_mult: float = 1.0
    alpha: float = 1.0

    @property
    def hidden_init(self) -> float:
        return self.width_mult**-0.5

    @property
    def output(self) -> float:
        return 1.0 / self.width_mult

    @property
    def residual(self) -> float:
        return self.depth_mult**-self.alpha

    def lr(self, role: str) -> float:
        if role == "hidden":
            return self.depth_mult ** (self.alpha - 1) / self.width_mult
        return 1.0


def mup_problems(cfg: Any, width: int, depth: int, prefix: str = "model") -> list[str]:
    """The checks every family's config runs on `parametrization` and `mup`."""
    out = []
    if cfg.parametrization not in PARAMETRIZATIONS:
        return [f"{prefix}.parametrization={cfg.parametrization!r}; use one of {PARAMETRIZATIONS}"]
    if cfg.parametrization != "mup":
        return out
    mup = cfg.mup
    for key, value in (("base_width", mup.base_width), ("base_depth", mup.base_depth)):
        if value is None:
            out.append(f"{prefix}.mup.{key} is not set: {prefix}.parametrization=mup needs the base shape the LR was "
                       f"tuned at; set {prefix}.mup.{key}=N")
        elif value <= 0:
            out.append(f"{prefix}.mup.{key}={value} must be positive")
    if mup.base_head_dim is not None and mup.base_head_dim <= 0:
        out.append(f"{prefix}.mup.base_head_dim={mup.base_head_dim} must be positive, or null")
    if not 0 <= mup.depth_alpha <= 1:
        out.append(f"{prefix}.mup.depth_alpha={mup.depth_alpha} must lie in [0, 1] (1: CompleteP, 0.5: depth-muP)")
    return out


def mup_scales(cfg: Any, width: int, depth: int) -> MupScales:
    """The multipliers of `cfg` (identity under `sp`)."""
    if getattr(cfg, "parametrization", "sp") != "mup":
        return MupScales()
    return MupScales(width / cfg.mup.base_width, depth / cfg.mup.base_depth, cfg.mup.depth_alpha)


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
    ladder          (target, base cfg with data fields, count, rule) -> the ladder's config; `rule`
                    selects an earlier version of a family's rule (studies planned with it)
    sizes           named sizes, each family has `debug`
    module          "package.module:Class", the torch module, imported by `build`
    default_model   the conf/model file a study of this family starts from
    parametrizations how the family can be parametrized ("sp" today)
    legacy_id_keys  the keys run-id rule 1 hashed (frozen; empty for families born after it)
    width_field, depth_field  the config fields muP scales against `model.mup.base_width/depth`
    head_dim        {shape field: value} -> the attention head dimension, for muP's
                    `base_head_dim`; None for a family without attention
    input_params, output_params  parameter-name prefixes of the input weights (embeddings, stem)
                    and the output head; every other matrix is hidden, every vector a vector
    describe        cfg -> [(key, value)] rows for `scaling-size`
    """

    name: str
    config: type
    data_kind: str
    data_fields: dict[str, str]
    count_params: Callable[[Any], ParamCount]
    forward_flops: Callable[[Any], FlopTerms]
    flops_per_sample: Callable[[Any, str], float]
    ladder: Callable[..., Any]
    sizes: dict[str, Any]
    module: str
    default_model: str
    padded_fields: tuple[str, ...] = ()
    sequence_field: Optional[str] = None
    parametrizations: tuple[str, ...] = ("sp",)
    legacy_id_keys: tuple[str, ...] = ()
    describe: Optional[Callable[[Any], list[tuple[str, str]]]] = None
    width_field: Optional[str] = None
    depth_field: Optional[str] = None
    head_dim: Optional[Callable[[dict], int]] = None
    input_params: tuple[str, ...] = ()
    output_params: tuple[str, ...] = ()

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

    def mup(self, cfg: Any) -> MupScales:
        """The muP multipliers of `cfg` relative to its base shape (identity under `sp`)."""
        if self.width_field is None:
            return MupScales()
        return mup_scales(cfg, getattr(cfg, self.width_field), getattr(cfg, self.depth_field))

    def role(self, name: str, ndim: int) -> str:
        """A parameter's muP role, from its name and rank: input, output, hidden or vector."""
        if ndim < 2:
            return "vector"
        if name.startswith(self.input_params):
            return "input"
        if name.startswith(self.output_params):
            return "output"
        return "hidden"

    def param_groups(self, model: Any, cfg: Any, lr: Optional[float], weight_decay: float) -> list[dict]:
        """AdamW's parameter groups. Weight decay applies to matrices (linear, conv and embedding
        weights) only, never to biases and norm gains. Under `sp` every group has `lr` (the two
        groups, decayed and not, that checkpoints of earlier versions hold). Under `mup` one group
        per role (input, hidden, output, vector), each with `lr` x its muP multiplier."""
        if getattr(cfg, "parametrization", "sp") != "mup":
            decay, no_decay = [], []
            for p in model.parameters():
                if p.requires_grad:
                    (decay if p.ndim >= 2 else no_decay).append(p)
            groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
            return [g | ({} if lr is None else {"lr": lr}) for g in groups]
        if lr is None:
            raise ValueError("param_groups under mup needs the base lr, to scale each role's")
        scales = self.mup(cfg)
        groups = {role: {"params": [], "weight_decay": 0.0 if role == "vector" else weight_decay,
                         "lr": lr * scales.lr(role)} for role in ROLES}  # fmt: skip
        for name, p in model.named_parameters():
            if p.requires_grad:
                groups[self.role(name, p.ndim)]["params"].append(p)
        return [g for g in groups.values() if g["params"]]

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
