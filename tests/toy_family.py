"""A model family defined outside the package, to show that a family is one module: an MLP on
flattened images. `register_toy()` registers it (`scaling.families.register`) and stores its
schema and a `model=toy_debug` option in Hydra's ConfigStore; nothing in the package is edited.
Importing the module registers nothing, so other tests see only the package's families."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional

import torch
import torch.nn as nn
from hydra.core.config_store import ConfigStore

from scaling.families import register
from scaling.families.base import Family, FlopTerms, ParamCount, per_sample_from_matmuls, require_sizes
from scaling.ladder import check_sizes, pick_rung, thin_to_rungs

NAME = "toy"
IMAGE_FIELDS = {"image_size": "image_size", "in_channels": "in_channels", "n_classes": "n_classes"}


@dataclass
class ToyConfig:
    family: str = NAME
    width: int = 16
    depth: int = 1
    image_size: Optional[int] = None
    in_channels: Optional[int] = None
    n_classes: Optional[int] = None

    def problems(self, prefix: str = "model") -> list[str]:
        return [f"{prefix}.{k}={getattr(self, k)} must be positive" for k in ("width", "depth")
                if getattr(self, k) <= 0]  # fmt: skip


def _dims(cfg: ToyConfig) -> list[tuple[int, int]]:
    d_in = cfg.in_channels * cfg.image_size**2
    return [(d_in, cfg.width)] + [(cfg.width, cfg.width)] * (cfg.depth - 1) + [(cfg.width, cfg.n_classes)]


def count_params(cfg: ToyConfig) -> ParamCount:
    require_sizes(cfg, tuple(IMAGE_FIELDS), "counting toy parameters")
    total = sum(a * b + b for a, b in _dims(cfg))
    return ParamCount(total=total, embedding=0, nonembedding=total)


def forward_flops(cfg: ToyConfig) -> FlopTerms:
    require_sizes(cfg, tuple(IMAGE_FIELDS), "counting toy FLOPs")
    return FlopTerms(matmul={"linear": sum(2 * a * b for a, b in _dims(cfg))})


def ladder(target: float, base: ToyConfig, count: str = "nonembedding", rule: int = 2) -> ToyConfig:
    check_sizes("toy", tuple((k, getattr(base, k)) for k in IMAGE_FIELDS))
    candidates = []
    for width in range(2, 512):
        cfg = replace(base, width=width, depth=1)
        candidates.append((count_params(cfg).total, 0.0, (width,)))
    counts, shapes = thin_to_rungs(candidates)
    (width,) = shapes[pick_rung(counts, target, "toy", "pick a target inside the range")]
    return replace(base, width=width, depth=1)


class ToyMLP(nn.Module):
    def __init__(self, cfg: ToyConfig):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        for i, (a, b) in enumerate(_dims(cfg)):
            layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < cfg.depth else [])
        self.net = nn.Sequential(*layers)
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=1 / math.sqrt(m.in_features))
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, n_classes)


FAMILY = Family(
    name=NAME, config=ToyConfig, data_kind="image", data_fields=IMAGE_FIELDS, count_params=count_params,
    forward_flops=forward_flops, flops_per_sample=per_sample_from_matmuls(forward_flops), ladder=ladder,
    sizes={"debug": ToyConfig(width=8)}, module=f"{__name__}:ToyMLP", default_model="toy_debug",
)  # fmt: skip


def register_toy() -> Family:
    ConfigStore.instance().store(group="schema/model", name=NAME, node=ToyConfig)
    ConfigStore.instance().store(group="model", name="toy_debug", node=ToyConfig(width=8))
    return register(FAMILY, replace=True)
