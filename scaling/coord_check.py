"""The coordinate check of muP (Yang et al. 2022, "Tensor Programs V", section D.1): train a few
steps at several widths (or depths) and record the RMS of every layer's output at each step.
Under a parametrization that transfers, the RMS after a few steps is flat in width; under the
standard parametrization with one LR for all widths, the output logits and the hidden
activations' updates grow with width.

    records = coord_check(family_name, shapes, steps=4, lr=1e-2)
    slope(records, "logits", step=3, by="width")     # d log RMS / d log width

The models train with the family's own AdamW groups (`Family.param_groups`, the trainer's),
in a plain loop on random inputs: the check is about the parametrization, not the data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from scaling.families import family_of
from scaling.models import build_model


@dataclass(frozen=True)
class Record:
    width: int
    depth: int
    step: int  # 0: at initialisation, before any update
    layer: str  # "block.i" (a block's output), "block.last" (the last block's), "logits"
    rms: float


def _batch(cfg: Any, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    family = family_of(cfg)
    if family.sequence_field is not None:
        x = torch.randint(0, cfg.vocab_size, (batch, cfg.seq_len + 1), generator=generator)
        return x[:, :-1], x[:, 1:]
    x = torch.randn(batch, cfg.in_channels, cfg.image_size, cfg.image_size, generator=generator)
    return x, torch.randint(0, cfg.n_classes, (batch,), generator=generator)


def coord_check(shapes: list[Any], steps: int = 4, lr: float = 1e-2, batch: int = 8, seed: int = 0,
                weight_decay: float = 0.0) -> list[Record]:  # fmt: skip
    """Train each config in `shapes` for `steps` Adam steps on one fixed random batch and record
    the RMS of each block's output and of the logits, at initialisation and after every step."""
    out: list[Record] = []
    for cfg in shapes:
        family = family_of(cfg)
        width, depth = getattr(cfg, family.width_field), getattr(cfg, family.depth_field)
        torch.manual_seed(seed)
        model = build_model(cfg)
        optimizer = torch.optim.AdamW(family.param_groups(model, cfg, lr, weight_decay), lr=lr)
        x, y = _batch(cfg, batch, torch.Generator().manual_seed(seed))
        seen: dict[str, float] = {}
        hooks = [
            block.register_forward_hook(lambda _m, _i, o, name=f"block.{i}": seen.__setitem__(name, _rms(o)))
            for i, block in enumerate(model.blocks)
        ]  # fmt: skip
        for step in range(steps + 1):
            logits = model(x)
            seen["block.last"] = seen[f"block.{len(model.blocks) - 1}"]  # the residual stream's end, at any depth
            seen["logits"] = _rms(logits)
            out += [Record(width, depth, step, layer, rms) for layer, rms in seen.items()]
            if step == steps:
                break
            loss = F.cross_entropy(logits.flatten(0, -2).float(), y.flatten())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        for h in hooks:
            h.remove()
    return out


def _rms(t: torch.Tensor) -> float:
    return t.detach().float().pow(2).mean().sqrt().item()


def slope(records: list[Record], layer: str, step: int, by: str = "width") -> float:
    """Least-squares slope of log RMS against log width (or depth) for one layer at one step."""
    pts = [(math.log(getattr(r, by)), math.log(r.rms)) for r in records if r.layer == layer and r.step == step]
    n = len(pts)
    mx, my = sum(p[0] for p in pts) / n, sum(p[1] for p in pts) / n
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx


def layers(records: list[Record]) -> list[str]:
    return list(dict.fromkeys(r.layer for r in records))


