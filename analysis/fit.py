"""Fit a scaling law by Huber loss on log residuals, from a grid of L-BFGS starts.

Method (Hoffmann et al. 2022, as replicated by Epoch AI 2024): minimise

    sum_i Huber_delta( log L_i - log L_hat(N_i, D_i; theta) )

with L-BFGS started from every point of a grid, and keep the best optimum. Each law is one
object (:class:`scaling.analysis.laws.Law`, in ``LAWS``) that holds its log form, bounds, start
grid and derived quantities, e.g. for Chinchilla
``log L_hat = LSE(a - alpha log N, b - beta log D, e)`` with ``A = e^a, B = e^b, E = e^e``;
this module reads everything law-specific from that object.

Speed: all starts advance together as rows of one array (:mod:`scaling.analysis.optim`). The default
``screen=True`` first takes a few steps from every start, then keeps the best tenth and runs
those to convergence; ``screen=False`` runs every start to convergence. On Chinchilla's data
both find the optimum that a plain loop of ``scipy.optimize.minimize`` finds
(``bench/fit_speed.py`` checks this), at a small fraction of the time.

Constraints (:mod:`scaling.analysis.constraints`): any parameter can be fixed (``fix={"E": 1.69}``),
tied to others (``tie={"beta": "alpha"}``) or bounded (``bounds={"alpha": (0.05, 1.5)}``). The
optimiser then moves only the free parameters, from the grid reduced to them, and the
bootstrap and every derived quantity use the constrained law.

Public API:
- :func:`fit_law` -> :class:`FitResult`
- :func:`bootstrap` -> :class:`BootstrapResult`
- :func:`compute_optimal` -> dict of N_opt, D_opt, tokens per parameter, loss (+ intervals)
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

import numpy as np
from numpy.typing import ArrayLike

from scaling.analysis.constraints import FIXED, FREE, TIED, Constraints, Reparam, resolve
from scaling.analysis.data import Data
from scaling.analysis.diagnostics import (
    NOISE_FLOOR_LOG,
    Diagnostic,
    fit_quality_diagnostics,
    interval_diagnostics,
    lack_of_fit,
    noise_scale,
    require_distinct,
    require_points,
    span_diagnostics,
)
from scaling.analysis.errors import AnalysisError
from scaling.analysis.flops import FlopsPerToken
from scaling.analysis.flops import allocate as allocate_numeric
from scaling.analysis.forms import huber_value_and_grad
from scaling.analysis.laws import LAWS, Law
from scaling.analysis.optim import minimize_batch

SCREEN_ITERS = 5  # steps every start takes before the screen; enough to rank basins
# The summed Huber objective is small (about 1e-3 on Chinchilla's data), so scipy's default
# stopping rule, a decrease below 2.2e-9 * max(|f|, 1), stops a warm start almost at once.
# Polishing the best start and every bootstrap resample uses tolerances scaled to the problem.
TIGHT = {"ftol": 1e-13, "gtol": 1e-9}


@dataclass(frozen=True, eq=False)
class FitResult:
    """A fitted law. Immutable; ``params`` and ``derived`` are read-only mappings.

    params: public parameters (for chinchilla ``E, A, B, alpha, beta``); theta: the internal
    log-space parameters the optimiser moved; objective: the summed Huber loss at the optimum;
    residuals: ``log L_obs - log L_fit`` per run; rmse_log / r2_log: fit quality on log loss;
    converged: the best start met a stopping tolerance; best_start: the grid point it began
    from, in the free internal parameters; derived: quantities computed from params
    (chinchilla: ``a, b, G``). constraints: what was fixed, tied and bounded; free: the public
    parameters the fit moved (all of them without constraints); params holds every parameter,
    fixed and tied ones included, so the law can be evaluated from it alone.
    """

    law: str
    x: str | None  # the input column of a one-variable law (N, D or C); None for N-D laws
    params: Mapping[str, float]
    theta: tuple[float, ...]
    objective: float
    n_points: int
    delta: float
    converged: bool
    n_starts: int
    n_starts_run: int  # starts run to convergence (all of them unless screened)
    n_starts_converged: int
    best_start: tuple[float, ...]
    best_start_on_edge: bool
    at_bound: tuple[str, ...]
    residuals: np.ndarray
    rmse_log: float
    r2_log: float
    derived: Mapping[str, float]
    diagnostics: tuple[Diagnostic, ...]
    constraints: Constraints = Constraints()
    free: tuple[str, ...] = ()

    @property
    def status(self) -> dict[str, str]:
        """Public name -> "free", "fixed" or "tied"."""
        c = self.constraints
        return {k: FIXED if k in c.fix else TIED if k in c.tie else FREE for k in self.params}

    @property
    def n_free(self) -> int:
        return len(self.free)

    @property
    def has_optimal(self) -> bool:
        """Whether the law has a compute-optimal allocation (a law in N and D)."""
        return get_law(self.law).optimal is not None

    def predict(self, N: ArrayLike | None = None, D: ArrayLike | None = None,
                C: ArrayLike | None = None, U: ArrayLike | None = None) -> np.ndarray:
        """Predicted loss [nats] at the given inputs (N and D for two-variable laws, and U,
        the unique tokens, for the data-constrained law)."""
        law = get_law(self.law)
        if self.x is None:
            extra = {"U": U}
            need = ("N", "D") + law.extra_inputs
            given = {"N": N, "D": D, **extra}
            if any(given[k] is None for k in need):
                raise AnalysisError(f"law {self.law} predicts from {', '.join(need)}; pass "
                                    f"{' and '.join(need)}")
            return law(*(given[k] for k in need), **self.params)
        value = {"N": N, "D": D, "C": C}[self.x]
        if value is None:
            raise AnalysisError(f"law {self.law} was fitted on {self.x}; pass {self.x}=...")
        return law(value, **self.params)

    def predict_data(self, data: Data) -> np.ndarray:
        """Predicted loss for every run in ``data``."""
        U = data.column("U") if "U" in get_law(self.law).extra_inputs else None
        return self.predict(N=data.N, D=data.D, C=data.C, U=U)


@dataclass(frozen=True, eq=False)
class BootstrapResult:
    """Bootstrap over independent units (runs, or groups of correlated runs): resample them
    with replacement, refit, and summarise.

    samples: every parameter and derived quantity, one value per resample (a fixed
    parameter's column is constant); stderr: their standard deviations; interval: percentile
    intervals at ``level``. stderr and interval leave out fixed and tied parameters, which have
    no interval of their own.
    """

    law: str
    n_resamples: int
    seed: int
    level: float
    samples: Mapping[str, np.ndarray]
    stderr: Mapping[str, float]
    interval: Mapping[str, tuple[float, float]]
    n_converged: int
    diagnostics: tuple[Diagnostic, ...]
    n_units: int = 0  # independent units resampled (runs, unless runs were grouped)


def get_law(law: str) -> Law:
    """The law named ``law`` (a key of :data:`scaling.analysis.laws.LAWS`)."""
    if law not in LAWS:
        raise AnalysisError(f"unknown law {law!r}; choose one of {', '.join(LAWS)}")
    return LAWS[law]


get_form = get_law  # the name study.py and older callers use


def _columns(data: Data, law: Law, x: str | None) -> tuple[dict, dict, str | None]:
    """Log columns for the optimiser, raw columns for diagnostics, and the x used."""
    if not law.x_choices:
        raw = {"N": data.N, "D": data.D}
        cols = {"lnN": np.log(data.N), "lnD": np.log(data.D)}
        for name in law.extra_inputs:  # U: often one value for every run, so not a raw
            cols["ln" + name] = np.log(data.column(name))  # column (no distinctness check)
        return cols, raw, None
    x = x or law.default_x
    if x not in law.x_choices:
        if len(law.x_choices) == 1:
            raise AnalysisError(f"law {law.name} is a law in {law.default_x}; got x={x!r}, drop it")
        raise AnalysisError(f"x={x!r} is not a column; use {', '.join(law.x_choices)}")
    v = data.column(x)
    return {"lnx": np.log(v)}, {x: v}, x


def _grid_array(law: Law, grid, cols, rep: Reparam, y: np.ndarray | None = None) -> np.ndarray:
    """Starts in the free internal parameters: the law's grid (or the user's) reduced by
    ``rep`` (constrained columns dropped, rows clipped into the bounds, duplicates removed)."""
    names = rep.free_theta_names
    if grid is None:
        return rep.starts(law.default_grid(cols if y is None else {**cols, "lny": y}))
    if isinstance(grid, Mapping):
        missing = [k for k in names if k not in grid]
        if missing:
            raise AnalysisError(
                f"grid for {law.name} lacks {missing}; give values for every one of "
                f"{names} (log-scale parameters are logs, e.g. a = log A)"
            )
        return rep.starts(np.array(
            list(itertools.product(*(np.atleast_1d(grid[k]) for k in names))), dtype=float,
        ))
    arr = np.atleast_2d(np.asarray(grid, dtype=float))
    if arr.shape[1] not in (law.n_params, rep.n_free):
        raise AnalysisError(
            f"grid has {arr.shape[1]} columns; law {law.name} needs {law.n_params} "
            f"({', '.join(law.theta_names)})"
            + (f" or its {rep.n_free} free ones ({', '.join(names)})" if not rep.identity else "")
        )
    return rep.starts(arr)


def _objective(law: Law, rep: Reparam, cols, y, delta, weights: np.ndarray | None = None):
    """fg(z, rows) for minimize_batch: the Huber objective and its gradient in the free
    parameters ``z``; ``weights`` (resamples, n) are per-row point weights (the bootstrap)."""
    def fg(z, rows):
        w = None if weights is None else weights[rows]
        if rep.identity:  # no fixes or ties: z is theta, and nothing is added to the hot path
            return huber_value_and_grad(law, z, cols, y, delta, w)
        theta, jac = rep.expand(z, jacobian=True)
        f, g = huber_value_and_grad(law, theta, cols, y, delta, w)
        return f, rep.pullback(g, jac)

    return fg


def _constraints(constraints, fix, tie, bounds) -> Constraints:
    if constraints is not None and (fix or tie or bounds):
        raise AnalysisError("pass either constraints=Constraints(...) or fix/tie/bounds, not both")
    if constraints is not None and not isinstance(constraints, Constraints):
        raise AnalysisError(f"constraints is a {type(constraints).__name__}; pass "
                            f"scaling.analysis.constraints.Constraints, or use fix=, tie=, bounds=")
    return constraints if constraints is not None else Constraints.of(fix, tie, bounds)


def _run_starts(fg, starts, lower, upper, screen, keep, law):
    """Run the starts (screened to the best ``keep`` when many) and polish the best:
    (z, objective, best start, converged, (starts run, starts converged))."""
    n_starts = starts.shape[0]
    keep = keep or max(64, n_starts // 10)
    if screen and n_starts > 2 * keep:
        first = minimize_batch(fg, starts, lower, upper, maxiter=SCREEN_ITERS)
        fun = np.where(np.isfinite(first.fun), first.fun, np.inf)
        chosen = np.argsort(fun, kind="stable")[:keep]
        res = minimize_batch(fg, first.x[chosen], lower, upper)
    else:
        chosen = np.arange(n_starts)
        res = minimize_batch(fg, starts, lower, upper)
    fun = np.where(np.isfinite(res.fun), res.fun, np.inf)
    if not np.isfinite(fun).any():
        raise AnalysisError(f"law {law}: every start overflowed; check the data's units")
    best = int(np.argmin(fun))
    polished = minimize_batch(fg, res.x[best : best + 1], lower, upper, **TIGHT)
    if polished.fun[0] <= fun[best]:
        res.x[best], fun[best] = polished.x[0], polished.fun[0]
    best_start = starts[chosen[best]]
    return (res.x[best], float(fun[best]), best_start, bool(res.converged[best]),
            (int(chosen.size), int(res.converged.sum())))


def _extended(starts, best_start, z, lower, upper):
    """The start grid shifted by its width past each edge where the best start lies and the
    optimum sits at or beyond; None when there is no such edge (or it is the bound)."""
    lo_box, hi_box = starts.min(axis=0), starts.max(axis=0)
    width = hi_box - lo_box
    shift = np.zeros(starts.shape[1])
    for i in range(starts.shape[1]):
        if width[i] <= 0:
            continue
        if best_start[i] <= lo_box[i] and z[i] <= lo_box[i] and lo_box[i] > lower[i]:
            shift[i] = -width[i]
        elif best_start[i] >= hi_box[i] and z[i] >= hi_box[i] and hi_box[i] < upper[i]:
            shift[i] = width[i]
    if not shift.any():
        return None
    return np.clip(starts + shift, lower, upper)


def fit_law(
    data: Data,
    law: str = "chinchilla",
    delta: float | str = 1e-3,
    grid: np.ndarray | Mapping[str, ArrayLike] | None = None,
    *,
    x: str | None = None,
    screen: bool = True,
    keep: int | None = None,
    fix: Mapping[str, float] | None = None,
    tie: Mapping[str, str] | None = None,
    bounds: Mapping[str, tuple[float | None, float | None]] | None = None,
    constraints: Constraints | None = None,
) -> FitResult:
    """Fit ``law`` to ``data`` by Huber(delta) on log loss, summed over runs, from a grid.

    law: a name in :data:`scaling.analysis.laws.LAWS`: chinchilla, power_law, kaplan_n,
    kaplan_d, kaplan_nd, broken_power_law, data_constrained (which needs
    ``data.unique_tokens``).
    delta: Huber threshold on log residuals (default 1e-3, as Hoffmann et al. and Epoch).
    ``"auto"``: :data:`HUBER_K` times the data's noise scale, from a first fit at 1e-3 (see
    :func:`auto_delta`); for dense, noisy data such as learning curves, where a threshold far
    below the noise makes the fit a median regression that wastes a third of the data.
    grid: starts in the internal parameters (``LAWS[law].theta_names``), either an array of
    shape (starts, n_params) or a mapping name -> values whose product is taken. Defaults to
    the law's ``default_grid``, built from the data;
    for chinchilla it has as many points as Epoch's grid, 4,500 over (a, b, e, alpha, beta),
    placed at the data's scale (:func:`scaling.analysis.laws._chinchilla_grid`). With fixed or
    tied parameters their columns are dropped (a mapping needs only the free names).
    x: the input of a one-variable law, "N", "D" or "C" (default the law's ``default_x``: C
    for power_law and broken_power_law).
    screen / keep: screen all starts by a few steps and run the best ``keep`` (default a
    tenth, at least 64) to convergence; ``screen=False`` runs them all.
    fix / tie / bounds: constraints in public names and units (see
    :mod:`scaling.analysis.constraints`), e.g. ``fix={"E": 1.69}``, ``tie={"beta": "alpha"}``,
    ``bounds={"alpha": (0.05, 1.5)}``; or pass a ready ``constraints=Constraints(...)``.
    The fit needs one more run than it has free parameters.
    """
    if not isinstance(data, Data):
        raise AnalysisError(
            f"data is a {type(data).__name__}; pass analysis.Data (from load_csv, load_runs "
            f"or Data.from_arrays)"
        )
    spec = get_law(law)
    if isinstance(delta, str) and delta == "auto":
        first = fit_law(data, law, 1e-3, grid, x=x, screen=screen, keep=keep, fix=fix, tie=tie,
                        bounds=bounds, constraints=constraints)
        delta = auto_delta(first, data)
    if not (isinstance(delta, (int, float)) and np.isfinite(delta) and delta > 0):
        raise AnalysisError(f"delta={delta!r} must be a positive number (default 1e-3) or 'auto'")
    rep = resolve(spec, _constraints(constraints, fix, tie, bounds))
    require_points(len(data), rep.n_free, law, rep.free,
                   None if rep.identity else rep.constraints.describe())
    cols, raw, x_used = _columns(data, spec, x)
    for name, v in raw.items():
        require_distinct(v, name, law)
    y = np.log(data.loss)
    starts = _grid_array(spec, grid, cols, rep, y)
    fg = _objective(spec, rep, cols, y, delta)
    lower, upper = rep.lower, rep.upper

    z, objective, best_start, converged, (n_run, n_conv) = _run_starts(
        fg, starts, lower, upper, screen, keep, law)
    if grid is None:
        # A grid built from the data can still miss: when the best start lies on the grid's
        # edge and its optimum at or beyond it, extend the grid once in that direction (by
        # its own width) and keep the better optimum. Only an optimum beyond that warns.
        ext = _extended(starts, best_start, z, lower, upper)
        if ext is not None:
            z2, obj2, bs2, conv2, (run2, conv_n2) = _run_starts(
                fg, ext, lower, upper, screen, keep, law)
            starts = np.concatenate([starts, ext])
            n_run, n_conv = n_run + run2, n_conv + conv_n2
            if obj2 < objective:
                z, objective, best_start, converged = z2, obj2, bs2, conv2
    theta = rep.expand(z[None, :])[0]
    on_edge = _on_edge(starts, best_start)
    # The grid brackets the optimum when the optimum lies strictly inside the box the grid
    # spans. A best start on the edge that moved inward is harmless; one whose optimum sits
    # at or beyond that edge means a wider grid might find a better optimum.
    lo_box, hi_box = starts.min(axis=0), starts.max(axis=0)
    pinned = [t <= lo + 1e-5 * max(1.0, abs(lo)) or t >= hi - 1e-5 * max(1.0, abs(hi))
              for t, lo, hi in zip(z, lower, upper)]
    at_bound = tuple(spec.encodes[i] for i, p in zip(rep.free_idx, pinned) if p)
    # An optimum at a bound is reported as such (below); the grid's edge there (clipped to
    # that bound) is no reason to widen the grid.
    outside = [
        f"{n} (grid {a:.3g}..{b:.3g}, optimum {t:.4g})"
        for n, t, a, b, p in zip(rep.free_theta_names, z, lo_box, hi_box, pinned)
        if b > a and (t <= a or t >= b) and not p
    ]

    lp, _ = spec.log_pred(theta[None, :], cols)
    residuals = y - lp[0]
    ss_res = float(np.sum(residuals**2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    rmse_log = float(np.sqrt(ss_res / len(data)))
    r2_log = float(1.0 - ss_res / ss_tot) if ss_tot > 0 else float("nan")
    public = spec.to_public(theta[None, :])[0]
    params = {k: float(v) for k, v in zip(spec.param_names, public)}
    derived = {k: float(v) for k, v in spec.derived({k: np.asarray(v) for k, v in params.items()}).items()}

    diags = span_diagnostics(raw)
    if outside:
        diags.append(Diagnostic(
            "grid_edge",
            f"the best start {tuple(float(v) for v in best_start)} "
            f"{'lies on the edge of the start grid and ' if on_edge else ''}"
            f"its optimum is at or beyond the grid's edge in {', '.join(outside)}; "
            f"widen the grid there",
        ))
    if at_bound:
        diags.append(Diagnostic(
            "param_at_bound",
            f"{', '.join(at_bound)} sits at the optimiser's bound; the law may not suit the data",
        ))
    tied_out = rep.tied_outside_bounds(theta)
    if tied_out:
        diags.append(Diagnostic(
            "tied_outside_bounds",
            f"tied parameter(s) outside the law's bounds: {'; '.join(tied_out)}; bound the "
            f"parameters they are tied to",
        ))
    if not converged:
        diags.append(Diagnostic("not_converged", "the best start hit the iteration limit"))
    diags += fit_quality_diagnostics(r2_log, rmse_log, residuals, raw)
    diags += lack_of_fit(residuals, raw, rep.n_free)

    return FitResult(
        law=law,
        x=x_used,
        params=MappingProxyType(params),
        theta=tuple(float(t) for t in theta),
        objective=objective,
        n_points=len(data),
        delta=float(delta),
        converged=converged,
        n_starts=int(starts.shape[0]),
        n_starts_run=n_run,
        n_starts_converged=n_conv,
        best_start=tuple(float(v) for v in best_start),
        best_start_on_edge=on_edge,
        at_bound=at_bound,
        residuals=residuals,
        rmse_log=rmse_log,
        r2_log=r2_log,
        derived=MappingProxyType(derived),
        diagnostics=tuple(diags),
        constraints=rep.constraints,
        free=rep.free,
    )


# Huber's tuning constant: a threshold of 1.345 noise standard deviations keeps 95% of least
# squares' efficiency under Gaussian noise and still bounds an outlier's pull (Huber 1964).
HUBER_K = 1.345


def auto_delta(fit: FitResult, data: Data) -> float:
    """``HUBER_K`` times the noise scale of log loss: the robust spread of differences of
    neighbouring residuals of ``fit`` along each input (a smooth misfit cancels there), the
    largest over the inputs, floored at ``NOISE_FLOOR_LOG`` (0.1%)."""
    _, raw, _ = _columns(data, get_law(fit.law), fit.x)
    noise = max([noise_scale(fit.residuals, v) for v in raw.values()] + [NOISE_FLOOR_LOG])
    return float(HUBER_K * noise)


def _on_edge(starts: np.ndarray, point: np.ndarray) -> bool:
    """True when ``point`` has a coordinate on the boundary of the grid ``starts``."""
    lo, hi = starts.min(axis=0), starts.max(axis=0)
    varied = hi > lo  # an axis with one value has no edge to speak of
    return bool((np.isclose(point, lo) | np.isclose(point, hi))[varied].any())


def bootstrap(
    data: Data,
    fit: FitResult,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    units: ArrayLike | None = None,
) -> BootstrapResult:
    """Resample independent units with replacement ``n_resamples`` times and refit each
    resample.

    A unit is a set of runs whose errors are correlated: a parent run and its cooldown
    branches, or the seeds of one configuration. Units are drawn with replacement, as many as
    there are, and every run counts as often as its unit was drawn (a cluster bootstrap);
    resampling correlated runs one by one would treat them as independent evidence and give
    intervals too narrow. ``units``: a label per run; default ``data.unit``, and without it
    every run is its own unit (the plain bootstrap over runs).

    Each resample starts from the full-data optimum (``fit.theta``), and all resamples are
    optimised together, so 1,000 resamples cost about as much as one fit. A resample is the
    original data with multinomial counts as weights, which is the same objective as a copy
    with repeated rows. Returns standard errors and percentile intervals (at ``level``) for
    every parameter and every derived quantity.
    """
    if n_resamples < 2:
        raise AnalysisError(f"n_resamples={n_resamples} must be at least 2 (e.g. 1000)")
    if not 0 < level < 1:
        raise AnalysisError(f"level={level} must be in (0, 1), e.g. 0.95")
    if fit.n_points != len(data):
        raise AnalysisError(
            f"fit has n_points={fit.n_points} but data has {len(data)} rows; pass the data "
            f"the fit was made on"
        )
    spec = get_law(fit.law)
    rep = resolve(spec, fit.constraints)
    cols, _, _ = _columns(data, spec, fit.x)
    y = np.log(data.loss)
    codes = _unit_codes(data, units)
    counts = unit_counts(codes, n_resamples, seed)
    fg = _objective(spec, rep, cols, y, fit.delta, counts)

    x0 = np.tile(rep.reduce(np.asarray(fit.theta)[None, :]), (n_resamples, 1))
    res = minimize_batch(fg, x0, rep.lower, rep.upper, **TIGHT)
    public = spec.to_public(rep.expand(res.x))
    samples = {k: public[:, i] for i, k in enumerate(spec.param_names)}
    samples.update(spec.derived(samples))
    lo_q, hi_q = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    # A fixed or tied parameter has no interval of its own: it is not estimated.
    summarised = [k for k in samples if rep.status.get(k, FREE) == FREE]
    stderr = {k: float(np.nanstd(samples[k], ddof=1)) for k in summarised}
    interval = {
        k: (float(np.nanpercentile(samples[k], lo_q)), float(np.nanpercentile(samples[k], hi_q)))
        for k in summarised
    }
    estimates = {**fit.params, **fit.derived}
    diags = interval_diagnostics(estimates, interval)
    n_conv = int(res.converged.sum())
    if n_conv < n_resamples:
        diags.append(Diagnostic(
            "bootstrap_not_converged",
            f"{n_resamples - n_conv} of {n_resamples} resamples stopped before converging",
        ))
    return BootstrapResult(
        law=fit.law,
        n_resamples=n_resamples,
        seed=seed,
        level=level,
        samples=MappingProxyType({k: np.asarray(v) for k, v in samples.items()}),
        stderr=MappingProxyType(stderr),
        interval=MappingProxyType(interval),
        n_converged=n_conv,
        diagnostics=tuple(diags),
        n_units=int(codes.max()) + 1,
    )


def _unit_codes(data: Data, units: ArrayLike | None) -> np.ndarray:
    """Integer unit codes for the rows of ``data``, from ``units`` or ``data.unit``."""
    if units is not None:
        data = data.with_units(units)
    return data.unit_codes()


def unit_counts(codes: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """(n_resamples, n) bootstrap weights: draw the k units (``codes`` 0..k-1, one per run)
    with replacement k times; each run's weight is the number of times its unit was drawn.
    With every run its own unit this is the multinomial draw of the plain bootstrap, with the
    same random numbers as before units existed."""
    codes = np.asarray(codes)
    k = int(codes.max()) + 1
    rng = np.random.default_rng(seed)
    per_unit = rng.multinomial(k, np.full(k, 1.0 / k), size=n_resamples).astype(float)
    return per_unit[:, codes]


def _allocating_laws() -> str:
    """``chinchilla (E, A, B, alpha, beta) or kaplan_nd (N_c, D_c, alpha_N, alpha_D)``."""
    return " or ".join(f"{law.name} ({', '.join(law.param_names)})"
                       for law in LAWS.values() if law.optimal is not None)


def _law_of_params(params: Mapping[str, float]) -> Law:
    """The first law with a compute-optimal allocation whose parameters ``params`` holds."""
    for law in LAWS.values():
        if law.optimal is not None and set(law.param_names) <= params.keys():
            return law
    raise AnalysisError(f"params {sorted(params)} are the parameters of no law in N and D; "
                        f"give those of {_allocating_laws()}")


def compute_optimal(
    fit_or_params: FitResult | Mapping[str, float],
    C: ArrayLike,
    boot: BootstrapResult | None = None,
    level: float | None = None,
    flops: FlopsPerToken | None = None,
) -> dict:
    """Compute-optimal allocation for budgets C [FLOPs].

    Without ``flops`` (or with f(N) = 6 N) the budgets are on the ``C = 6 N D`` scale and the
    law's own closed form gives the allocation: for chinchilla ``N_opt = G (C/6)^a``,
    ``D_opt = G^-1 (C/6)^b`` (:func:`scaling.analysis.laws.chinchilla_optimal`); kaplan_nd
    has a closed form too. With ``flops`` (:class:`scaling.analysis.flops.FlopsPerToken`, the
    study's FLOPs per token f(N)) the budgets are on the study's own scale, ``C = f(N) D``,
    and ``N_opt = argmin_N L(N, C / f(N))`` is solved numerically
    (:func:`scaling.analysis.flops.allocate`), so the allocation and its loss sit on the same
    compute axis as the runs.

    Returns a dict with ``C``, ``N_opt`` [params], ``D_opt`` [tokens], ``tokens_per_param``,
    ``loss`` [nats], the exponents ``a`` and ``b`` (the law's, ``beta/(alpha+beta)`` and
    ``alpha/(alpha+beta)`` for chinchilla, which hold exactly under 6 N D and asymptotically
    otherwise), and ``flops`` (the convention used, as ``FlopsPerToken.to_json``). With
    ``boot``, each of these also has ``<name>_interval`` = (low, high) from the bootstrap
    samples at ``level`` (default the bootstrap's). A mapping of params is read as the
    parameters of the first law that has them all: chinchilla (keys E, A, B, alpha, beta) or
    kaplan_nd (N_c, D_c, alpha_N, alpha_D).
    """
    if isinstance(fit_or_params, FitResult):
        spec, params = get_law(fit_or_params.law), dict(fit_or_params.params)
    else:
        params = {k: float(v) for k, v in fit_or_params.items()}
        spec = _law_of_params(params)
    if spec.optimal is None:
        raise AnalysisError(f"law {spec.name} is not a law in N and D; compute-optimal "
                            f"allocation needs {_allocating_laws()}")
    scalar = np.ndim(C) == 0
    Carr = np.atleast_1d(np.asarray(C, dtype=float))
    if not (np.isfinite(Carr).all() and (Carr > 0).all()):
        raise AnalysisError(f"compute budget C={C!r} must be positive finite FLOPs")
    flops = FlopsPerToken.six_n() if flops is None else flops

    def solve(p, Cs):
        closed = spec.allocate(p, Cs)
        if flops.is_6nd:
            return closed
        return allocate_numeric(spec.formula, {k: p[k] for k in spec.param_names}, Cs, flops,
                                N_guess=closed[0])

    # numpy scalars and no warnings: a degenerate fit (alpha = beta = 0, which a poor_fit
    # diagnostic flags) has no optimum, and gives NaN here instead of a ZeroDivisionError.
    p64 = {k: np.float64(v) for k, v in params.items()}
    with np.errstate(all="ignore"):
        N_opt, D_opt, loss = solve(p64, Carr)
        exps = spec.derived(p64)
    out = {"C": Carr, "N_opt": N_opt, "D_opt": D_opt, "tokens_per_param": D_opt / N_opt,
           "loss": loss, "a": exps["a"], "b": exps["b"]}
    if boot is not None:
        if boot.law != spec.name:
            raise AnalysisError(f"bootstrap is for law {boot.law}, the fit for {spec.name}")
        level = boot.level if level is None else level
        samp = {k: np.asarray(v)[:, None] for k, v in boot.samples.items()}
        with np.errstate(all="ignore"):  # a resample far from the fit can overflow; its NaNs are skipped
            Nb, Db, Lb = solve(samp, Carr[None, :])
            exps_b = spec.derived({k: v[:, 0] for k, v in samp.items()})
            ratio = Db / Nb
        lo_q, hi_q = 100 * (1 - level) / 2, 100 * (1 + level) / 2
        for name, s in (("N_opt", Nb), ("D_opt", Db), ("tokens_per_param", ratio),
                        ("loss", Lb)):
            out[name + "_interval"] = (np.nanpercentile(s, lo_q, axis=0),
                                       np.nanpercentile(s, hi_q, axis=0))
        for name in ("a", "b"):
            out[name + "_interval"] = (float(np.nanpercentile(exps_b[name], lo_q)),
                                       float(np.nanpercentile(exps_b[name], hi_q)))
    if scalar:
        out = {k: (_scalar(v)) for k, v in out.items()}
    out["flops"] = flops.to_json()
    return out


def _scalar(v):
    if isinstance(v, tuple):
        return tuple(_scalar(x) for x in v)
    arr = np.asarray(v)
    return float(arr.reshape(-1)[0]) if arr.size == 1 else arr
