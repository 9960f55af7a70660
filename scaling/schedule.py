"""Learning-rate schedules as pure functions of the optimizer step.

Warmup is configured in tokens (train.warmup_tokens) and converted to steps by the trainer, so
changing the batch size does not silently change how much data the warmup covers.
"""

from __future__ import annotations

import math

SCHEDULES = ("cosine", "wsd", "constant")
# The shape of WSD's decay, as a function of the decay's progress p in (0, 1] (Hägele et al. 2024
# found 1-sqrt best, and 10-20% of the run enough to match cosine).
DECAY_SHAPES = ("linear", "cosine", "1-sqrt")


def decay_progress(progress: float, shape: str) -> float:
    """How far the decay has gone, from 0 (peak LR) to 1 (the final LR), at progress p in [0, 1]:

        linear: p        cosine: (1 - cos(pi p)) / 2        1-sqrt: sqrt(p)
    """
    if shape == "linear":
        return progress
    if shape == "cosine":
        return 0.5 * (1 - math.cos(math.pi * progress))
    if shape == "1-sqrt":
        return math.sqrt(progress)
    raise ValueError(f"train.decay_shape={shape!r}; use one of {DECAY_SHAPES}")


def wsd_decay_start(total_steps: int, decay_fraction: float) -> int:
    """The first step whose update WSD decays: total_steps - round(decay_fraction * total_steps).
    A cooldown branch forks from its trunk's checkpoint at this step (scaling/trainer/branch.py)."""
    return total_steps - max(int(round(decay_fraction * total_steps)), 0)


def lr_factor(
    step: int,
    total_steps: int,
    *,
    schedule: str,
    warmup_steps: int = 0,
    decay_fraction: float = 0.2,
    min_lr_ratio: float = 0.1,
    decay_shape: str = "linear",
) -> float:
    """Multiplier on the peak LR for the update that follows `step` optimizer steps.

    - warmup: linear from 1/warmup_steps to 1 over the first `warmup_steps` updates;
    - cosine: from 1 down to min_lr_ratio at the last update, cos-shaped;
    - wsd (warmup, stable, decay; Hägele et al. 2024): 1 until the last
      `decay_fraction * total_steps` updates, then down to min_lr_ratio at the last update,
      1 - (1 - min_lr_ratio) * shape(p) with p = (step - decay_start + 1) / decay_steps and
      shape one of DECAY_SHAPES (`decay_shape`, linear by default);
    - constant: 1 after warmup (a WSD trunk: the stable phase that cooldown branches fork from).
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    last = max(total_steps - 1, 1)
    if schedule == "cosine":
        span = max(last - warmup_steps, 1)
        progress = min(max(step - warmup_steps, 0) / span, 1.0)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "wsd":
        decay_start = wsd_decay_start(total_steps, decay_fraction)
        decay_steps = total_steps - decay_start
        if decay_steps == 0 or step < decay_start:
            return 1.0
        progress = min((step - decay_start + 1) / decay_steps, 1.0)
        return 1.0 - (1 - min_lr_ratio) * decay_progress(progress, decay_shape)
    raise ValueError(f"train.schedule={schedule!r}; use one of {SCHEDULES}")
