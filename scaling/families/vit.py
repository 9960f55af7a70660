"""The ViT family: a Vision Transformer classifier (Dosovitskiy et al. 2021; module:
`scaling.models.vit`).

    x (B, C, H, W) -> patch embedding: a p x p convolution at stride p (a linear map of each
                      patch), with bias                             (B, P, d), P = (H / p)^2
                   -> [class token] + learned position embedding   (B, T, d), T = P (+ 1)
                   -> n_layers pre-norm blocks, the GPT's blocks with attention not masked
                   -> ln_f -> the class token's vector, or the mean over tokens -> linear head

Parameters, with d = d_model, f = ffn_dim, L = n_layers, C = in_channels, K = n_classes:
    patch embedding  C p^2 d + d
    blocks           L (4 d^2 + 2 d f + 9 d + f)      (as the GPT's)
    ln_f, head       2 d + d K + K
    embedding        T d (position) + d (class token, with pool=cls)
As in Kaplan's N for the GPT, the position table and the class token are *embedding*; the patch
projection is a learned linear map of the input and counts as non-embedding.

FLOPs per image: 2 * multiply-accumulates of the patch projection, the blocks over T tokens
(attention over the full T x T square) and the head, times 3 for forward + backward, the same
under every convention, as for the CNN.

Ladder rule (see `scaling.ladder` for how rungs are thinned and picked)
- Aspect ratio d_model / n_layers = 32, as ViT-S (384 / 12); candidates from 16 to 64.
- Heads of 64 from d_model 256 up, fewer below, as the GPT's rule (`scaling.families.gpt.heads`).
- d_ff = 4 d_model; the patch size and pooling are the study's base model's.
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
from scaling.families.cnn import IMAGE_FIELDS
from scaling.families.gpt import HEAD_DIM, block_flops, heads, layer_params

NAME = "vit"
LABEL = "ViT"  # in messages
ASPECT = 32  # d_model / n_layers
POOLS = ("cls", "mean")


@dataclass
class ViTConfig:
    """A Vision Transformer. Image shape and class count left as None come from the data manifest."""

    family: str = NAME
    n_layers: int = 2
    d_model: int = 64
    n_heads: int = 2
    d_ff: Optional[int] = None  # None means 4 * d_model
    patch_size: int = 4  # side of a square patch, in pixels; must divide image_size
    pool: str = "cls"  # cls: a class token's final vector; mean: the mean over all tokens
    image_size: Optional[int] = None
    in_channels: Optional[int] = None
    n_classes: Optional[int] = None
    parametrization: str = "sp"  # sp | mup (as the GPT's)
    mup: MupConfig = field(default_factory=MupConfig)

    @property
    def ffn_dim(self) -> int:
        return self.d_ff if self.d_ff is not None else 4 * self.d_model

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def n_tokens(self) -> int:
        return self.n_patches + (1 if self.pool == "cls" else 0)

    def problems(self, prefix: str = "model") -> list[str]:
        out = []
        if self.family != NAME:
            out.append(f"{prefix}.family={self.family!r} in a {NAME} config; use family={NAME} or another model config")
        for key in ("n_layers", "d_model", "n_heads", "d_ff", "patch_size", "image_size", "in_channels", "n_classes"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                out.append(f"{prefix}.{key}={value} must be positive; pick a value >= 1")
        if self.d_model > 0 and self.n_heads > 0 and self.d_model % self.n_heads:
            out.append(f"{prefix}.d_model={self.d_model} is not divisible by {prefix}.n_heads={self.n_heads}; "
                       f"pick d_model as a multiple of n_heads")
        if self.pool not in POOLS:
            out.append(f"{prefix}.pool={self.pool!r}; use one of {POOLS}")
        if self.image_size and self.patch_size and self.patch_size > 0 and self.image_size % self.patch_size:
            divisors = [p for p in range(1, self.image_size + 1) if self.image_size % p == 0]
            out.append(f"{prefix}.patch_size={self.patch_size} does not divide {prefix}.image_size={self.image_size}; "
                       f"pick one of {divisors}")
        return out + mup_problems(self, self.d_model, self.n_layers, prefix)


def count_params(cfg: ViTConfig) -> ParamCount:
    require_sizes(cfg, ("image_size", "in_channels", "n_classes"), "counting ViT parameters")
    d, p = cfg.d_model, cfg.patch_size
    embedding = cfg.n_tokens * d + (d if cfg.pool == "cls" else 0)  # position table, class token
    nonembedding = (
        cfg.in_channels * p * p * d + d  # patch projection, with bias
        + cfg.n_layers * layer_params(d, cfg.ffn_dim)
        + 2 * d  # ln_f
        + d * cfg.n_classes + cfg.n_classes  # head, with bias
    )  # fmt: skip
    return ParamCount(total=embedding + nonembedding, embedding=embedding, nonembedding=nonembedding)


def forward_flops(cfg: ViTConfig) -> FlopTerms:
    require_sizes(cfg, ("image_size", "in_channels", "n_classes"), "counting ViT FLOPs")
    d, p, P, T = cfg.d_model, cfg.patch_size, cfg.n_patches, cfg.n_tokens
    blocks, other_blocks = block_flops(cfg.n_layers, T, d, cfg.ffn_dim, cfg.n_heads)
    matmul = {"patch_embed": 2 * P * cfg.in_channels * p * p * d, **blocks, "head": 2 * d * cfg.n_classes}
    other = {
        "patch_bias": P * d,
        "position_add": T * d,
        **other_blocks,
        "pool": T * d if cfg.pool == "mean" else 0,
        "head_bias": cfg.n_classes,
    }
    other["layernorm"] += NORM_FLOPS_PER_ELEMENT * T * d  # ln_f
    return FlopTerms(matmul=matmul, other=other)


@lru_cache(maxsize=64)
def _rungs(image_size: int, patch_size: int, pool: str, in_channels: int, n_classes: int,
           count: str) -> tuple[list[int], list[tuple]]:  # fmt: skip
    from scaling.ladder import thin_to_rungs

    big = 4 * HEAD_DIM
    widths = [*range(8, 32, 4), *range(32, big, 8), *range(big, 8192 + 1, HEAD_DIM)]
    candidates = []
    for d in widths:
        for n_layers in range(max(1, d // (2 * ASPECT)), max(1, -(-2 * d // ASPECT)) + 1):
            cfg = ViTConfig(n_layers=n_layers, d_model=d, n_heads=heads(d), patch_size=patch_size, pool=pool,
                            image_size=image_size, in_channels=in_channels, n_classes=n_classes)  # fmt: skip
            counts = count_params(cfg)
            n = counts.total if count == "total" else counts.nonembedding
            candidates.append((n, abs(math.log(d / n_layers / ASPECT)), (n_layers, d)))
    return thin_to_rungs(candidates)


def ladder(target: float, base: ViTConfig, count: str = "nonembedding", rule: int = 2) -> ViTConfig:
    """The ladder's ViT for `target` parameters (rules in the module docstring; one version of the
    rule so far, so `rule` does not matter). `base` carries
    the image shape, class count, patch size and pooling."""
    from scaling.ladder import check_sizes, pick_rung

    check_sizes(LABEL, tuple((k, getattr(base, k)) for k in IMAGE_FIELDS))
    counts, shapes = _rungs(base.image_size, base.patch_size, base.pool, base.in_channels, base.n_classes, count)
    n_layers, d_model = shapes[pick_rung(counts, target, f"{LABEL} ({count})", "pick a target inside the range")]
    return replace(base, n_layers=n_layers, d_model=d_model, n_heads=heads(d_model), d_ff=None)


SIZES = {
    "debug": ViTConfig(n_layers=2, d_model=32, n_heads=2, patch_size=2),
    "tiny": ViTConfig(n_layers=12, d_model=192, n_heads=3),  # ViT-Ti
    "small": ViTConfig(n_layers=12, d_model=384, n_heads=6),  # ViT-S
    "base": ViTConfig(n_layers=12, d_model=768, n_heads=12),  # ViT-B
}

FAMILY = Family(
    name=NAME,
    config=ViTConfig,
    data_kind="image",
    data_fields=IMAGE_FIELDS,
    count_params=count_params,
    forward_flops=forward_flops,
    flops_per_sample=per_sample_from_matmuls(forward_flops),
    ladder=ladder,
    sizes=SIZES,
    module="scaling.models.vit:ViT",
    default_model="vit_debug",
    width_field="d_model",
    depth_field="n_layers",
    head_dim=lambda shape: int(shape["d_model"]) // int(shape["n_heads"]),
    input_params=("patch.", "pos", "cls"),
    output_params=("head.",),
)
