"""Predict before you train: the loss of one new run, and the approaches side by side.

:func:`predict_run` gives, for a planned run of N parameters and D tokens, the loss predicted
by two approaches, each with a prediction interval for *one new run*:

- approach 3 (the parametric law): ``L(N, D)`` from the fit;
- approach 2 (IsoFLOP): ``L_min(C) = E + k C^-gamma``, a power law with an offset fitted by
  least squares to the profiles' minima, at the run's compute ``C = f(N) D``. It predicts
  the loss of a run at the compute-optimal size for its compute, so the result reports
  ``N / N_opt(C)`` too: far from 1 the run sits up its budget's profile and will do worse.

A prediction interval for one run is wider than the interval of the law: a new run differs
from the mean law by its own run-to-run scatter. So each interval is made from the law's
bootstrap draws (its uncertainty) plus the scatter of single runs about the law, seen in the
residuals: for every draw b and residual r_j, ``log L = log L_b + s r_j``, and the interval is
the percentiles of these sums. ``s = sqrt(n / (n - p))`` undoes the shrinkage of residuals of
a fit with p parameters on n runs. The residuals are the parametric fit's (approach 3), and
the runs' residuals about their budget's parabola within its window (approach 2).

:func:`compare_approaches` puts the exponent a of ``N_opt ~ C^a`` (and b of
``D_opt ~ C^b``) from approaches 1, 2 and 3 side by side, each with its interval, all on the
study's own FLOP scale, and names a disagreement beyond the intervals
(``approaches_disagree``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scaling.analysis.data import Data
from scaling.analysis.diagnostics import Diagnostic
from scaling.analysis.errors import AnalysisError
from scaling.analysis.fit import BootstrapResult, FitResult, compute_optimal, get_law
from scaling.analysis.flops import FlopsPerToken, local_exponents
from scaling.analysis.isoflop import EnvelopeResult, IsoFLOPResult

GAMMA_GRID = np.linspace(0.005, 2.0, 800)  # exponents of L_min(C) searched (profile LSQ)
MAX_DRAWS = 200_000  # cap on draws x residuals when forming the predictive distribution


@dataclass(frozen=True)
class RunPrediction:
    """Predicted loss [nats] of one new run by one approach, with a prediction interval.

    interval: the ``level`` prediction interval for one run (law uncertainty plus run-to-run
    scatter); law_interval: the interval of the mean law alone (its bootstrap), narrower;
    scatter_log: the RMS run-to-run scatter in log loss used (after the dof correction).
    """

    approach: str  # "parametric" (approach 3) or "isoflop" (approach 2)
    N: float
    D: float
    C: float  # compute [FLOPs] on the study's scale, f(N) D
    loss: float
    interval: tuple[float, float]
    law_interval: tuple[float, float]
    level: float
    scatter_log: float
    n_draws: int
    note: str = ""
    N_over_N_opt: float = float("nan")  # approach 2: how far the run is from the optimal size

    def to_json(self) -> dict:
        out = {"approach": self.approach, "N": self.N, "D": self.D, "C": self.C,
               "loss": self.loss, "prediction_interval": list(self.interval),
               "law_interval": list(self.law_interval), "level": self.level,
               "scatter_log": self.scatter_log, "n_draws": self.n_draws}
        if np.isfinite(self.N_over_N_opt):
            out["N_over_N_opt"] = self.N_over_N_opt
        if self.note:
            out["note"] = self.note
        return out


def _predictive(log_law: np.ndarray, residuals: np.ndarray, n_params: int, level: float,
                seed: int) -> tuple[tuple[float, float], tuple[float, float], float, int]:
    """(prediction interval, law interval, scatter, draws) in loss from bootstrap draws of log
    L of the law and the fit's residuals (log). See the module docstring."""
    log_law = log_law[np.isfinite(log_law)]
    r = np.asarray(residuals, dtype=float)
    r = r[np.isfinite(r)]
    n = r.size
    if log_law.size < 2 or n <= n_params:
        raise AnalysisError(f"a prediction interval needs 2+ bootstrap draws of the law and more "
                            f"residuals than the law's {n_params} parameters; got "
                            f"{log_law.size} draws and {n} residuals. Bootstrap the fit "
                            f"(e.g. 1000 resamples) on more runs")
    scaled = r * np.sqrt(n / (n - n_params))
    if log_law.size * n > MAX_DRAWS:  # a random subset of the pairs, same distribution
        rng = np.random.default_rng(seed)
        total = log_law[rng.integers(0, log_law.size, MAX_DRAWS)] \
            + scaled[rng.integers(0, n, MAX_DRAWS)]
    else:
        total = (log_law[:, None] + scaled[None, :]).ravel()
    q = 100 * (1 - level) / 2
    pred = (float(np.exp(np.percentile(total, q))), float(np.exp(np.percentile(total, 100 - q))))
    law = (float(np.exp(np.percentile(log_law, q))), float(np.exp(np.percentile(log_law, 100 - q))))
    return pred, law, float(np.sqrt(np.mean(scaled**2))), int(total.size)


