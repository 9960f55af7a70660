"""The CNN family: a ResNet-style image classifier (module: `scaling.models.cnn`).

Parameters: every parameter is non-embedding (`embedding` = 0). Convolutions have no bias (a
norm follows each), every GroupNorm has a weight and a bias, the head has a bias.

FLOPs per image: 2 * multiply-accumulates of the convolutions and the head for one forward
pass, times 3 for forward + backward. Elementwise work is estimated in `other` and not counted
in training FLOPs. Every convention name gives the same count.

Ladder rule (see `scaling.ladder` for how rungs are thinned and picked)
- n_stages = 3 (the CIFAR ResNet layout); any image size works, since each stride-2 stage maps
  a side s to ceil(s / 2).
- Width (channels of stage 0) grows with depth: width / depth = 16 (ResNet-20 has width 16 and
  depth 3; a 16:1 ratio keeps depth growing with width). Candidates have ratios from about 8 to
  32. Width is any integer up to 32, then a multiple of 8.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Optional

from scaling.families.base import (
    NORM_FLOPS_PER_ELEMENT,
    Family,
    FlopTerms,
    MupConfig,
    ParamCount,
    mup_problems,
    per_sample_from_matmuls,
    require_sizes,
)

NAME = "cnn"
LABEL = "CNN"  # in messages
ASPECT = 16  # width / depth
STAGES = 3
IMAGE_FIELDS = {"image_size": "image_size", "in_channels": "in_channels", "n_classes": "n_classes"}


@dataclass
class CNNConfig:
    """A ResNet-style classifier: a stem, `n_stages` stages of `depth` residual blocks each, and a
    linear head. Stage i has `width * 2**i` channels. Image shape and class count left as None
    come from the data manifest."""

    family: str = NAME
    width: int = 16
    depth: int = 1
    n_stages: int = 3
    image_size: Optional[int] = None
    in_channels: Optional[int] = None
    n_classes: Optional[int] = None
    parametrization: str = "sp"  # sp | mup: width = stage-0 channels, depth = blocks per stage
    mup: MupConfig = field(default_factory=MupConfig)

    def problems(self, prefix: str = "model") -> list[str]:
        out = []
        if self.family != NAME:
            out.append(f"{prefix}.family={self.family!r} in a {NAME} config; use family={NAME} or another model config")
        for key in ("width", "depth", "n_stages", "image_size", "in_channels", "n_classes"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                out.append(f"{prefix}.{key}={value} must be positive; pick a value >= 1")
        return out + mup_problems(self, self.width, self.depth, prefix)


def cnn_blocks(cfg: CNNConfig) -> list[tuple[int, int, int, bool]]:
    """(c_in, c_out, stride, has a projection shortcut) for every residual block, in order. The
    module builds its blocks from this list, so the count and the module cannot drift apart."""
    blocks = []
    c_in = cfg.width
    for stage in range(cfg.n_stages):
        c_out = cfg.width * 2**stage
        for i in range(cfg.depth):
            stride = 2 if (stage > 0 and i == 0) else 1
            blocks.append((c_in, c_out, stride, stride != 1 or c_in != c_out))
            c_in = c_out
    return blocks


def _params(cfg: CNNConfig) -> int:
    total = 9 * cfg.in_channels * cfg.width + 2 * cfg.width  # stem conv (no bias) and its norm
    for c_in, c_out, _, proj in cnn_blocks(cfg):
        total += 9 * c_in * c_out + 9 * c_out * c_out + 2 * (2 * c_out)  # two convs, two norms
        if proj:
            total += c_in * c_out + 2 * c_out  # 1x1 conv and its norm
    c_last = cfg.width * 2 ** (cfg.n_stages - 1)
    return total + c_last * cfg.n_classes + cfg.n_classes  # head, with bias


def count_params(cfg: CNNConfig) -> ParamCount:
    require_sizes(cfg, ("in_channels", "n_classes"), "counting CNN parameters")
    total = _params(cfg)
    return ParamCount(total=total, embedding=0, nonembedding=total)


def forward_flops(cfg: CNNConfig) -> FlopTerms:
    require_sizes(cfg, ("image_size", "in_channels", "n_classes"), "counting CNN FLOPs")
    s = cfg.image_size  # side of the current feature map; a 3x3/pad 1 or 1x1 conv at stride 2 gives ceil(s/2)
    w = cfg.width
    matmul = {"stem_conv": 2 * 9 * cfg.in_channels * w * s * s, "block_convs": 0, "shortcut_convs": 0}
    norm = relu = residual = 0
    norm += w * s * s
    relu += w * s * s
    for c_in, c_out, stride, proj in cnn_blocks(cfg):
        s = (s + 1) // 2 if stride == 2 else s
        elements = c_out * s * s  # one output map of this block
        matmul["block_convs"] += 2 * 9 * c_in * c_out * s * s + 2 * 9 * c_out * c_out * s * s
        norm += 2 * elements
        relu += 2 * elements
        residual += elements
        if proj:
            matmul["shortcut_convs"] += 2 * c_in * c_out * s * s
            norm += elements
    c_last = w * 2 ** (cfg.n_stages - 1)
    matmul["head"] = 2 * c_last * cfg.n_classes
    other = {
        "norm": NORM_FLOPS_PER_ELEMENT * norm,
        "relu": relu,
        "residual": residual,
        "pool": c_last * s * s,
        "head_bias": cfg.n_classes,
    }
    return FlopTerms(matmul=matmul, other=other)


@lru_cache(maxsize=64)
def _rungs(in_channels: int, n_classes: int) -> tuple[list[int], list[tuple]]:
    from scaling.ladder import thin_to_rungs

    widths = list(range(1, 32)) + list(range(32, 2048 + 1, 8))
    candidates = []
    for w in widths:
        for depth in range(max(1, w // (2 * ASPECT)), max(1, -(-2 * w // ASPECT)) + 1):
            n = _params(CNNConfig(width=w, depth=depth, n_stages=STAGES, in_channels=in_channels, n_classes=n_classes))
            candidates.append((n, abs(math.log(w / depth / ASPECT)), (w, depth)))
    return thin_to_rungs(candidates)


def ladder(target: float, base: CNNConfig, count: str = "nonembedding", rule: int = 2) -> CNNConfig:
    """The ladder's CNN for `target` parameters (rules in the module docstring; a CNN has no
    embeddings, so `count` does not matter, and one version of its rule, so neither does `rule`). `base` carries the image shape and class count."""
    from scaling.ladder import check_sizes, pick_rung

    check_sizes(LABEL, tuple((k, getattr(base, k)) for k in IMAGE_FIELDS))
    counts, shapes = _rungs(base.in_channels, base.n_classes)
    width, depth = shapes[pick_rung(counts, target, LABEL, "pick a target inside the range")]
    return replace(base, width=width, depth=depth, n_stages=STAGES)


SIZES = {
    "debug": CNNConfig(width=8, depth=1, n_stages=2),
    "small": CNNConfig(width=16, depth=1, n_stages=3),
    "resnet20": CNNConfig(width=16, depth=3, n_stages=3),  # He et al.'s CIFAR ResNet-20
    "resnet56": CNNConfig(width=16, depth=9, n_stages=3),
    "wide": CNNConfig(width=64, depth=2, n_stages=3),
}

# The keys run-id rule 1 hashed for this family, frozen so that later keys never move old ids.
LEGACY_ID_KEYS = ("model.family", "model.width", "model.depth", "model.n_stages", "model.image_size",
                  "model.in_channels", "model.n_classes")  # fmt: skip

FAMILY = Family(
    name=NAME,
    config=CNNConfig,
    data_kind="image",
    data_fields=IMAGE_FIELDS,
    count_params=count_params,
    forward_flops=forward_flops,
    flops_per_sample=per_sample_from_matmuls(forward_flops),
    ladder=ladder,
    sizes=SIZES,
    module="scaling.models.cnn:CNN",
    default_model="cnn_debug",
    legacy_id_keys=LEGACY_ID_KEYS,
    width_field="width",
    depth_field="depth",
    input_params=("stem.0.",),
    output_params=("head.",),
)
