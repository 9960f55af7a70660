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
- ``poor_fit``: the residuals are large against the data's own noise scale, or show
  structure along an input (see :func:`fit_quality_diagnostics`).
- ``lack_of_fit``: where runs repeat a configuration (seeds: the same inputs), the law misses
  the repeats' means by more than their own scatter explains (see :func:`lack_of_fit`).
- ``wide_interval``: a bootstrap interval is wider than the estimate itself.
- ``bootstrap_not_converged``: some bootstrap resamples did not converge.

Too few points is :class:`scaling.analysis.errors.TooFewPointsError`, raised before fitting.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scaling.analysis.errors import DataError, TooFewPointsError

# poor_fit judges the residuals against the data's own noise scale, not R^2: R^2 depends on the
# range of the losses, so a right law on noisy runs over a narrow range scores low and a wrong
# one over a wide range scores high. The noise scale is a robust estimate from differences of
# neighbouring residuals along an input (a smooth misfit cancels there, noise does not).
# Measured: pure noise (0.3-8.5% on an 8 x 8 Chinchilla grid) gives RMSE/noise 0.9-1.2 and a
# robust-spread/noise ratio 0.8-1.4; Chinchilla's Figure 4 (Epoch) 1.8 with its 5 outliers
# dropped and 4.4 with them; a kinked curve fitted by kaplan_n 4.2, with runs-test z -4.8.
POOR_FIT_RMSE_RATIO = 5.0  # RMSE of log loss over the noise scale
POOR_FIT_RUNS_Z = -3.5  # runs test on the residuals' signs along an input
POOR_FIT_SPREAD_RATIO = 2.0  # robust spread of residuals over the noise scale, with few runs
NOISE_FLOOR_LOG = 1e-3  # below 0.1% in loss, structure in the residuals does not matter
# lack_of_fit fires below this p-value of the pure-error F test: a right law with repeated
# runs raises it once in a thousand fits.
LACK_OF_FIT_P = 1e-3


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


def noise_scale(residuals: np.ndarray, key: np.ndarray) -> float:
    """Robust noise scale of log loss: 1.4826 median |r_i+1 - r_i| / sqrt(2), residuals sorted
    by ``key`` (an input). Neighbouring runs share any smooth misfit, so it cancels."""
    r = residuals[np.argsort(key, kind="stable")]
    d = np.diff(r)
    return float(1.4826 * np.median(np.abs(d)) / np.sqrt(2)) if d.size else float("nan")


def runs_z(residuals: np.ndarray, key: np.ndarray) -> float:
    """Wald-Wolfowitz runs test on the signs of the residuals (about their median) sorted by
    ``key``: z < 0 means fewer sign changes than chance, i.e. a misfit that is smooth in it."""
    r = residuals[np.argsort(key, kind="stable")]
    s = np.sign(r - np.median(r))
    s = s[s != 0]
    n1, n2 = int((s > 0).sum()), int((s < 0).sum())
    if n1 < 2 or n2 < 2:
        return float("nan")
    mu = 2 * n1 * n2 / (n1 + n2) + 1
    var = (mu - 1) * (mu - 2) / (n1 + n2 - 1)
    return float((1 + np.count_nonzero(np.diff(s)) - mu) / np.sqrt(var)) if var > 0 else float("nan")


def fit_quality_diagnostics(
    r2_log: float, rmse_log: float, residuals: np.ndarray | None = None,
    inputs: dict[str, np.ndarray] | None = None,
) -> list[Diagnostic]:
    """``poor_fit`` when the residuals of log loss are large against the data's noise scale
    (RMSE over :data:`POOR_FIT_RMSE_RATIO` times it), or show structure along an input (runs
    test z below :data:`POOR_FIT_RUNS_Z` with a robust spread over
    :data:`POOR_FIT_SPREAD_RATIO` times the noise). The noise scale is the largest of
    :func:`noise_scale` along each input, floored at :data:`NOISE_FLOOR_LOG`. Fewer than 8
    points: nothing is judged."""
    if residuals is None or inputs is None or residuals.size < 8 or not np.isfinite(residuals).all():
        return []
    noise = max([noise_scale(residuals, v) for v in inputs.values()] + [NOISE_FLOOR_LOG])
    spread = 1.4826 * float(np.median(np.abs(residuals - np.median(residuals))))
    head = f"R^2(log loss)={r2_log:.3g}, RMSE of log loss {rmse_log:.3g}, noise scale {noise:.2g}"
    if rmse_log > POOR_FIT_RMSE_RATIO * noise:
        return [Diagnostic(
            "poor_fit",
            f"{head}: the residuals are {rmse_log / noise:.1f} times the data's noise scale "
            f"(> {POOR_FIT_RMSE_RATIO:g}); check the loss column's units, drop diverged runs, "
            f"or fit another law")]
    for name, v in inputs.items():
        z = runs_z(residuals, v)
        if z < POOR_FIT_RUNS_Z and spread > POOR_FIT_SPREAD_RATIO * noise:
            return [Diagnostic(
                "poor_fit",
                f"{head}: the residuals have structure along {name} (runs test z={z:.1f}, "
                f"spread {spread / noise:.1f} times the noise scale); the law does not follow "
                f"the data's shape, fit another law")]
    return []


def lack_of_fit(residuals: np.ndarray, inputs: dict[str, np.ndarray], n_params: int) -> list[Diagnostic]:
    """``lack_of_fit`` from the pure-error F test (Draper and Smith, ch. 2), where runs repeat a
    configuration: rows with the same value in every input (the seeds of one run) are repeats.

    Their scatter about their own mean is pure error, SS_pe with sum(n_g - 1) degrees of
    freedom, whatever the law. What the law misses beyond that, SS_res - SS_pe with
    (configurations - n_params) degrees of freedom, is lack of fit. F = (SS_lof / df_lof) /
    (SS_pe / df_pe); the diagnostic fires when F's p-value is below :data:`LACK_OF_FIT_P`. No
    repeats, or no degrees of freedom left for either part: nothing is judged. Unlike
    ``poor_fit``, the noise scale here is measured, not estimated from neighbouring residuals."""
    from scipy import stats

    if not inputs or residuals.size < 3 or not np.isfinite(residuals).all():
        return []
    keys = np.stack([np.asarray(v, dtype=float) for v in inputs.values()], axis=1)
    _, group, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    group = group.reshape(-1)
    means = np.bincount(group, weights=residuals) / counts
    ss_pe = float(np.sum((residuals - means[group]) ** 2))
    df_pe = int(residuals.size - counts.size)
    df_lof = int(counts.size - n_params)
    if df_pe < 1 or df_lof < 1 or ss_pe <= 0:
        return []
    ss_lof = float(np.sum(residuals**2)) - ss_pe
    F = (ss_lof / df_lof) / (ss_pe / df_pe)
    p = float(stats.f.sf(F, df_lof, df_pe))
    if p >= LACK_OF_FIT_P:
        return []
    miss = float(np.sqrt(np.mean(means**2)))
    # What the repeats' scatter alone would leave in the means: s^2 / n_g per configuration.
    expected = float(np.sqrt(ss_pe / df_pe * np.mean(1.0 / counts)))
    return [Diagnostic(
        "lack_of_fit",
        f"{counts.size} configurations with {residuals.size} runs: the law misses their means "
        f"by {miss:.2g} in log loss (RMS), where the repeats' own scatter explains "
        f"{expected:.2g} (F={F:.3g} on {df_lof} and {df_pe} degrees of freedom, p={p:.2g}); "
        f"the form does not describe these runs, and its intervals assume it does")]


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
