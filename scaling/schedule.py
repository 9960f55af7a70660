"""Learning-rate schedules as pure functions of the optimizer step.

Warmup is configured in tokens (train.warmup_tokens) and converted to steps by the trainer, so
changing the batch size does not silently change how much data the warmup covers.
"""

from __future__ import annotations

import math


def lr_factor(
    step: int,
    total_steps: int,
    *,
    schedule: str,
    warmup_steps: int = 0,
    decay_fraction: float = 0.2,
    min_lr_ratio: float = 0.1,
) -> float:
    """Multiplier on the peak LR for the update that follows `step` optimizer steps.

    - warmup: linear from 1/warmup_steps to 1 over the first `warmup_steps` updates;
    - cosine: from 1 down to min_lr_ratio at the last update, cos-shaped;
    - wsd (warmup, stable, decay; Hägele et al. 2024): 1 until the last
      `decay_fraction * total_steps` updates, then linear down to min_lr_ratio;
    - constant: 1 after warmup.
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
        decay_steps = max(int(round(decay_fraction * total_steps)), 0)
        decay_start = total_steps - decay_steps
        if decay_steps == 0 or step < decay_start:
            return 1.0
        progress = min((step - decay_start + 1) / decay_steps, 1.0)
        return 1.0 - (1 - min_lr_ratio) * progress
    raise ValueError(f"train.schedule={schedule!r}; use cosine, wsd or constant")
