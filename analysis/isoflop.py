"""Chinchilla's approaches 1 and 2: IsoFLOP profiles and the training-curve envelope.

Approach 2 (IsoFLOP profiles): group runs by compute budget, fit a parabola of loss against
ln N within each budget, and take its minimum as (N_opt, L_min) for that budget, with
D_opt = C / (6 N_opt). Then fit ``N_opt = k_N C^a`` and ``D_opt = k_D C^b`` across budgets
by least squares in log-log. With 4 or more budgets, the exponents' intervals are Student-t
intervals of that line, from the minima's own scatter about it (K - 2 degrees of freedom);
with 3, they come from a bootstrap that resamples runs within each budget and repeats the
whole procedure (see :data:`MIN_LINE_BUDGETS` for why). D_opt = C / f(N_opt), with f the study's FLOPs per
token (:class:`scaling.analysis.flops.FlopsPerToken`, read from the runs' C / D), so N_opt and
D_opt are on the compute scale the budgets were planned on; with ``C = 6 N D`` runs that is
``C / (6 N_opt)``.

A parabola describes a profile only near its minimum. Over a grid two decades wide, with the
end sizes far above the optimum, it misfits and its minimum moves with the grid's width. So
each profile is fitted on a *window* around its discrete minimum (see :func:`window_mask`):
the contiguous sizes whose loss lies within a relative ``window`` of the lowest loss, and at
least :data:`MIN_WINDOW_SIZES` of them, then narrowed while the parabola's residuals exceed
twice the noise scale of log loss (pooled over the profiles). The parabola on all sizes is
kept as a cross-check (``N_opt_all``), and the points outside the window are listed as dropped.

Approach 1 (envelope): for many FLOP values, take the lowest training loss any run reached
at that compute. The envelope gives L(C) and the N that attains it, hence N_opt ~ C^a.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from scaling.analysis.data import Data
from scaling.analysis.diagnostics import Diagnostic
from scaling.analysis.errors import AnalysisError, DataError
from scaling.analysis.flops import FlopsPerToken

# Relative loss margin of the default window. Chosen by measurement: on synthetic IsoFLOP
# sets of three Chinchilla laws (two asymmetric), size grids 1.5, 2 and 3 decades wide and
# off-centre, 0.2-1% noise, 4 seeds each, it gave the smallest mean error in the exponent a
# among no window, 0.05, 0.1, 0.2, 0.3, 0.5 and 1.0: mean |error| 0.0074 against 0.0154 with
# no window (worst case 0.029 against 0.041).
DEFAULT_WINDOW = 0.2
# A window keeps at least this many sizes, so a parabola (3 coefficients) leaves residuals.
MIN_WINDOW_SIZES = 4
# From this many budgets up, the exponents' intervals are the t-intervals of the line through
# the budgets' minima, not the bootstrap over runs. Measured on 100 synthetic studies of the
# default study's earlier design (5 budgets x 4-5 sizes, one run each, Chinchilla's law, per-run
# noise of log loss as measured over 4 seeds of that study, 0.1% to 4.8%): the line's 95% interval
# covered the true a 93 times with median width 0.21, the bootstrap 95 times with width 0.78,
# against a spread of the estimate itself of 0.20 (2.5th to 97.5th percentile). Resampling 4
# or 5 runs leaves parabolas through 3 distinct sizes whose vertices scatter far wider than
# the estimate does. With 4 runs per size both cover (95 and 93 times, widths 0.09 and 0.11).
# The line's scatter also holds what the within-budget bootstrap cannot see: minima that sit
# off the line by more than their own noise. With 3 budgets the line has one degree of
# freedom (t = 12.7), and the bootstrap is used.
MIN_LINE_BUDGETS = 4
# Floor of the noise scale of log loss, for noise-free (synthetic) data.
NOISE_FLOOR = 1e-3


@dataclass(frozen=True, eq=False)
class IsoFLOPProfile:
    """One compute budget: ``loss ~ c2 (ln N)^2 + c1 ln N + c0`` over its runs.

    budget [FLOPs]; N_opt [params] and D_opt [tokens] at the parabola's minimum; L_min [nats];
    interior: the minimum lies within the budget's range of N (an edge minimum is an
    extrapolation); usable: at least 3 model sizes and an upward-opening parabola.
    """

    budget: float
    run_ids: tuple[str, ...]
    N: np.ndarray
    loss: np.ndarray
    coeffs: tuple[float, float, float]  # (c2, c1, c0), highest power first as np.polyfit
    N_opt: float
    D_opt: float
    L_min: float
    interior: bool
    usable: bool
    # Points inside the fitting window (all True when the window is off or too few sizes).
    in_window: np.ndarray | None = None
    rmse_log: float = float("nan")  # RMS residual of log loss of the window's parabola
    N_opt_all: float = float("nan")  # cross-check: the minimum of a parabola on all sizes
    N_opt_smooth: float = float("nan")  # cross-check: the minimum of a smoothing spline

    @property
    def n_runs(self) -> int:
        return len(self.run_ids)


@dataclass(frozen=True, eq=False)
class IsoFLOPResult:
    """IsoFLOP profiles and the exponents of ``N_opt ~ C^a``, ``D_opt ~ C^b``.

    ``a``/``b`` are least-squares slopes over the profiles used (usable and interior);
    ``*_interval`` are intervals at ``level`` and ``*_stderr`` standard errors, by
    ``interval_method``: "line" (4 or more budgets: the least-squares line's t-interval and
    standard error) or "bootstrap" (3 budgets: percentile interval and standard deviation of
    the bootstrap over runs); NaN when fewer than 3 budgets are usable.
    ``*_interval_bootstrap`` keep the bootstrap's percentile intervals beside, whichever
    method gives ``*_interval``.
    ``log_k_N``/``log_k_D`` are the intercepts: ``ln N_opt = log_k_N + a ln C``.
    """

    profiles: tuple[IsoFLOPProfile, ...]
    a: float
    b: float
    log_k_N: float
    log_k_D: float
    a_stderr: float
    b_stderr: float
    a_interval: tuple[float, float]
    b_interval: tuple[float, float]
    n_used: int
    tolerance: float
    level: float
    n_boot: int
    diagnostics: tuple[Diagnostic, ...]
    # Bootstrap draws of (log_k_N, a) and (log_k_D, b), for bands on N_opt(C) and D_opt(C).
    boot_N: np.ndarray
    boot_D: np.ndarray
    window: float | None = None  # relative loss margin; None: all sizes
    noise_log: float = float("nan")  # pooled noise scale of log loss across profiles
    # Bootstrap draws of each used profile's L_min (n_boot, n_used), columns in budget order.
    boot_L_min: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    flops: FlopsPerToken = field(default_factory=FlopsPerToken.six_n)  # f(N) giving D_opt = C / f(N_opt)
    interval_method: str = "bootstrap"  # "line" or "bootstrap": what gives *_interval
    a_interval_bootstrap: tuple[float, float] = (float("nan"), float("nan"))
    b_interval_bootstrap: tuple[float, float] = (float("nan"), float("nan"))

    def N_opt(self, C) -> np.ndarray:
        """Fitted compute-optimal parameters [count] at compute C [FLOPs]."""
        return np.exp(self.log_k_N + self.a * np.log(np.asarray(C, dtype=float)))

    def D_opt(self, C) -> np.ndarray:
        """Fitted compute-optimal tokens [count] at compute C [FLOPs]."""
        return np.exp(self.log_k_D + self.b * np.log(np.asarray(C, dtype=float)))

    def band(self, C, which: str = "N") -> tuple[np.ndarray, np.ndarray]:
        """Percentile band at ``level`` for N_opt(C) or D_opt(C) from the draws of the line
        (``boot_N``/``boot_D``: the line's t-distribution or the bootstrap, as the intervals)."""
        draws = self.boot_N if which == "N" else self.boot_D
        lnC = np.log(np.asarray(C, dtype=float))
        ok = np.isfinite(draws).all(axis=1)
        if ok.sum() < 2:
            v = self.N_opt(C) if which == "N" else self.D_opt(C)
            return v, v
        curves = np.exp(draws[ok, :1] + draws[ok, 1:2] * lnC[None, :])
        q = 100 * (1 - self.level) / 2
        return np.percentile(curves, q, axis=0), np.percentile(curves, 100 - q, axis=0)


def group_budgets(data: Data, tolerance: float = 0.25) -> list[np.ndarray]:
    """Indices of runs per compute budget, smallest budget first.

    Runs with a planner-assigned ``budget`` are grouped by it; the others by C, where a group
    holds consecutive runs (in C) within a factor ``1 + tolerance`` of its smallest C.
    """
    if not tolerance > 0:
        raise AnalysisError(f"tolerance={tolerance} must be > 0 (a relative width, e.g. 0.25)")
    key = np.where(np.isfinite(data.budget), data.budget, data.C)
    order = np.argsort(key, kind="stable")
    lk = np.log(key[order])
    groups, start = [], 0
    for i in range(1, len(order) + 1):
        if i == len(order) or lk[i] - lk[start] > np.log1p(tolerance):
            groups.append(order[start:i])
            start = i
    return groups


def _parabola(lnN: np.ndarray, loss: np.ndarray, w: np.ndarray | None = None):
    """Weighted least-squares (c2, c1, c0) for a batch: lnN, loss (n,), w (K, n) or None."""
    # Centre ln N first: raw ln N is about 20, and the normal equations in (ln N)^2 would be
    # too ill-conditioned to solve for a handful of sizes.
    m = lnN.mean()
    u = lnN - m
    X = np.stack([u**2, u, np.ones_like(u)], axis=1)  # (n, 3)
    if w is None:
        w = np.ones((1, lnN.size))
    XtWX = np.einsum("ni,kn,nj->kij", X, w, X)
    XtWy = np.einsum("ni,kn,n->ki", X, w, loss)
    p = np.full((w.shape[0], 3), np.nan)
    with np.errstate(all="ignore"):
        good = np.linalg.cond(XtWX) < 1e12
        if good.any():
            p[good] = np.linalg.solve(XtWX[good], XtWy[good][..., None])[..., 0]
    p2, p1, p0 = p[:, 0], p[:, 1], p[:, 2]
    return np.stack([p2, p1 - 2 * p2 * m, p0 - p1 * m + p2 * m * m], axis=1)


def window_mask(N: np.ndarray, loss: np.ndarray, window: float | None,
                min_sizes: int = MIN_WINDOW_SIZES) -> np.ndarray:
    """Points of one profile inside its window: the contiguous sizes (in ln N) around the size
    with the lowest loss whose loss is within ``ln(1 + window)`` of it in log loss, widened one
    size at a time (the lower-loss neighbour first) until ``min_sizes`` sizes are kept.

    ``window=None`` (or inf) keeps every point; so does a profile with fewer than ``min_sizes``.
    A size with several runs counts by its lowest loss."""
    sizes = np.unique(N)
    if window is None or not np.isfinite(window) or sizes.size <= min_sizes:
        return np.ones(N.size, dtype=bool)
    best = np.array([loss[N == s].min() for s in sizes])
    lo = hi = int(np.argmin(best))
    margin = np.log(best[lo]) + np.log1p(window)
    while lo > 0 and np.log(best[lo - 1]) <= margin:
        lo -= 1
    while hi < sizes.size - 1 and np.log(best[hi + 1]) <= margin:
        hi += 1
    while hi - lo + 1 < min_sizes:
        left = best[lo - 1] if lo > 0 else np.inf
        right = best[hi + 1] if hi < sizes.size - 1 else np.inf
        if left <= right:
            lo -= 1
        else:
            hi += 1
    return (N >= sizes[lo]) & (N <= sizes[hi])


def _vertex(coef: np.ndarray) -> tuple[float, float]:
    """(ln N, loss) at the minimum of a parabola (c2, c1, c0); NaN unless it opens upward."""
    if not (np.isfinite(coef).all() and coef[0] > 0):
        return float("nan"), float("nan")
    return float(-coef[1] / (2 * coef[0])), float(coef[2] - coef[1] ** 2 / (4 * coef[0]))


def _draw_counts(rng, n: int, sizes: np.ndarray, n_boot: int, min_distinct: int = 3):
    """Bootstrap counts (n_boot, n) over a window's n points; a resample left with fewer than
    ``min_distinct`` distinct sizes cannot fit a parabola, so it is redrawn (not fitted)."""
    p = np.full(n, 1.0 / n)
    counts = rng.multinomial(n, p, size=n_boot)
    inv = np.unique(sizes, return_inverse=True)[1]

    def bad(c):
        return np.array([np.unique(inv[row > 0]).size < min_distinct for row in c])

    todo = bad(counts)
    for _ in range(100):
        if not todo.any():
            break
        counts[todo] = rng.multinomial(n, p, size=int(todo.sum()))
        todo[todo] = bad(counts[todo])
    return counts[~todo]


def _line(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares (intercept, slope) of y on x per row, ignoring NaNs; rows are resamples."""
    ok = np.isfinite(y)
    n = ok.sum(axis=1)
    xm = np.where(ok, x, 0.0)
    ym = np.where(ok, y, 0.0)
    with np.errstate(all="ignore"):
        mx = xm.sum(axis=1) / n
        my = ym.sum(axis=1) / n
        dx = np.where(ok, x - mx[:, None], 0.0)
        slope = (dx * (ym - my[:, None])).sum(axis=1) / (dx**2).sum(axis=1)
        intercept = my - slope * mx
    slope[n < 2] = np.nan
    intercept[n < 2] = np.nan
    return intercept, slope


def _line_t(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """The least-squares line of y on x: (intercept, slope), their covariance s^2 (X'X)^-1,
    and its len(x) - 2 degrees of freedom, for Student-t intervals and draws."""
    X = np.stack([np.ones_like(x), x], axis=1)
    coef, ssr = np.linalg.lstsq(X, y, rcond=None)[:2]
    dof = x.size - 2
    s2 = float(ssr[0]) / dof if ssr.size else 0.0
    return coef, s2 * np.linalg.inv(X.T @ X), dof


def _line_interval(x: np.ndarray, y: np.ndarray, level: float) -> tuple[float, tuple[float, float]]:
    """Standard error and ``level`` Student-t interval of the least-squares slope of y on x."""
    from scipy import stats

    coef, cov, dof = _line_t(x, y)
    se = float(np.sqrt(cov[1, 1]))
    half = float(stats.t.ppf(0.5 + level / 2, dof)) * se
    return se, (float(coef[1] - half), float(coef[1] + half))


def _line_draws(x: np.ndarray, y: np.ndarray, n: int, rng) -> np.ndarray:
    """n draws of (intercept, slope) from the least-squares line's sampling distribution: the
    bivariate t with :func:`_line_t`'s center, scale and degrees of freedom."""
    coef, cov, dof = _line_t(x, y)
    z = rng.standard_normal((n, 2)) @ np.linalg.cholesky(cov + 1e-300 * np.eye(2)).T  # s = 0: no spread
    return coef[None, :] + z * np.sqrt(dof / rng.chisquare(dof, n))[:, None]


def isoflop_profiles(
    data: Data,
    tolerance: float = 0.25,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    min_runs: int = 3,
    window: float | None = DEFAULT_WINDOW,
    flops: FlopsPerToken | None = None,
) -> IsoFLOPResult:
    """IsoFLOP analysis (Chinchilla's approach 2). See the module docstring.

    tolerance: relative width of a compute-budget group (used when runs carry no
    ``budget``). n_boot: bootstrap resamples for the exponents' intervals (0 to skip).
    Budgets with fewer than ``min_runs`` model sizes are reported but not used.
    window: relative loss margin of each profile's fitting window (:func:`window_mask`);
    None or 0 fits every size.
    flops: the study's FLOPs per token f(N), for D_opt = C / f(N_opt); default read from the
    data (C / D per run; 6 N when C was derived as 6 N D).
    """
    if window is not None and not window >= 0:
        raise AnalysisError(f"window={window} must be >= 0 (a relative loss margin, e.g. "
                            f"{DEFAULT_WINDOW}; 0 or None fits every size)")
    if window == 0:
        window = None
    groups = group_budgets(data, tolerance)
    flops = FlopsPerToken.from_data(data) if flops is None else flops
    rng = np.random.default_rng(seed)
    profiles, diags = [], []
    boot_lnN, boot_lnC, boot_L = [], [], []
    fits = []  # (g, mask) per used profile, for the bootstrap
    # Noise scale of log loss: the pooled residuals of the profiles' parabolas over the sizes
    # nearest each minimum, where a parabola is a fair description.
    noise = _noise_scale(data, groups)
    for g in groups:
        budget_vals = data.budget[g]
        C_g = data.C[g]
        # The budget as the user gave it: the planner's, or, when the runs' C agree up to
        # rounding (C = 6ND recomputed), the value they most often hold exactly.
        if np.isfinite(budget_vals).all():
            budget = float(budget_vals[0])
        elif np.allclose(C_g, C_g[0], rtol=1e-6, atol=0):
            values, counts = np.unique(C_g, return_counts=True)
            budget = float(values[np.argmax(counts)])
        else:
            budget = float(np.exp(np.log(C_g).mean()))
        N_g, loss = data.N[g], data.loss[g]
        lnN = np.log(N_g)
        n_sizes = np.unique(N_g).size
        mask = window_mask(N_g, loss, window)
        if window is not None:
            mask = _trim_to_noise(lnN, loss, mask, noise)
        if window is not None and n_sizes < MIN_WINDOW_SIZES and n_sizes >= min_runs:
            diags.append(Diagnostic(
                "isoflop_small_window",
                f"budget {budget:.3g} FLOPs: only {n_sizes} sizes, fewer than the "
                f"{MIN_WINDOW_SIZES} a window keeps; all are fitted and the residuals cannot "
                f"be judged"))
        coef = _parabola(lnN[mask], loss[mask])[0] if n_sizes >= 3 else np.full(3, np.nan)
        coef_all = _parabola(lnN, loss)[0] if n_sizes >= 3 else np.full(3, np.nan)
        usable = bool(n_sizes >= min_runs and np.isfinite(coef).all() and coef[0] > 0)
        x_star, L_min = _vertex(coef) if usable else (np.nan, np.nan)
        interior = bool(usable and lnN[mask].min() <= x_star <= lnN[mask].max())
        rmse = float("nan")
        if usable:
            r = np.log(loss[mask]) - np.log(np.polyval(coef, lnN[mask]))
            rmse = float(np.sqrt(np.mean(r**2)))
        N_opt = float(np.exp(x_star))
        profiles.append(IsoFLOPProfile(
            budget=budget, run_ids=tuple(data.run_id[i] for i in g), N=N_g, loss=loss,
            coeffs=tuple(float(c) for c in coef), N_opt=N_opt,
            D_opt=float(budget / flops(N_opt)) if np.isfinite(N_opt) else float("nan"),
            L_min=float(L_min), interior=interior, usable=usable, in_window=mask,
            rmse_log=rmse, N_opt_all=float(np.exp(_vertex(coef_all)[0])),
            N_opt_smooth=_smooth_minimum(N_g, loss),
        ))
        if not usable:
            why = (f"only {n_sizes} model size(s), need {min_runs}" if n_sizes < min_runs
                   else "the parabola opens downward (no minimum)" if np.isfinite(coef).all()
                   else "the sizes are too close together to fit a parabola")
            diags.append(Diagnostic("isoflop_unusable", f"budget {budget:.3g} FLOPs: {why}"))
            continue
        if not interior:
            diags.append(Diagnostic(
                "isoflop_edge_minimum",
                f"budget {budget:.3g} FLOPs: the minimum (N={N_opt:.3g}) lies outside the "
                f"sizes fitted ({N_g[mask].min():.3g} to {N_g[mask].max():.3g}); add sizes "
                f"beyond it. This budget is left out of the exponent fit",
            ))
            continue
        fits.append((g, mask))
        boot_lnC.append(np.log(budget))

    for p in profiles:
        if not (p.usable and p.interior):
            continue
        lowest = float(p.loss[p.in_window].min())
        if np.log(lowest) - np.log(p.L_min) > 2 * noise:
            diags.append(Diagnostic(
                "isoflop_min_below_data",
                f"budget {p.budget:.3g} FLOPs: the parabola's L_min={p.L_min:.4g} lies below "
                f"the lowest loss fitted ({lowest:.4g}) by more than twice the noise scale "
                f"({noise:.2g} in log loss); the parabola misfits this profile. Narrow "
                f"--isoflop-window or add sizes near the minimum"))
        if p.rmse_log > 3 * noise:
            diags.append(Diagnostic(
                "isoflop_large_residuals",
                f"budget {p.budget:.3g} FLOPs: the parabola's residuals (RMS {p.rmse_log:.2g} "
                f"in log loss) are over 3 times the noise scale ({noise:.2g}); a parabola "
                f"does not describe the sizes fitted. Narrow --isoflop-window"))

    for g, mask in fits if n_boot else ():
        lnN, loss = np.log(data.N[g][mask]), data.loss[g][mask]
        counts = _draw_counts(rng, int(mask.sum()), data.N[g][mask], n_boot)
        c = _parabola(lnN, loss, counts.astype(float))
        with np.errstate(all="ignore"):
            xs = np.where(c[:, 0] > 0, -c[:, 1] / (2 * c[:, 0]), np.nan)
            Ls = np.where(c[:, 0] > 0, c[:, 2] - c[:, 1] ** 2 / (4 * c[:, 0]), np.nan)
        pad = np.full(n_boot - xs.size, np.nan)
        boot_lnN.append(np.concatenate([xs, pad]))
        boot_L.append(np.concatenate([Ls, pad]))

    used = [p for p in profiles if p.usable and p.interior]
    if len(used) < 2:
        raise DataError(
            f"IsoFLOP fit needs at least 2 budgets with an interior minimum; found {len(used)} "
            f"among {len(profiles)} budget group(s). Run at least 3 model sizes per budget "
            f"that bracket the optimum, or change tolerance={tolerance}"
        )
    lnC = np.log([p.budget for p in used])
    lnNopt = np.log([p.N_opt for p in used])
    lnDopt = np.log([p.D_opt for p in used])
    kN, a = (float(v[0]) for v in _line(lnC[None], lnNopt[None]))
    kD, b = (float(v[0]) for v in _line(lnC[None], lnDopt[None]))

    nan2 = (float("nan"), float("nan"))
    boot_N = boot_D = np.full((0, 2), np.nan)
    a_se = b_se = float("nan")
    a_iv = b_iv = a_iv_boot = b_iv_boot = nan2
    method = "bootstrap"
    if n_boot and len(used) >= 3:
        X = np.broadcast_to(np.array(boot_lnC), (n_boot, len(used)))
        YN = np.stack(boot_lnN, axis=1)
        with np.errstate(all="ignore"):
            YD = X - np.log(flops(np.exp(YN)))
        iN, sN = _line(X, YN)
        iD, sD = _line(X, YD)
        boot_N, boot_D = np.stack([iN, sN], axis=1), np.stack([iD, sD], axis=1)
        q = 100 * (1 - level) / 2
        a_se, b_se = float(np.nanstd(sN, ddof=1)), float(np.nanstd(sD, ddof=1))
        a_iv = a_iv_boot = (float(np.nanpercentile(sN, q)), float(np.nanpercentile(sN, 100 - q)))
        b_iv = b_iv_boot = (float(np.nanpercentile(sD, q)), float(np.nanpercentile(sD, 100 - q)))
        if len(used) >= MIN_LINE_BUDGETS:
            # The line's own scatter: calibrated where the bootstrap over 4 or 5 runs per
            # budget is not (MIN_LINE_BUDGETS). D_opt's line is drawn through N_opt's, so a
            # draw's D_opt = C / f(N_opt) as in the point estimate.
            method = "line"
            a_se, a_iv = _line_interval(lnC, lnNopt, level)
            b_se, b_iv = _line_interval(lnC, lnDopt, level)
            boot_N = _line_draws(lnC, lnNopt, n_boot, rng)
            YN = boot_N[:, :1] + boot_N[:, 1:] * lnC[None, :]
            with np.errstate(all="ignore"):
                YD = lnC[None, :] - np.log(flops(np.exp(YN)))
            boot_D = np.stack(_line(np.broadcast_to(lnC, YD.shape), YD), axis=1)
    elif n_boot:
        diags.append(Diagnostic(
            "isoflop_no_interval",
            f"only {len(used)} budgets usable; intervals need at least 3",
        ))
    span = float(np.log10(max(p.budget for p in used) / min(p.budget for p in used)))
    if span < 1.0:
        diags.append(Diagnostic(
            "narrow_span_C",
            f"the usable budgets span {span:.2f} decades of compute; exponents fitted on less "
            f"than one decade are unreliable",
        ))
    return IsoFLOPResult(
        profiles=tuple(profiles), a=a, b=b, log_k_N=kN, log_k_D=kD, a_stderr=a_se,
        b_stderr=b_se, a_interval=a_iv, b_interval=b_iv, n_used=len(used),
        tolerance=tolerance, level=level, n_boot=n_boot, diagnostics=tuple(diags),
        boot_N=boot_N, boot_D=boot_D, window=window, noise_log=noise,
        boot_L_min=np.stack(boot_L, axis=1) if boot_L else np.zeros((0, len(used))),
        flops=flops, interval_method=method, a_interval_bootstrap=a_iv_boot,
        b_interval_bootstrap=b_iv_boot,
    )


def _smooth_minimum(N: np.ndarray, loss: np.ndarray) -> float:
    """A non-parametric cross-check of N_opt: the minimum of a smoothing spline of loss in
    ln N over all sizes (smoothing chosen by generalised cross-validation), on a fine grid.
    NaN with fewer than 5 sizes or a minimum at an end of the sizes."""
    from scipy.interpolate import make_smoothing_spline

    sizes = np.unique(N)
    if sizes.size < 5:
        return float("nan")
    x = np.log(sizes)
    y = np.array([loss[N == s].mean() for s in sizes])
    try:
        spline = make_smoothing_spline(x, y)
    except (ValueError, np.linalg.LinAlgError):
        return float("nan")
    grid = np.linspace(x[0], x[-1], 400)
    i = int(np.argmin(spline(grid)))
    return float(np.exp(grid[i])) if 0 < i < grid.size - 1 else float("nan")


def _rms_log_resid(lnN: np.ndarray, loss: np.ndarray) -> float:
    coef = _parabola(lnN, loss)[0]
    with np.errstate(all="ignore"):
        r = np.log(loss) - np.log(np.polyval(coef, lnN))
    return float(np.sqrt(np.mean(r**2))) if np.isfinite(r).all() else float("inf")


def _trim_to_noise(lnN: np.ndarray, loss: np.ndarray, mask: np.ndarray, noise: float,
                   factor: float = 2.0) -> np.ndarray:
    """Narrow a window, dropping the end size with the higher loss, while the parabola's RMS
    residual exceeds ``factor`` times the noise scale and more than MIN_WINDOW_SIZES remain."""
    mask = mask.copy()
    while np.unique(lnN[mask]).size > MIN_WINDOW_SIZES and \
            _rms_log_resid(lnN[mask], loss[mask]) > factor * noise:
        inside = lnN[mask]
        lo, hi = inside.min(), inside.max()
        l_lo, l_hi = loss[mask & (lnN == lo)].min(), loss[mask & (lnN == hi)].min()
        mask &= lnN != (lo if l_lo >= l_hi else hi)
    return mask


def _noise_scale(data: Data, groups) -> float:
    """Pooled RMS residual of log loss of parabolas on the 5 sizes nearest each profile's
    discrete minimum (dof-weighted), floored at :data:`NOISE_FLOOR`."""
    ss, dof = 0.0, 0
    for g in groups:
        N, loss = data.N[g], data.loss[g]
        sizes = np.unique(N)
        if sizes.size < 4:
            continue
        mask = window_mask(N, loss, 0.0, min_sizes=min(5, sizes.size))
        coef = _parabola(np.log(N[mask]), loss[mask])[0]
        if not np.isfinite(coef).all():
            continue
        with np.errstate(all="ignore"):
            r = np.log(loss[mask]) - np.log(np.polyval(coef, np.log(N[mask])))
        if np.isfinite(r).all() and mask.sum() > 3:
            ss += float(np.sum(r**2))
            dof += int(mask.sum()) - 3
    return max(float(np.sqrt(ss / dof)) if dof else 0.0, NOISE_FLOOR)


@dataclass(frozen=True, eq=False)
class EnvelopeResult:
    """Lowest loss across runs at each FLOP count (Chinchilla's approach 1).

    C [FLOPs], loss [nats], N [params] and run_id of the run on the envelope at each C; ``a``
    and ``b`` are least-squares slopes of ln N and ln D against ln C, where D = C / f is the
    tokens the envelope's run had seen (f its own FLOPs per token, flops / tokens, or 6 N
    when its curve has no tokens). ``*_interval``: percentile intervals at ``level`` from a
    bootstrap that resamples runs (curves) and rebuilds the envelope; NaN without one.
    """

    C: np.ndarray
    loss: np.ndarray
    N: np.ndarray
    run_id: tuple[str, ...]
    a: float
    b: float
    log_k_N: float
    a_interval: tuple[float, float] = (float("nan"), float("nan"))
    b_interval: tuple[float, float] = (float("nan"), float("nan"))
    level: float = 0.95
    n_boot: int = 0


def _flops_per_token(c) -> float:
    """A curve's FLOPs per token: the median of flops / tokens where tokens were logged."""
    tokens = np.asarray(getattr(c, "tokens", np.zeros(0)), dtype=float)
    ok = tokens > 0
    if tokens.shape != np.shape(c.flops) or not ok.any():
        return 6.0 * float(c.N)
    return float(np.median(np.asarray(c.flops, dtype=float)[ok] / tokens[ok]))


def _envelope(grid: np.ndarray, losses: np.ndarray, N: np.ndarray, f: np.ndarray):
    """(mask of grid points covered, winner per point, a, b, log_k_N) of one envelope."""
    who = np.argmin(losses, axis=0)
    env = losses[who, np.arange(grid.size)]
    ok = np.isfinite(env)
    lnC = np.log(grid[ok])[None]
    kN, a = (float(v[0]) for v in _line(lnC, np.log(N[who[ok]])[None]))
    _, b = (float(v[0]) for v in _line(lnC, np.log(grid[ok] / f[who[ok]])[None]))
    return ok, who, a, b, kN


def training_envelope(curves, n_points: int = 60, n_boot: int = 0, seed: int = 0,
                      level: float = 0.95) -> EnvelopeResult:
    """Envelope of training curves: at each of ``n_points`` log-spaced FLOP values, the
    lowest loss of any run whose curve covers it (interpolated in log-log), and that run's N.

    ``curves``: :class:`scaling.analysis.io.Curve` objects (from :func:`scaling.analysis.io.load_curves`).
    ``n_boot``: bootstrap resamples of the runs for intervals on a and b (0: none).
    """
    curves = [c for c in curves if len(c.flops) >= 2]
    if len(curves) < 2:
        raise DataError(
            f"the envelope needs training curves from at least 2 runs with 2+ logged points "
            f"each; got {len(curves)}. Check that runs wrote metrics.jsonl with flops and loss"
        )
    lo = min(c.flops.min() for c in curves)
    hi = max(c.flops.max() for c in curves)
    grid = np.geomspace(lo, hi, n_points)
    losses = np.full((len(curves), n_points), np.inf)
    for i, c in enumerate(curves):
        inside = (grid >= c.flops.min()) & (grid <= c.flops.max())
        # A running minimum: the envelope reports the best loss reached by that compute.
        best = np.minimum.accumulate(c.loss)
        losses[i, inside] = np.exp(np.interp(np.log(grid[inside]), np.log(c.flops),
                                             np.log(best)))
    N_all = np.array([float(c.N) for c in curves])
    f_all = np.array([_flops_per_token(c) for c in curves])
    ok, who, a, b, kN = _envelope(grid, losses, N_all, f_all)
    env = losses[who, np.arange(n_points)]
    C, L = grid[ok], env[ok]
    N = N_all[who[ok]]
    ids = tuple(curves[i].run_id for i in who[ok])
    a_iv = b_iv = (float("nan"), float("nan"))
    if n_boot:
        rng = np.random.default_rng(seed)
        draws = []
        for _ in range(n_boot):
            pick = rng.integers(0, len(curves), len(curves))
            if np.unique(N_all[pick]).size < 2:
                continue  # one model size: no slope to measure
            draws.append(_envelope(grid, losses[pick], N_all[pick], f_all[pick])[2:4])
        if len(draws) >= 2:
            d = np.array(draws)
            q = 100 * (1 - level) / 2
            a_iv = (float(np.nanpercentile(d[:, 0], q)), float(np.nanpercentile(d[:, 0], 100 - q)))
            b_iv = (float(np.nanpercentile(d[:, 1], q)), float(np.nanpercentile(d[:, 1], 100 - q)))
    return EnvelopeResult(C=C, loss=L, N=N, run_id=ids, a=a, b=b, log_k_N=kN,
                          a_interval=a_iv, b_interval=b_iv, level=level, n_boot=n_boot)
