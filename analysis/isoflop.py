"""Chinchilla's approaches 1 and 2: IsoFLOP profiles and the training-curve envelope.

Approach 2 (IsoFLOP profiles): group runs by compute budget, fit a parabola of loss against
ln N within each budget, and take its minimum as (N_opt, L_min) for that budget, with
D_opt = C / (6 N_opt). Then fit ``N_opt = k_N C^a`` and ``D_opt = k_D C^b`` across budgets
by least squares in log-log. Intervals come from a bootstrap that resamples runs within each
budget and repeats the whole procedure.

Approach 1 (envelope): for many FLOP values, take the lowest training loss any run reached
at that compute. The envelope gives L(C) and the N that attains it, hence N_opt ~ C^a.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from analysis.data import Data
from analysis.diagnostics import Diagnostic
from analysis.errors import AnalysisError, DataError


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

    @property
    def n_runs(self) -> int:
        return len(self.run_ids)


@dataclass(frozen=True, eq=False)
class IsoFLOPResult:
    """IsoFLOP profiles and the exponents of ``N_opt ~ C^a``, ``D_opt ~ C^b``.

    ``a``/``b`` are least-squares slopes over the profiles used (usable and interior);
    ``*_interval`` are bootstrap percentile intervals at ``level`` and ``*_stderr`` the
    bootstrap standard deviations (NaN when fewer than 3 budgets are usable).
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

    def N_opt(self, C) -> np.ndarray:
        """Fitted compute-optimal parameters [count] at compute C [FLOPs]."""
        return np.exp(self.log_k_N + self.a * np.log(np.asarray(C, dtype=float)))

    def D_opt(self, C) -> np.ndarray:
        """Fitted compute-optimal tokens [count] at compute C [FLOPs]."""
        return np.exp(self.log_k_D + self.b * np.log(np.asarray(C, dtype=float)))

    def band(self, C, which: str = "N") -> tuple[np.ndarray, np.ndarray]:
        """Percentile band at ``level`` for N_opt(C) or D_opt(C) from the bootstrap draws."""
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


def isoflop_profiles(
    data: Data,
    tolerance: float = 0.25,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    min_runs: int = 3,
) -> IsoFLOPResult:
    """IsoFLOP analysis (Chinchilla's approach 2). See the module docstring.

    tolerance: relative width of a compute-budget group (used when runs carry no
    ``budget``). n_boot: bootstrap resamples for the exponents' intervals (0 to skip).
    Budgets with fewer than ``min_runs`` model sizes are reported but not used.
    """
    groups = group_budgets(data, tolerance)
    rng = np.random.default_rng(seed)
    profiles, diags = [], []
    boot_lnN, boot_lnC = [], []
    for g in groups:
        budget_vals = data.budget[g]
        budget = float(budget_vals[0]) if np.isfinite(budget_vals).all() else float(
            np.exp(np.log(data.C[g]).mean()))
        lnN, loss = np.log(data.N[g]), data.loss[g]
        n_sizes = np.unique(data.N[g]).size
        coef = _parabola(lnN, loss)[0] if n_sizes >= 3 else np.full(3, np.nan)
        usable = bool(n_sizes >= min_runs and np.isfinite(coef).all() and coef[0] > 0)
        if usable:
            x_star = -coef[1] / (2 * coef[0])
            L_min = coef[2] - coef[1] ** 2 / (4 * coef[0])
            interior = bool(lnN.min() <= x_star <= lnN.max())
        else:
            x_star, L_min, interior = np.nan, np.nan, False
        N_opt = float(np.exp(x_star))
        profiles.append(IsoFLOPProfile(
            budget=budget, run_ids=tuple(data.run_id[i] for i in g), N=data.N[g], loss=loss,
            coeffs=tuple(float(c) for c in coef), N_opt=N_opt, D_opt=budget / (6 * N_opt),
            L_min=float(L_min), interior=interior, usable=usable,
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
                f"sizes tried ({data.N[g].min():.3g} to {data.N[g].max():.3g}); add sizes "
                f"beyond it. This budget is left out of the exponent fit",
            ))
            continue
        if n_boot:
            counts = rng.multinomial(len(g), np.full(len(g), 1.0 / len(g)), size=n_boot)
            c = _parabola(lnN, loss, counts.astype(float))
            with np.errstate(all="ignore"):
                xs = np.where(c[:, 0] > 0, -c[:, 1] / (2 * c[:, 0]), np.nan)
            boot_lnN.append(xs)
        boot_lnC.append(np.log(budget))

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
    a_iv = b_iv = nan2
    if n_boot and len(used) >= 3:
        X = np.broadcast_to(np.array(boot_lnC), (n_boot, len(used)))
        YN = np.stack(boot_lnN, axis=1)
        YD = X - np.log(6.0) - YN
        iN, sN = _line(X, YN)
        iD, sD = _line(X, YD)
        boot_N, boot_D = np.stack([iN, sN], axis=1), np.stack([iD, sD], axis=1)
        q = 100 * (1 - level) / 2
        a_se, b_se = float(np.nanstd(sN, ddof=1)), float(np.nanstd(sD, ddof=1))
        a_iv = (float(np.nanpercentile(sN, q)), float(np.nanpercentile(sN, 100 - q)))
        b_iv = (float(np.nanpercentile(sD, q)), float(np.nanpercentile(sD, 100 - q)))
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
        boot_N=boot_N, boot_D=boot_D,
    )


@dataclass(frozen=True, eq=False)
class EnvelopeResult:
    """Lowest loss across runs at each FLOP count (Chinchilla's approach 1).

    C [FLOPs], loss [nats], N [params] and run_id of the run on the envelope at each C; ``a``
    and ``b`` are least-squares slopes of ln N and ln (C / 6N) against ln C.
    """

    C: np.ndarray
    loss: np.ndarray
    N: np.ndarray
    run_id: tuple[str, ...]
    a: float
    b: float
    log_k_N: float


def training_envelope(curves, n_points: int = 60) -> EnvelopeResult:
    """Envelope of training curves: at each of ``n_points`` log-spaced FLOP values, the
    lowest loss of any run whose curve covers it (interpolated in log-log), and that run's N.

    ``curves``: :class:`analysis.io.Curve` objects (from :func:`analysis.io.load_curves`).
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
    who = np.argmin(losses, axis=0)
    env = losses[who, np.arange(n_points)]
    ok = np.isfinite(env)
    C, L = grid[ok], env[ok]
    N = np.array([curves[i].N for i in who[ok]])
    ids = tuple(curves[i].run_id for i in who[ok])
    kN, a = (float(v[0]) for v in _line(np.log(C)[None], np.log(N)[None]))
    _, b = (float(v[0]) for v in _line(np.log(C)[None], np.log(C / (6 * N))[None]))
    return EnvelopeResult(C=C, loss=L, N=N, run_id=ids, a=a, b=b, log_k_N=kN)
