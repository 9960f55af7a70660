"""Parameter and FLOP counts from a model config alone: no model is built and torch is not
imported, so the planner can size a sweep on a login node.

Each family's formulas live in its module under `scaling/families/` (with the formulas in its
docstring); this module is the entry point that asks the registry. Every count mirrors the
family's module exactly: tests check parameter counts against `sum(p.numel())` and the matmul
and convolution FLOPs against torch's FlopCounterMode.

    count_params(cfg)             ParamCount(total, embedding, nonembedding)
    forward_flops(cfg)            FlopTerms of one sample's forward pass: `matmul` terms (exact,
                                  2 FLOPs per multiply-accumulate) and `other` (elementwise work,
                                  estimated)
    flops_per_sample(cfg, conv)   training FLOPs (forward + backward) per token or per image
                                  under a named convention (kaplan, 6n, chinchilla; see
                                  `scaling.families.gpt` for what each counts)
"""

from __future__ import annotations

from typing import Any

from scaling.families import family_of
from scaling.families.base import (
    FLOPS_CONVENTIONS,
    GELU_FLOPS_PER_ELEMENT,
    NORM_FLOPS_PER_ELEMENT,
    SOFTMAX_FLOPS_PER_ELEMENT,
    FlopTerms,
    ParamCount,
    check_convention,
)
from scaling.families.gpt import flops_per_token

__all__ = [
    "FLOPS_CONVENTIONS", "GELU_FLOPS_PER_ELEMENT", "NORM_FLOPS_PER_ELEMENT", "SOFTMAX_FLOPS_PER_ELEMENT",
    "FlopTerms", "ParamCount", "count_params", "flops_per_sample", "flops_per_token", "forward_flops",
]  # fmt: skip


def count_params(cfg: Any) -> ParamCount:
    """Parameters of the module the family would build for `cfg`, counted from the config."""
    return family_of(cfg).count_params(cfg)


def forward_flops(cfg: Any) -> FlopTerms:
    """Forward FLOPs of one sample (a whole sequence, or one image), by term."""
    return family_of(cfg).forward_flops(cfg)


def flops_per_sample(cfg: Any, convention: str = "6n") -> float:
    """Training FLOPs (forward + backward) per sample: per token for a sequence model, per image
    for an image model. Training compute = this * tokens (or images) seen."""
    check_convention(convention)
    return family_of(cfg).flops_per_sample(cfg, convention)