def predict_parametric(N: float, D: float, fit: FitResult, boot: BootstrapResult,
                       flops: FlopsPerToken | None = None, level: float = 0.95,
                       seed: int = 0) -> RunPrediction:
    """Approach 3: the fitted law at (N, D), with a prediction interval for one run."""
    law = get_law(fit.law)
    if law.inputs != ("N", "D"):
        raise AnalysisError(f"law {fit.law} is not a law in N and D; predict a run with "
                            f"chinchilla or kaplan_nd")
    if boot.law != fit.law:
        raise AnalysisError(f"bootstrap is for law {boot.law}, the fit for {fit.law}")
    N, D = _positive(N, "N"), _positive(D, "D")
    flops = FlopsPerToken.six_n() if flops is None else flops
    point = float(fit.predict(N=N, D=D))
    with np.errstate(all="ignore"):
        draws = np.log(law(N, D, **{k: np.asarray(boot.samples[k]) for k in law.param_names}))
    pred, law_iv, scatter, n = _predictive(draws, fit.residuals, fit.n_free, level, seed)
    return RunPrediction("parametric", N, D, float(flops(N) * D), point, pred, law_iv, level,
                         scatter, n)


@dataclass(frozen=True, eq=False)
class LminLaw:
    """``L_min(C) = E + k C^-gamma`` [nats] fitted to the IsoFLOP minima, with draws."""

    E: float
    k: float
    gamma: float
    draws: np.ndarray  # (n, 3): E, k, gamma per bootstrap draw of the minima
    residuals: np.ndarray  # log residuals of single runs about their budget's parabola
    n_params: int  # parameters those residuals were fitted with (3 per profile)

    def __call__(self, C) -> np.ndarray:
        return self.E + self.k * np.asarray(C, dtype=float) ** (-self.gamma)


def _fit_lmin(lnC: np.ndarray, L: np.ndarray) -> np.ndarray:
    """Least-squares (E, k, gamma) of L = E + k exp(-gamma lnC) per row of L (rows are draws):
    for each gamma on :data:`GAMMA_GRID` the fit is linear in (E, k); keep the best gamma."""
    L = np.atleast_2d(L)
    x = np.exp(-GAMMA_GRID[:, None] * (lnC - lnC.mean())[None, :])  # (g, m), scaled C
    xm = x.mean(axis=1, keepdims=True)
    dx = x - xm  # (g, m)
    Lm = L.mean(axis=1, keepdims=True)  # (r, 1)
    with np.errstate(all="ignore"):
        slope = (dx[None] * (L - Lm)[:, None, :]).sum(-1) / (dx**2).sum(-1)[None]  # (r, g)
        E = Lm - slope * xm[:, 0][None]
        sse = ((L[:, None, :] - E[..., None] - slope[..., None] * x[None]) ** 2).sum(-1)
    best = np.nanargmin(np.where(np.isfinite(sse), sse, np.inf), axis=1)
    rows = np.arange(L.shape[0])
    gamma = GAMMA_GRID[best]
    k = slope[rows, best] * np.exp(gamma * lnC.mean())  # undo the scaling of C
    return np.stack([E[rows, best], k, gamma], axis=1)


