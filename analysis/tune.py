"""The best learning rate of an LR sweep: the minimum of a parabola in log LR.

A study's tune phase trains its base shape at every LR of a log-spaced grid (one or more seeds
each). The best LR is read off the seed means m_i = mean loss at lr_i by this rule, stated here
because the whole study's LRs follow from it:

1. The discrete minimum i* = argmin m_i must be interior: at the grid's lowest or highest LR the
   true minimum may lie beyond it, and the error says which way to widen the grid.
2. The best LR is the vertex of the parabola m = a + b x + c x^2 in x = log(lr) through the
   minimum and its two neighbours, (x_{i*-1}, x_{i*}, x_{i*+1}). Because m_{i*} lies below both
   neighbours, the parabola opens upwards and its vertex lies between them: the grid brackets the
   minimum, and the vertex interpolates within the bracket, never beyond it. Only the neighbours
   enter because loss against log LR is a parabola only near its minimum: it rises slowly below
   the optimum and steeply (or diverges) above it, so a wider window pulls the vertex towards the
   gentle side. (A sweep of this project's default study showed it: with two neighbours on each
   side the vertex fell at 0.086, below both the grid's best LR, 0.16, and its lower neighbour's
   midpoint; through the three points it is 0.12.)
3. Where a neighbour diverged, the parabola is undefined; the best LR is lr_{i*}, and the
   result says so.

Runs that diverged (a non-finite loss) count as worse than every finite one: they can neither be
the minimum nor enter the parabola. Pure numpy; the launcher and the report both call it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scaling.analysis.errors import AnalysisError

TUNE_DIR = "tune"  # STUDY/tune/: the sweep's runs and plan.json
TUNE_NAME = "tune.json"  # the sweep's record: its losses, the rule's curve and the chosen LR



class TuneError(AnalysisError):
    """An LR sweep whose best LR cannot be read off: too few points, or a minimum on its edge."""


@dataclass(frozen=True)
class TuneResult:
    """The best LR of a sweep, and what it was read from.

    lrs: the grid, ascending; losses: each LR's seed losses; mean: their means (inf where every
    seed diverged); window: the grid indices the parabola fitted; coef: (a, b, c) of
    m = a + b log(lr) + c log(lr)^2; best_lr: the chosen LR; note: how it was chosen."""

    lrs: list[float]
    losses: list[list[float]]
    mean: list[float]
    best_index: int
    window: list[int]
    coef: tuple[float, float, float] | None
    best_lr: float
    predicted_loss: float
    note: str = ""
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "rule": "the vertex of the parabola in log(lr) through the grid's best LR and its two neighbours",
            "lrs": self.lrs, "losses": self.losses,
            "mean": [m if math.isfinite(m) else None for m in self.mean],
            "best_index": self.best_index, "window": self.window,
            "coef": list(self.coef) if self.coef is not None else None,
            "best_lr": self.best_lr, "predicted_loss": self.predicted_loss, "note": self.note, **self.extra,
        }  # fmt: skip


def best_lr(lrs: list[float], losses: list[list[float]], key: str = "lrs") -> TuneResult:
    """The best LR of a sweep by the module's rule. `losses[i]` are the seeds' final losses at
    `lrs[i]` (NaN or inf for a run that diverged). `key` names the grid in error messages."""
    if len(lrs) != len(losses):
        raise TuneError(f"{key}: {len(lrs)} LRs but {len(losses)} lists of losses")
    order = np.argsort(lrs)
    lrs = [float(lrs[i]) for i in order]
    losses = [[float(v) for v in losses[i]] for i in order]
    if len(lrs) < 3:
        raise TuneError(f"{key} has {len(lrs)} LRs; a sweep needs 3 or more to bracket its minimum, e.g. "
                        f"a factor of 2 apart")  # fmt: skip
    if any(not (lr > 0) for lr in lrs) or len(set(lrs)) != len(lrs):
        raise TuneError(f"{key}={lrs} must be distinct positive LRs")
    mean = []
    for vals in losses:
        finite = [v for v in vals if math.isfinite(v)]
        # One diverged seed makes the LR unusable: its mean would hide the instability.
        mean.append(float(np.mean(finite)) if vals and len(finite) == len(vals) else math.inf)
    if not any(math.isfinite(m) for m in mean):
        raise TuneError(f"every run of the sweep diverged; lower the LRs of {key}")
    i = int(np.argmin(mean))
    if i == 0:
        raise TuneError(
            f"the best LR of the sweep, {lrs[0]:.3g}, is the lowest of {key}: the minimum may lie below it; "
            f"add smaller LRs to {key} (e.g. {lrs[0] / 2:.3g} and {lrs[0] / 4:.3g}) and relaunch"
        )
    if i == len(lrs) - 1:
        raise TuneError(
            f"the best LR of the sweep, {lrs[-1]:.3g}, is the highest of {key}: the minimum may lie above it; "
            f"add larger LRs to {key} (e.g. {lrs[-1] * 2:.3g} and {lrs[-1] * 4:.3g}) and relaunch"
        )
    window = [i - 1, i, i + 1]
    coef = None
    if all(math.isfinite(mean[j]) for j in window):
        x = np.log(np.array([lrs[j] for j in window]))
        c2, b, a = np.polyfit(x, np.array([mean[j] for j in window]), 2)  # exact through three points
        coef = (float(a), float(b), float(c2))
        best = math.exp(-b / (2 * c2))  # c2 > 0: the middle point lies below both neighbours
        predicted = float(a + b * math.log(best) + c2 * math.log(best) ** 2)
        note = "the vertex of the parabola through the grid's best LR and its neighbours"
    else:
        window = [i]
        best, predicted = lrs[i], mean[i]
        note = "the grid's best LR (a neighbour diverged, so no parabola)"
    return TuneResult(lrs=lrs, losses=losses, mean=mean, best_index=i, window=window, coef=coef,
                      best_lr=float(f"{best:.4g}"), predicted_loss=predicted, note=note)  # fmt: skip


def write_tune(study_dir: str | Path, result: TuneResult, base_shape: dict, runs: dict[str, float]) -> Path:
    """STUDY/tune/tune.json (atomically): the sweep's base shape, its runs (id -> LR) and `result`."""
    from scaling.analysis.io import write_json_atomic

    path = Path(study_dir) / TUNE_DIR / TUNE_NAME
    write_json_atomic(path, {"base_shape": base_shape, "runs": runs, **result.to_json()})
    return path


def read_tune(study_dir: str | Path) -> dict | None:
    """The tune phase's record (STUDY/tune/tune.json), or None where there is none."""
    try:
        return json.loads((Path(study_dir) / TUNE_DIR / TUNE_NAME).read_text())
    except (OSError, ValueError):
        return None
