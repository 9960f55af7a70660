"""Named warnings about a fit, and the one check that is an error (too few points).

A diagnostic never stops a fit: it travels with the result, is printed by the CLI and written
to ``fit.json`` under its ``code``. Codes:

- ``narrow_span_N`` / ``narrow_span_D`` / ``narrow_span_C``: the column spans less than one
  decade, so the exponent for it is poorly determined.
- ``grid_edge``: the best start lies on the edge of the grid and the optimum at or beyond it,
  or the optimum otherwise falls outside the box the grid spans; widen the grid.
- ``param_at_bound``: a parameter sits at the optimiser's bound.
- ``tied_outside_bounds``: a tied parameter's value falls outside the law's own bounds.
- ``not_converged``: the best start stopped on the iteration limit, not on a tolerance.
- ``poor_fit``: the law explains less than ``POOR_FIT_R2`` of the variance of log loss.
- ``wide_interval``: a bootstrap interval is wider than the estimate itself.
- ``bootstrap_not_converged``: some bootstrap resamples did not converge.

Too few points is :class:`analysis.errors.TooFewPointsError`, raised before fitting.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from analysis.errors import DataError, TooFewPointsError

# R^2 of log loss below which a fit is flagged. Scaling fits explain nearly all the variance:
# Epoch's Chinchilla reproduction (Figure 4, 5 worst runs dropped) reaches 0.995, all 245 runs
# 0.96, and a Chinchilla law on an 8 x 8 grid of N and D with 5% noise per run (five times the
# scatter of Chinchilla's own runs about their fit) still 0.94. Below 0.9 a tenth of the spread is unexplained: a loss in the wrong
# units, diverged runs, or a law that does not suit the data, so its exponents and
# extrapolations should not be used.
POOR_FIT_R2 = 0.9


@dataclass(frozen=True)
class Diagnostic:
    """One named finding: ``code`` is stable for programs, ``message`` is for people."""

    code: str
    message: str

    def to_json(self) -> dict:
        return {"code": self.code, "message": self.message}


def require_points(
    n_points: int, n_free: int, law: str, free: tuple[str, ...] = (), constrained: str | None = None
) -> None:
    """Raise unless there are more points than free parameters (at least one residual dof).

    Fixed and tied parameters are not estimated, so they do not count: Chinchilla's law with
    beta tied to alpha has 4 free parameters and fits 5 runs.
    """
    needed = n_free + 1
    if n_points < needed:
        names = f" ({', '.join(free)})" if free else ""
        which = f"law {law} with {constrained}" if constrained else f"law {law}"
        raise TooFewPointsError(
            f"{which} has {n_free} free parameters{names} and needs at least {needed} runs to "
            f"fit (free parameters + 1); got {n_points}. Add runs, or fix or tie parameters to "
            f"leave fewer free (e.g. a known loss floor, or two exponents tied)."
        )


def require_distinct(values: np.ndarray, column: str, law: str) -> None:
    """Raise when a column the law depends on takes a single value (e.g. one model size)."""
    distinct = np.unique(values)
    if distinct.size < 2:
        raise DataError(
            f"{column} takes a single value ({distinct[0]:.4g}) across all {values.size} runs; "
            f"law {law} needs several values of {column} (ideally spanning a decade or more)"
        )


def span_diagnostics(columns: dict[str, np.ndarray]) -> list[Diagnostic]:
    """Warn for every input column spanning less than one decade."""
    out = []
    for name, v in columns.items():
        decades = float(np.log10(v.max() / v.min()))
        if decades < 1.0:
            out.append(
                Diagnostic(
                    f"narrow_span_{name}",
                    f"{name} spans {decades:.2f} decades ({v.min():.3g} to {v.max():.3g}); "
                    f"exponents fitted on less than one decade are unreliable",
                )
            )
    return out


def fit_quality_diagnostics(r2_log: float, rmse_log: float) -> list[Diagnostic]:
    """Warn when R^2 of log loss is below :data:`POOR_FIT_R2` (NaN, all losses equal, passes)."""
    if not r2_log < POOR_FIT_R2:
        return []
    return [
        Diagnostic(
            "poor_fit",
            f"R^2(log loss)={r2_log:.3g} < {POOR_FIT_R2} (RMSE of log loss {rmse_log:.3g}): the "
            f"law explains little of the spread in loss; check the loss column's units, drop "
            f"diverged runs, or fit another law",
        )
    ]


def interval_diagnostics(
    estimates: dict[str, float], intervals: dict[str, tuple[float, float]]
) -> list[Diagnostic]:
    """Warn for every quantity whose bootstrap interval is wider than its estimate."""
    out = []
    for name, (lo, hi) in intervals.items():
        est = estimates.get(name)
        if est is None or not np.isfinite(est):
            continue
        if hi - lo > abs(est):
            out.append(
                Diagnostic(
                    "wide_interval",
                    f"{name}: interval [{lo:.4g}, {hi:.4g}] is wider than the estimate "
                    f"{est:.4g}; the data do not pin it down",
                )
            )
    return out