def lmin_law(iso: IsoFLOPResult) -> LminLaw:
    """Fit ``L_min(C) = E + k C^-gamma`` to the used profiles' minima (and to each bootstrap
    draw of them). Needs 3 or more budgets with an interior minimum."""
    used = [p for p in iso.profiles if p.usable and p.interior]
    if len(used) < 3:
        raise AnalysisError(f"L_min(C) = E + k C^-gamma has 3 parameters and needs 3 or more "
                            f"budgets with an interior minimum; the IsoFLOP analysis has "
                            f"{len(used)}. Run more budgets")
    lnC = np.log([p.budget for p in used])
    E, k, gamma = _fit_lmin(lnC, np.array([p.L_min for p in used]))[0]
    draws = np.zeros((0, 3))
    if iso.boot_L_min.size:
        ok = np.isfinite(iso.boot_L_min).all(axis=1)
        if ok.any():
            draws = _fit_lmin(lnC, iso.boot_L_min[ok])
    res, n_par = [], 0
    for p in used:
        inw = np.ones(len(p.N), dtype=bool) if p.in_window is None else p.in_window
        with np.errstate(all="ignore"):
            res.append(np.log(p.loss[inw]) - np.log(np.polyval(p.coeffs, np.log(p.N[inw]))))
        n_par += 3
    return LminLaw(float(E), float(k), float(gamma), draws, np.concatenate(res), n_par)


def predict_isoflop(N: float, D: float, iso: IsoFLOPResult, level: float = 0.95,
                    seed: int = 0, law: LminLaw | None = None) -> RunPrediction:
    """Approach 2: ``L_min(C)`` at the run's compute ``C = f(N) D`` (f: ``iso.flops``), with a
    prediction interval for one run. ``law``: a ready :func:`lmin_law` (fitted if None)."""
    N, D = _positive(N, "N"), _positive(D, "D")
    law = lmin_law(iso) if law is None else law
    C = float(iso.flops(N) * D)
    with np.errstate(all="ignore"):
        draws = np.log(law.draws[:, 0] + law.draws[:, 1] * C ** (-law.draws[:, 2]))
    pred, law_iv, scatter, n = _predictive(draws, law.residuals, law.n_params, level, seed)
    ratio = float(N / iso.N_opt(C))
    note = ""
    if not 0.5 <= ratio <= 2.0:
        note = (f"N is {ratio:.2g} times the compute-optimal size at this compute; approach 2 "
                f"predicts the optimal run's loss, so this run will likely do worse")
    return RunPrediction("isoflop", N, D, C, float(law(C)), pred, law_iv, level, scatter, n,
                         note, ratio)


def predict_run(N: float, D: float, *, fit: FitResult | None = None,
                boot: BootstrapResult | None = None, iso: IsoFLOPResult | None = None,
                flops: FlopsPerToken | None = None, level: float = 0.95,
                seed: int = 0) -> dict[str, RunPrediction]:
    """The loss of one new run of N parameters trained on D tokens, by approach 3 (with
    ``fit`` and its ``boot``) and approach 2 (with ``iso``), each with a ``level`` prediction
    interval. flops: the study's f(N) for the reported C (default ``iso.flops``, else 6 N).
    Returns {"parametric": ..., "isoflop": ...} for the approaches given."""
    if fit is None and iso is None:
        raise AnalysisError("predict_run needs a parametric fit (fit= and boot=) or an IsoFLOP "
                            "analysis (iso=); give at least one")
    flops = flops if flops is not None else (iso.flops if iso is not None else None)
    out = {}
    if fit is not None:
        if boot is None:
            raise AnalysisError("the parametric prediction needs the fit's bootstrap (boot=, "
                                "from scaling.analysis.fit.bootstrap) for the law's uncertainty")
        out["parametric"] = predict_parametric(N, D, fit, boot, flops, level, seed)
    if iso is not None:
        out["isoflop"] = predict_isoflop(N, D, iso, level, seed)
    return out


def _positive(v, name: str) -> float:
    v = float(v)
    if not (np.isfinite(v) and v > 0):
        raise AnalysisError(f"{name}={v!r} must be a positive finite number")
    return v


# --- approaches side by side ----------------------------------------------------------------

def _entry(a, b, a_iv, b_iv, level, **extra) -> dict:
    return {"a": float(a), "b": float(b), "a_interval": [float(v) for v in a_iv],
            "b_interval": [float(v) for v in b_iv], "level": level, **extra}


