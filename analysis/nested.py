"""Is a constrained law consistent with the data? A test of nested fits.

A fit with parameters fixed or tied (``beta = alpha``, ``E = 1.69``) is the unconstrained law
with ``q`` restrictions. :func:`compare_nested` asks whether the data reject them, with the
likelihood-ratio-type test for M-estimators (Schrader and Hettmansperger 1980; Hampel et al.
1986, "Robust Statistics", section 7.3): with residuals ``r`` of the unconstrained fit and
``psi(r) = clip(r, -delta, delta)``, the derivative of the Huber loss,

    S = 2 * (E[psi'] / E[psi^2]) * (objective_constrained - objective_unconstrained)

is asymptotically chi-squared with ``q`` degrees of freedom under the restrictions. ``S / q`` is
referred to F(q, n - p): when delta is large against the residuals the objective is half the
residual sum of squares, E[psi'] = 1, and this is the classical F test of nested least-squares
fits; the F reference also allows for the scale being estimated from few runs. E[psi^2] is estimated as sum psi^2 / (n - p); E[psi'] =
P(|r| < delta) from a kernel-smoothed distribution of the residuals, so that it stays defined
when few residuals fall inside delta (with delta = 1e-3 most do not).

Why this test, not the textbook likelihood-ratio test or AIC/BIC: the fits minimise a Huber
loss, not a likelihood, so a Gaussian log-likelihood evaluated at them is not at its maximum
(the "ratio" can even favour the constrained fit); the objective the fits do minimise is the
right statistic, once scaled by E[psi']/E[psi^2]. The restrictions are nested equalities with a
known count, so a test with a p-value answers the user's question ("is tying the exponents
consistent with my data?") directly, where an information criterion would need a likelihood
and gives no error rate. Caveats, reported as diagnostics: the chi-squared/F reference assumes
the restricted values lie inside the parameter space (a parameter fixed at its bound breaks
it), and with few residual degrees of freedom the p-value is rough.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from scaling.analysis.constraints import Constraints
from scaling.analysis.diagnostics import Diagnostic
from scaling.analysis.errors import AnalysisError
from scaling.analysis.fit import FitResult

LEVEL = 0.05  # significance level of the verdict; the p-value is reported too
METHOD = ("likelihood-ratio-type test for Huber fits (Schrader & Hettmansperger 1980): "
          "S = 2 E[psi'] / E[psi^2] x (objective difference), S/q against F(q, n - p)")


@dataclass(frozen=True)
class NestedComparison:
    """A constrained fit against the unconstrained one of the same law on the same runs.

    q: restrictions (fixed + tied parameters); n_points; dof: n - p of the unconstrained fit;
    objectives and RMSE(log loss) of both fits; statistic: S; p_value: P(F(q, dof) >= S/q);
    consistent: p_value >= level, i.e. the data do not reject the constraints at that level.
    """

    law: str
    constraints: str  # e.g. "beta = alpha"
    q: int
    n_points: int
    dof: int
    free_constrained: tuple[str, ...]
    free_unconstrained: tuple[str, ...]
    objective_constrained: float
    objective_unconstrained: float
    rmse_log_constrained: float
    rmse_log_unconstrained: float
    scale: float  # E[psi'] / E[psi^2]
    statistic: float
    p_value: float
    level: float
    consistent: bool
    method: str
    diagnostics: tuple[Diagnostic, ...]

    def sentence(self) -> str:
        """The verdict in one sentence, for the console and the report."""
        verdict = ("consistent with the data" if self.consistent
                   else "rejected by the data")
        return (f"Constraints ({self.constraints}) against the unconstrained law: "
                f"S = {self.statistic:.3g} on {self.q} restriction(s), p = {self.p_value:.3g}, "
                f"so they are {verdict} at the {self.level:g} level "
                f"(RMSE of log loss {self.rmse_log_constrained:.4g} constrained, "
                f"{self.rmse_log_unconstrained:.4g} unconstrained).")

    def to_json(self) -> dict:
        return {
            "method": self.method, "constraints": self.constraints, "q": self.q,
            "n_points": self.n_points, "dof": self.dof,
            "free_constrained": list(self.free_constrained),
            "free_unconstrained": list(self.free_unconstrained),
            "objective_constrained": self.objective_constrained,
            "objective_unconstrained": self.objective_unconstrained,
            "rmse_log_constrained": self.rmse_log_constrained,
            "rmse_log_unconstrained": self.rmse_log_unconstrained,
            "scale": self.scale, "statistic": self.statistic, "p_value": self.p_value,
            "level": self.level, "consistent": self.consistent,
            "diagnostics": [d.to_json() for d in self.diagnostics],
        }


def compare_nested(constrained: FitResult, unconstrained: FitResult,
                   level: float = LEVEL) -> NestedComparison:
    """Test the constraints of ``constrained`` against ``unconstrained`` (see module docstring).

    Both must be fits of the same law on the same runs with the same delta, and the
    unconstrained one must keep every free parameter of the constrained one free (it may keep
    the same bounds: bounds are not counted as restrictions).
    """
    if not 0 < level < 1:
        raise AnalysisError(f"level={level} must be in (0, 1), e.g. 0.05")
    c, u = constrained, unconstrained
    if (c.law, c.n_points, c.delta, c.x) != (u.law, u.n_points, u.delta, u.x):
        raise AnalysisError(
            f"the fits differ (law {c.law} / {u.law}, {c.n_points} / {u.n_points} runs, delta "
            f"{c.delta} / {u.delta}); compare two fits of one law on the same runs"
        )
    q = u.n_free - c.n_free
    if q < 1 or not set(c.free) <= set(u.free):
        raise AnalysisError(
            f"the constrained fit (free: {', '.join(c.free)}) is not nested in the other "
            f"(free: {', '.join(u.free)}); pass the fit with fixed or tied parameters first"
        )
    n, p = u.n_points, u.n_free
    dof = n - p
    r = np.asarray(u.residuals, dtype=float)
    delta = u.delta
    psi2 = float(np.sum(np.clip(r, -delta, delta) ** 2)) / dof
    dpsi = _smoothed_inside(r, delta)
    diff = c.objective - u.objective
    diags = []
    if diff < 0:
        # The unconstrained optimum can only be lower; a higher one is the optimiser's miss.
        diags.append(Diagnostic(
            "nested_objective_order",
            f"the unconstrained fit's objective {u.objective:.6g} is above the constrained "
            f"one's {c.objective:.6g}; the unconstrained optimum was missed (widen its grid); "
            f"the difference is taken as 0",
        ))
        diff = 0.0
    if psi2 > 0:
        scale = dpsi / psi2
        statistic = 2.0 * scale * diff
    else:  # the unconstrained law fits every run exactly
        scale = math.inf
        statistic = math.inf if diff > 0 else 0.0
    p_value = float(stats.f.sf(statistic / q, q, dof)) if math.isfinite(statistic) else 0.0
    at_bound = [k for k in c.constraints.fix if _fixed_at_bound(c, k)]
    if at_bound:
        diags.append(Diagnostic(
            "nested_at_bound",
            f"{', '.join(at_bound)} is fixed at its bound; the test assumes restrictions inside "
            f"the parameter space, so its p-value is only indicative",
        ))
    if dof < 5:
        diags.append(Diagnostic(
            "nested_few_dof",
            f"only {dof} residual degree(s) of freedom in the unconstrained fit ({n} runs, {p} "
            f"free parameters); the p-value is rough",
        ))
    return NestedComparison(
        # Only the fixes and ties are tested; both fits keep the same bounds.
        law=c.law, constraints=Constraints(c.constraints.fix, c.constraints.tie).describe(), q=q,
        n_points=n, dof=dof,
        free_constrained=tuple(c.free), free_unconstrained=tuple(u.free),
        objective_constrained=float(c.objective), objective_unconstrained=float(u.objective),
        rmse_log_constrained=float(c.rmse_log), rmse_log_unconstrained=float(u.rmse_log),
        scale=float(scale), statistic=float(statistic), p_value=p_value, level=level,
        consistent=bool(p_value >= level), method=METHOD, diagnostics=tuple(diags),
    )


def _smoothed_inside(r: np.ndarray, delta: float) -> float:
    """P(|r| < delta) under a Gaussian-kernel estimate of the residuals' distribution
    (Silverman's bandwidth); the plain fraction when the residuals have no spread."""
    n = r.size
    sd = float(np.std(r, ddof=1)) if n > 1 else 0.0
    iqr = float(np.subtract(*np.percentile(r, [75, 25])))
    spread = min(sd, iqr / 1.34) if iqr > 0 else sd
    h = 0.9 * spread * n ** (-0.2)
    if not h > 0:
        return float(np.mean(np.abs(r) < delta))
    return float(np.mean(stats.norm.cdf((delta - r) / h) - stats.norm.cdf((-delta - r) / h)))


def _fixed_at_bound(fit: FitResult, name: str) -> bool:
    from scaling.analysis.constraints import public_bounds
    from scaling.analysis.fit import get_law

    law = get_law(fit.law)
    lo, hi = public_bounds(law, fit.constraints.bounds).get(name, law.bounds[name])
    v = fit.params[name]
    return math.isclose(v, lo, rel_tol=1e-9, abs_tol=1e-12) or math.isclose(v, hi, rel_tol=1e-9)


def compare_or_why(data, constrained: FitResult, level: float = LEVEL) -> NestedComparison | str:
    """Fit the unconstrained law ``constrained`` nests in and test the constraints; or, when the
    runs are too few for the unconstrained law, say so (a string) instead of failing."""
    from scaling.analysis.constraints import resolve
    from scaling.analysis.fit import get_law

    n_free = resolve(get_law(constrained.law), constrained.constraints.relaxed()).n_free
    if constrained.n_points < n_free + 1:
        return (f"the unconstrained law has {n_free} free parameters and needs at least "
                f"{n_free + 1} runs to fit; got {constrained.n_points}, so only the constrained "
                f"fit is made")
    return compare_nested(constrained, fit_unconstrained_for(data, constrained), level)


def fit_unconstrained_for(data, constrained: FitResult, **fit_kwargs) -> FitResult:
    """The unconstrained fit a constrained one nests in: same law, runs, delta and bounds."""
    from scaling.analysis.fit import fit_law

    return fit_law(data, law=constrained.law, delta=constrained.delta, x=constrained.x,
                   constraints=constrained.constraints.relaxed(), **fit_kwargs)