def _parametric_exponents(fit: FitResult, boot: BootstrapResult | None, C: np.ndarray,
                          flops: FlopsPerToken) -> dict:
    """a and b of approach 3 on the study's scale: the slopes of ln N_opt and ln D_opt
    against ln C over the budgets C, N_opt solved on f(N); with 6 N D beside."""
    opt = compute_optimal(fit, C, flops=flops)
    a, b = local_exponents(C, opt["N_opt"], opt["D_opt"])
    nan2 = (float("nan"), float("nan"))
    a_iv = b_iv = nan2
    level = 0.95
    if boot is not None:
        level = boot.level
        law = get_law(fit.law)
        samp = {k: np.asarray(boot.samples[k])[:, None] for k in law.param_names}
        closed = law.allocate(samp, C[None, :])
        if flops.is_6nd:
            Nb, Db = closed[0], closed[1]
        else:
            from scaling.analysis.flops import allocate
            Nb, Db, _ = allocate(law.formula, samp, C[None, :], flops, N_guess=closed[0])
        ab, bb = local_exponents(C, Nb, Db, axis=1)
        q = 100 * (1 - level) / 2
        a_iv = (float(np.nanpercentile(ab, q)), float(np.nanpercentile(ab, 100 - q)))
        b_iv = (float(np.nanpercentile(bb, q)), float(np.nanpercentile(bb, 100 - q)))
    six = {"a": fit.derived.get("a"), "b": fit.derived.get("b")}
    if boot is not None and "a" in boot.interval:
        six["a_interval"] = list(boot.interval["a"])
        six["b_interval"] = list(boot.interval["b"])
    return _entry(a, b, a_iv, b_iv, level, flops=flops.label,
                  budgets=[float(c) for c in C], at_6ND=six)


def compare_approaches(
    fit: FitResult | None = None,
    boot: BootstrapResult | None = None,
    iso: IsoFLOPResult | None = None,
    envelope: EnvelopeResult | None = None,
    data: Data | None = None,
    flops: FlopsPerToken | None = None,
) -> dict:
    """a (``N_opt ~ C^a``) and b (``D_opt ~ C^b``) from approach 1 (envelope), 2 (IsoFLOP)
    and 3 (parametric), each with its interval, and a named diagnostic when two disagree
    beyond their intervals (the intervals do not overlap).

    Approach 3's exponents are measured on the study's own FLOP scale (f(N), default
    ``iso.flops`` or read from ``data``) over the study's budgets (the IsoFLOP budgets used,
    else the span of ``data.C``), so that all three measure the same slope; the law's
    6 N D exponents are given beside, under ``at_6ND``.
    Returns {"envelope": ..., "isoflop": ..., "parametric": ..., "diagnostics": [...]} with
    the approaches given.
    """
    out: dict = {}
    if flops is None:
        flops = iso.flops if iso is not None else (
            FlopsPerToken.from_data(data) if data is not None else FlopsPerToken.six_n())
    if envelope is not None:
        out["envelope"] = _entry(envelope.a, envelope.b, envelope.a_interval,
                                 envelope.b_interval, envelope.level, n_boot=envelope.n_boot)
    if iso is not None:
        out["isoflop"] = _entry(iso.a, iso.b, iso.a_interval, iso.b_interval, iso.level,
                                n_budgets=iso.n_used)
    if fit is not None and fit.has_optimal:
        if iso is not None and iso.n_used >= 2:
            C = np.array(sorted(p.budget for p in iso.profiles if p.usable and p.interior))
        elif data is not None and "C" not in data.absent:
            C = np.geomspace(data.C.min(), data.C.max(), 5)
        else:
            C = np.geomspace(1e18, 1e22, 5)
        if C.size < 2 or C.max() <= C.min():
            C = np.geomspace(C.min(), C.min() * 100, 5)
        out["parametric"] = _parametric_exponents(fit, boot, C, flops)
    out["diagnostics"] = [d.to_json() for d in disagreements(out)]
    return out


def disagreements(approaches: dict) -> list[Diagnostic]:
    """``approaches_disagree`` for every pair of approaches whose intervals for a (or b) do
    not overlap. Approaches without a finite interval are not judged."""
    names = [k for k in ("envelope", "isoflop", "parametric") if k in approaches]
    out = []
    for i, x in enumerate(names):
        for y in names[i + 1:]:
            for q in ("a", "b"):
                lx, hx = approaches[x][f"{q}_interval"]
                ly, hy = approaches[y][f"{q}_interval"]
                if not all(np.isfinite([lx, hx, ly, hy])):
                    continue
                if hx < ly or hy < lx:
                    out.append(Diagnostic(
                        "approaches_disagree",
                        f"{q}: {x} gives {approaches[x][q]:.3f} [{lx:.3f}, {hx:.3f}], {y} "
                        f"gives {approaches[y][q]:.3f} [{ly:.3f}, {hy:.3f}]; the intervals do "
                        f"not overlap. Check each approach's diagnostics (an edge minimum, a "
                        f"poor fit, a narrow span of budgets) before trusting either"))
    return out
