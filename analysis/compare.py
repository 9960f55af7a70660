"""Is study B better than study A, and by how much, at scale? The compute multiplier.

Ho et al. (2024, "Algorithmic progress in language models") measure an improvement (a new
architecture, optimizer or data mix) as a compute multiplier: the factor ``k`` such that B at
compute ``C`` reaches the loss that A reaches at ``k C``, both allocating compute optimally.

Method. Both studies are fitted at once, as one law over the union of their runs with a study
indicator ``s(i)`` (:func:`pair_law`): every parameter of the law appears twice, ``E_A`` and
``E_B``, ``alpha_A`` and ``alpha_B``, and so on, and

    minimise  sum_i Huber_delta( log L_i - log L_law(N_i, D_i; theta_s(i)) )

The parameters shared between the studies (by default the exponents and E; each can be
switched off) are ties of the constraint machinery (``alpha_B = alpha_A``;
:mod:`scaling.analysis.constraints`), so the fit, its starts and the bootstrap reuse the
reparametrisation, the Huber objective and the batched L-BFGS of :mod:`scaling.analysis.fit`.
The scale terms (Chinchilla's A and B) are always separate. Then, with ``L*_s(C)`` the
compute-optimal loss of study s (``Law.allocate``) and ``C_s(L)`` its inverse,

    k(C) = C_A(L*_B(C)) / C        (at a compute C)
    k(L) = C_A(L) / C_B(L)         (at a loss L)

For Chinchilla with alpha, beta and E shared, ``L*(C) = E + G (C/6)^-gamma`` with
``gamma = alpha beta / (alpha + beta)`` in both studies, so k is the same at every C,
``k = (G_A / G_B)^(1/gamma)``; only a fit with separate exponents (or E) lets k change with
scale. That is why the comparison also reports the fit with the exponents separate and its
curve k(C), and tests whether sharing the exponents is consistent with the data, with the
likelihood-ratio-type test for Huber fits of :mod:`scaling.analysis.nested` (the fit with the
exponents shared nested in the one with them separate, E shared or not as chosen).

Intervals: a bootstrap that resamples runs (or clusters of runs, such as the checkpoints of one
parent run) with replacement within each study, refits, and takes percentiles of k.

The loss must mean the same thing in both studies: the same evaluation data and tokenizer.
:func:`read_data_identity` reads what the runs recorded (result.json's ``data_checksum``, the
hash of the data manifest; the manifest's validation split and tokenizer where the manifest is
readable; the data section of config.yaml) and :func:`check_same_data` compares them.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

from scaling.analysis.constraints import Constraints, Reparam, resolve
from scaling.analysis.data import Data
from scaling.analysis.diagnostics import Diagnostic
from scaling.analysis.errors import AnalysisError, cli_exit_code
from scaling.analysis.fit import SCREEN_ITERS, TIGHT, FitResult, fit_law, get_law
from scaling.analysis.forms import huber_value_and_grad
from scaling.analysis.laws import Law
from scaling.analysis.nested import NestedComparison, compare_nested
from scaling.analysis.optim import minimize_batch

STUDIES = ("A", "B")
LEVEL = 0.95
N_RESAMPLES = 1000
CURVE_POINTS = 41
# Starts of the joint fit run to convergence after the screen, besides the studies' own fits
# (which start next to the joint optimum: the studies differ in a few parameters only).
KEEP = 64
CURVE_BEYOND = 100.0  # the curve runs this factor past the largest compute of either study
# ln C the inversion C_s(L) searches, around the compute asked about: e^+-140 is 1e+-60, so a
# k outside it is reported as 0 or inf rather than a number.
SEARCH_LN = 140.0
BISECT_STEPS = 64
# Keys of the data config that change how data are loaded, not which data: left out of the
# config comparison.
LOADER_KEYS = ("num_workers", "streams", "cache_dir", "shard_samples")


# ---- the joint law --------------------------------------------------------------------------

def pair_law(law: Law) -> Law:
    """``law`` over the runs of two studies: each parameter twice, suffixed ``_A`` and ``_B``.

    ``L(N, D; theta_A, theta_B) = [law(N, D; theta_A), law(N, D; theta_B)]``

    The formula gives both studies' predictions, shape ``(2,) + broadcast(N, D).shape``; the
    log form reads the column ``is_b`` (True for study B's runs) and gives each run its own
    study's prediction, with the Jacobian in all ``2p`` internal parameters (zero in the other
    study's). Bounds, logged flags and the start grid are the law's, twice.
    """
    if law.inputs != ("N", "D") or law.optimal is None:
        raise AnalysisError(f"law {law.name} has no compute-optimal allocation, so no compute "
                            f"multiplier; compare with a law in N and D such as chinchilla")
    p = law.n_params
    names = [f"{n}_{s}" for s in STUDIES for n in law.param_names]

    def formula(N, D, **params):
        return np.stack([law(N, D, **{n: params[f"{n}_{s}"] for n in law.param_names})
                         for s in STUDIES])

    formula.__signature__ = inspect.Signature(
        [inspect.Parameter(x, inspect.Parameter.POSITIONAL_OR_KEYWORD) for x in ("N", "D")]
        + [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY) for n in names])
    formula.__doc__ = (f"{law.name} for two studies: parameters NAME_A for study A's runs and "
                       f"NAME_B for study B's.\n\n{inspect.getdoc(law.formula)}")

    def log_pred(theta, cols):
        b = np.asarray(cols["is_b"], dtype=bool)
        n = b.shape[0]
        lp = np.empty((theta.shape[0], n))
        jac = [np.zeros((theta.shape[0], n)) for _ in range(2 * p)]
        for k, rows in enumerate((~b, b)):
            if not rows.any():
                continue
            sub = {key: cols[key][rows] for key in ("lnN", "lnD")}
            lk, jk = law.log_pred(theta[:, k * p:(k + 1) * p], sub)
            lp[:, rows] = lk
            for j, d in enumerate(jk):
                jac[k * p + j][:, rows] = d
        return lp, jac

    def grid(cols):
        rows = law.default_grid(cols)
        return np.concatenate([rows, rows], axis=1)  # both studies start at the same point

    return Law(
        name=f"{law.name}[A|B]",
        formula=formula,
        theta_names=tuple(f"{t}_{s}" for s in STUDIES for t in law.theta_names),
        encodes=tuple(f"{e}_{s}" for s in STUDIES for e in law.encodes),
        logged=tuple(law.logged) * 2,
        log_pred=log_pred,
        lower=np.concatenate([law.lower, law.lower]),
        upper=np.concatenate([law.upper, law.upper]),
        default_grid=grid,
    )


def default_shared(law: Law) -> tuple[str, ...]:
    """The parameters shared by default: the exponents (the law's parameters that are not
    log-scale ones) and the loss floor E where the law has one; the scale terms stay apart."""
    exps = [n for n, lg in zip(law.encodes, law.logged) if not lg]
    return tuple(n for n in law.param_names if n in exps or n == "E")


def exponents(law: Law) -> tuple[str, ...]:
    """The law's exponents: its parameters that are not log-scale ones."""
    return tuple(n for n in law.param_names
                 if not law.logged[law.encodes.index(n)])


def _ties(shared: Sequence[str]) -> dict[str, str]:
    return {f"{n}_B": f"{n}_A" for n in shared}


def _check_shared(law: Law, shared: Sequence[str]) -> tuple[str, ...]:
    unknown = [n for n in shared if n not in law.param_names]
    if unknown:
        raise AnalysisError(f"--shared {','.join(shared)}: {', '.join(unknown)} is not a parameter "
                            f"of {law.name}; choose among {', '.join(law.param_names)}, or none")
    if set(shared) == set(law.param_names):
        raise AnalysisError(f"--shared {','.join(shared)} shares every parameter of {law.name}, "
                            f"so the studies could not differ; leave the scale terms out")
    return tuple(n for n in law.param_names if n in shared)  # the law's order, no repeats


# ---- the joint fit ----------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class JointFit:
    """Both studies fitted at once; immutable.

    params: the pair law's public parameters (``E_A``, ``alpha_B``, ...); params_a and
    params_b: each study's parameters under the law's own names; shared: the parameters tied
    between the studies; objective: the summed Huber loss over both studies' runs; residuals:
    log L_obs - log L_fit, study A's runs first.
    """

    law: str
    shared: tuple[str, ...]
    params: Mapping[str, float]
    params_a: Mapping[str, float]
    params_b: Mapping[str, float]
    theta: tuple[float, ...]
    free: tuple[str, ...]
    objective: float
    n_a: int
    n_b: int
    delta: float
    residuals: np.ndarray
    rmse_log: float
    converged: bool
    n_starts: int
    diagnostics: tuple[Diagnostic, ...]

    def to_json(self) -> dict:
        return {"shared": list(self.shared), "params_A": dict(self.params_a),
                "params_B": dict(self.params_b), "free": list(self.free),
                "objective": self.objective, "rmse_log": self.rmse_log,
                "n_runs": {"A": self.n_a, "B": self.n_b}, "converged": self.converged,
                "diagnostics": [d.to_json() for d in self.diagnostics]}


@dataclass(frozen=True)
class _Problem:
    """The union of two studies' runs as the pair law sees it."""

    base: Law
    law: Law
    cols: dict
    y: np.ndarray
    n_a: int
    n_b: int
    delta: float


def _problem(data_a: Data, data_b: Data, law: str, delta: float) -> _Problem:
    base = get_law(law)
    pair = pair_law(base)
    for name, d in zip(STUDIES, (data_a, data_b)):
        need = base.n_params + 1
        if not isinstance(d, Data):
            raise AnalysisError(f"study {name} is a {type(d).__name__}; pass analysis.Data "
                                f"(from load_runs or Data.from_arrays)")
        if len(d) < need:
            raise AnalysisError(
                f"study {name} has {len(d)} runs; comparing with its exponents separate (the "
                f"test of sharing them) needs at least {need} per study for {base.name}; add runs")
    N = np.concatenate([data_a.N, data_b.N])
    D = np.concatenate([data_a.D, data_b.D])
    is_b = np.r_[np.zeros(len(data_a), bool), np.ones(len(data_b), bool)]
    cols = {"lnN": np.log(N), "lnD": np.log(D), "is_b": is_b}
    y = np.log(np.concatenate([data_a.loss, data_b.loss]))
    if not (isinstance(delta, (int, float)) and math.isfinite(delta) and delta > 0):
        raise AnalysisError(f"delta={delta!r} must be a positive number (default 1e-3)")
    return _Problem(base, pair, cols, y, len(data_a), len(data_b), float(delta))


def _fg(prob: _Problem, rep: Reparam, weights: np.ndarray | None = None):
    def fg(z, rows):
        w = None if weights is None else weights[rows]
        theta, jac = rep.expand(z, jacobian=True)
        f, g = huber_value_and_grad(prob.law, theta, prob.cols, prob.y, prob.delta, w)
        return f, rep.pullback(g, jac)
    return fg


def fit_joint(
    data_a: Data,
    data_b: Data,
    law: str = "chinchilla",
    shared: Sequence[str] | None = None,
    delta: float = 1e-3,
    extra_starts: Sequence[Mapping[str, float]] = (),
    own_fits: tuple[FitResult, FitResult] | None = None,
) -> JointFit:
    """Fit ``law`` to two studies at once, with the parameters ``shared`` tied between them.

    ``min sum_{i in A} H(log L_i - log L(N_i, D_i; theta_A)) + sum_{i in B} H(log L_i -
    log L(N_i, D_i; theta_B))`` subject to ``theta_A[k] = theta_B[k]`` for k in shared, with
    ``H`` the Huber loss at ``delta`` on log loss.

    shared: public names (default :func:`default_shared`: alpha, beta and E for chinchilla).
    Starts: the law's grid with both studies at each point, each study's own fit
    (:func:`scaling.analysis.fit.fit_law`), and ``extra_starts`` (pair-law public parameters,
    e.g. another joint fit's ``params``). Every start takes a few steps, the best
    ``KEEP`` and the studies' own fits run to convergence, and the best is polished.
    own_fits: the studies' own fits of ``law`` at ``delta``, when the caller has them.
    """
    prob = _problem(data_a, data_b, law, delta)
    base = prob.base
    shared = default_shared(base) if shared is None else _check_shared(base, shared)
    rep = resolve(prob.law, Constraints(tie=_ties(shared)))

    own = own_fits or [fit_law(d, law=law, delta=delta) for d in (data_a, data_b)]
    ta, tb = (np.asarray(f.theta) for f in own)
    rows = [prob.law.default_grid({**prob.cols, "lny": prob.y}),
            np.array([np.r_[ta, tb], np.r_[ta, ta], np.r_[tb, tb]])]
    for params in extra_starts:
        rows.append(_public_to_theta(prob.law, params)[None, :])
    starts = rep.starts(np.concatenate(rows))
    fg = _fg(prob, rep)
    keep = KEEP
    first = minimize_batch(fg, starts, rep.lower, rep.upper, maxiter=SCREEN_ITERS)
    fun = np.where(np.isfinite(first.fun), first.fun, np.inf)
    chosen = np.argsort(fun, kind="stable")[:keep]
    # The starts from the studies' own fits and the extra ones always run to convergence.
    chosen = np.union1d(chosen, np.arange(starts.shape[0])[-(3 + len(extra_starts)):])
    res = minimize_batch(fg, starts[chosen], rep.lower, rep.upper)
    fun = np.where(np.isfinite(res.fun), res.fun, np.inf)
    best = int(np.argmin(fun))
    polished = minimize_batch(fg, res.x[best:best + 1], rep.lower, rep.upper, **TIGHT)
    z, objective = res.x[best], float(fun[best])
    if polished.fun[0] <= objective:
        z, objective = polished.x[0], float(polished.fun[0])
    return _joint_result(prob, rep, shared, z, objective, bool(res.converged[best]),
                         int(starts.shape[0]))


def _joint_result(prob, rep, shared, z, objective, converged, n_starts) -> JointFit:
    law, base = prob.law, prob.base
    theta = rep.expand(np.asarray(z)[None, :])[0]
    public = law.to_public(theta[None, :])[0]
    params = {k: float(v) for k, v in zip(law.param_names, public)}
    lp, _ = law.log_pred(theta[None, :], prob.cols)
    residuals = prob.y - lp[0]
    diags = []
    pinned = [name for name, t, lo, hi in zip(rep.free_theta_names, z, rep.lower, rep.upper)
              if t <= lo + 1e-5 * max(1.0, abs(lo)) or t >= hi - 1e-5 * max(1.0, abs(hi))]
    if pinned:
        diags.append(Diagnostic("param_at_bound", f"{', '.join(pinned)} sits at the optimiser's "
                                f"bound; the law may not suit one of the studies"))
    if not converged:
        diags.append(Diagnostic("not_converged", "the best start hit the iteration limit"))
    return JointFit(
        law=base.name, shared=tuple(shared), params=MappingProxyType(params),
        params_a=MappingProxyType({n: params[f"{n}_A"] for n in base.param_names}),
        params_b=MappingProxyType({n: params[f"{n}_B"] for n in base.param_names}),
        theta=tuple(float(t) for t in theta), free=rep.free, objective=float(objective),
        n_a=prob.n_a, n_b=prob.n_b, delta=prob.delta, residuals=residuals,
        rmse_log=float(np.sqrt(np.mean(residuals ** 2))), converged=converged,
        n_starts=n_starts, diagnostics=tuple(diags),
    )


def _public_to_theta(law: Law, params: Mapping[str, float]) -> np.ndarray:
    return np.array([math.log(params[e]) if lg else float(params[e])
                     for e, lg in zip(law.encodes, law.logged)])


# ---- the bootstrap ----------------------------------------------------------------------------

def resample_weights(
    n_a: int,
    n_b: int,
    n_resamples: int,
    seed: int = 0,
    clusters_a: ArrayLike | None = None,
    clusters_b: ArrayLike | None = None,
) -> np.ndarray:
    """(n_resamples, n_a + n_b) counts: each study's runs resampled with replacement within
    that study, so that every resample keeps both studies' sizes.

    clusters_a / clusters_b: a label per run (e.g. the parent run whose checkpoints or decays
    the rows are); then whole clusters are drawn with replacement, as many as the study has,
    and each run counts as often as its cluster was drawn.
    """
    rng = np.random.default_rng(seed)
    blocks = []
    for n, labels in ((n_a, clusters_a), (n_b, clusters_b)):
        if labels is None:
            blocks.append(rng.multinomial(n, np.full(n, 1.0 / n), size=n_resamples))
            continue
        labels = np.asarray(labels)
        if labels.shape != (n,):
            raise AnalysisError(f"clusters has {labels.shape} labels for {n} runs; give one per run")
        _, inverse = np.unique(labels, return_inverse=True)
        m = int(inverse.max()) + 1
        drawn = rng.multinomial(m, np.full(m, 1.0 / m), size=n_resamples)
        blocks.append(drawn[:, inverse])
    return np.concatenate(blocks, axis=1).astype(float)


def bootstrap_joint(data_a: Data, data_b: Data, fit: JointFit, weights: np.ndarray) -> dict:
    """Refit ``fit`` on each row of ``weights`` (from :func:`resample_weights`), all resamples
    together from the full-data optimum: {"A": {name: samples}, "B": {...}, "converged": n}."""
    prob = _problem(data_a, data_b, fit.law, fit.delta)
    if weights.shape[1] != prob.n_a + prob.n_b:
        raise AnalysisError(f"weights have {weights.shape[1]} columns for "
                            f"{prob.n_a + prob.n_b} runs; build them with resample_weights")
    rep = resolve(prob.law, Constraints(tie=_ties(fit.shared)))
    x0 = np.tile(rep.reduce(np.asarray(fit.theta)[None, :]), (weights.shape[0], 1))
    res = minimize_batch(_fg(prob, rep, weights), x0, rep.lower, rep.upper, **TIGHT)
    public = prob.law.to_public(rep.expand(res.x))
    cols = {n: public[:, i] for i, n in enumerate(prob.law.param_names)}
    return {s: {n: cols[f"{n}_{s}"] for n in prob.base.param_names} for s in STUDIES} | {
        "converged": int(res.converged.sum())}


# ---- the multiplier ---------------------------------------------------------------------------

def optimal_loss(law: Law, params: Mapping[str, ArrayLike], C: ArrayLike) -> np.ndarray:
    """``L*(C)``: the loss at compute C [FLOPs] under the compute-optimal allocation
    (``Law.allocate``); arrays broadcast."""
    with np.errstate(all="ignore"):
        return np.asarray(law.allocate(params, C)[2], dtype=float)


def compute_to_reach(law: Law, params: Mapping[str, ArrayLike], loss: ArrayLike,
                     C_ref: ArrayLike) -> np.ndarray:
    """``C(L)``: the compute [FLOPs] at which ``L*(C) = loss``, the inverse of
    :func:`optimal_loss` (which falls with C), by bisection in ln C within ``C_ref e^+-140``;
    inf where the loss is not reached by then (at or below the floor), 0 where it is reached
    before. Arrays broadcast."""
    loss = np.asarray(loss, dtype=float)
    ln_ref = np.log(np.asarray(C_ref, dtype=float))
    lo = np.broadcast_to(ln_ref - SEARCH_LN, np.broadcast(loss, ln_ref).shape).copy()
    hi = lo + 2 * SEARCH_LN
    above_lo = optimal_loss(law, params, np.exp(lo)) > loss  # not reached yet at the low end
    reached_hi = optimal_loss(law, params, np.exp(hi)) <= loss
    for _ in range(BISECT_STEPS):
        mid = 0.5 * (lo + hi)
        not_yet = optimal_loss(law, params, np.exp(mid)) > loss
        lo = np.where(not_yet, mid, lo)
        hi = np.where(not_yet, hi, mid)
    out = np.exp(0.5 * (lo + hi))
    out = np.where(reached_hi, out, np.inf)
    return np.where(above_lo, out, 0.0)


def multiplier_at_compute(law: Law, params_a, params_b, C: ArrayLike) -> np.ndarray:
    """``k(C) = C_A(L*_B(C)) / C``: how much more compute A needs for the loss B reaches at C."""
    C = np.asarray(C, dtype=float)
    return compute_to_reach(law, params_a, optimal_loss(law, params_b, C), C) / C


def multiplier_at_loss(law: Law, params_a, params_b, loss: ArrayLike) -> np.ndarray:
    """``k(L) = C_A(L) / C_B(L)``: the ratio of the computes A and B need to reach loss L."""
    C_b = compute_to_reach(law, params_b, loss, 1e20)
    with np.errstate(invalid="ignore", divide="ignore"):
        return compute_to_reach(law, params_a, loss, np.where(np.isfinite(C_b) & (C_b > 0), C_b, 1e20)) / C_b


# ---- the comparison ---------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Multiplier:
    """k at one compute or one loss, with its bootstrap interval (percentiles at ``level``)."""

    at: str  # "compute" or "loss"
    value: float  # the compute [FLOPs] or the loss [nats]
    k: float
    interval: tuple[float, float]
    level: float

    def to_json(self) -> dict:
        return {"at": self.at, "value": self.value, "k": self.k,
                "interval": list(self.interval), "level": self.level}


@dataclass(frozen=True, eq=False)
class Curve:
    """k(C) over a grid of computes, with a pointwise bootstrap band."""

    C: np.ndarray
    k: np.ndarray
    low: np.ndarray
    high: np.ndarray
    max_data_C: float  # the largest compute of either study: beyond it the curve extrapolates

    def to_json(self) -> dict:
        return {"C": self.C, "k": self.k, "low": self.low, "high": self.high,
                "max_data_C": self.max_data_C}


@dataclass(frozen=True, eq=False)
class SharingTest:
    """Is sharing the exponents consistent with the data? The fit with them shared against
    the fit with them separate (E shared or not as in both), by
    :func:`scaling.analysis.nested.compare_nested`."""

    tested: tuple[str, ...]
    nested: NestedComparison

    @property
    def verdict(self) -> str:
        return "consistent" if self.nested.consistent else "rejected"

    def sentence(self) -> str:
        n = self.nested
        what = ", ".join(self.tested)
        if n.consistent:
            tail = "consistent with the data: one set of exponents describes both studies"
        else:
            tail = ("rejected by the data: the studies scale differently, so the multiplier "
                    "changes with scale; read the curve with the exponents separate")
        return (f"Sharing {what} between A and B: S = {n.statistic:.3g} on {n.q} restriction(s), "
                f"p = {n.p_value:.3g}, {tail} (level {n.level:g}).")

    def to_json(self) -> dict:
        return {"name": "shared_exponents", "tested": list(self.tested), "verdict": self.verdict,
                **self.nested.to_json()}


@dataclass(frozen=True, eq=False)
class Comparison:
    """The compute multiplier of B over A: the joint fit, k at one point and over C, the
    same with the exponents separate, and the test of sharing them."""

    law: str
    fit: JointFit
    at: Multiplier
    curve: Curve
    fit_separate: JointFit | None  # the exponents separate (None when none is shared)
    curve_separate: Curve | None
    test: SharingTest | None
    n_resamples: int
    n_converged: int
    seed: int
    clustered: bool
    diagnostics: tuple[Diagnostic, ...]

    def to_json(self) -> dict:
        return {
            "law": self.law, "definition": "B at compute C reaches the loss A reaches at k*C, "
            "both at the compute-optimal allocation",
            "shared": list(self.fit.shared), "multiplier": self.at.to_json(),
            "curve": self.curve.to_json(), "fit": self.fit.to_json(),
            "fit_exponents_separate": self.fit_separate.to_json() if self.fit_separate else None,
            "curve_exponents_separate": self.curve_separate.to_json() if self.curve_separate else None,
            "sharing_test": self.test.to_json() if self.test else None,
            "bootstrap": {"n_resamples": self.n_resamples, "n_converged": self.n_converged,
                          "seed": self.seed, "resampled": "clusters within each study"
                          if self.clustered else "runs within each study"},
            "diagnostics": [d.to_json() for d in self.diagnostics],
        }


def _percentiles(samples: np.ndarray, level: float, axis=0):
    lo_q, hi_q = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    with np.errstate(all="ignore"):
        s = np.log(np.asarray(samples, dtype=float))  # in log k: inf and 0 stay ordered
        lo = np.nanpercentile(s, lo_q, axis=axis, method="lower")
        hi = np.nanpercentile(s, hi_q, axis=axis, method="higher")
    return np.exp(lo), np.exp(hi)


def compare_studies(
    data_a: Data,
    data_b: Data,
    law: str = "chinchilla",
    shared: Sequence[str] | None = None,
    at_loss: float | None = None,
    at_compute: float | None = None,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
    delta: float = 1e-3,
    clusters_a: ArrayLike | None = None,
    clusters_b: ArrayLike | None = None,
    test_level: float = 0.05,
) -> Comparison:
    """The compute multiplier of study B over study A (see the module docstring).

    at_loss / at_compute: where the single number is taken (one of them; default the largest
    compute [FLOPs] among both studies' runs). n_resamples: bootstrap resamples of runs (or of
    ``clusters_a`` / ``clusters_b``, a label per run) within each study. The curve runs from
    the smallest compute of the runs to ``CURVE_BEYOND`` times the largest.
    """
    if at_loss is not None and at_compute is not None:
        raise AnalysisError("give --at-loss or --at-compute, not both")
    if n_resamples < 2:
        raise AnalysisError(f"n_resamples={n_resamples} must be at least 2 (e.g. 1000)")
    if not 0 < level < 1:
        raise AnalysisError(f"level={level} must be in (0, 1), e.g. 0.95")
    base = get_law(law)
    shared = default_shared(base) if shared is None else _check_shared(base, shared)
    _problem(data_a, data_b, law, delta)  # the studies' sizes and delta, before any fit
    own = (fit_law(data_a, law=law, delta=delta), fit_law(data_b, law=law, delta=delta))
    fit = fit_joint(data_a, data_b, law, shared, delta, own_fits=own)
    if at_loss is not None:
        floors = [optimal_loss(base, p, 1e60) for p in (fit.params_a, fit.params_b)]
        if not at_loss > max(floors):
            raise AnalysisError(f"--at-loss {at_loss:g} is at or below a study's fitted floor "
                                f"(A {floors[0]:.4g}, B {floors[1]:.4g}); pick a loss above both")
    elif at_compute is not None and not (math.isfinite(at_compute) and at_compute > 0):
        raise AnalysisError(f"--at-compute {at_compute!r} must be positive FLOPs, e.g. 1e21")
    tested = tuple(n for n in fit.shared if n in exponents(base))
    separate = test = None
    if tested:
        separate = fit_joint(data_a, data_b, law, [n for n in fit.shared if n not in tested],
                             delta, extra_starts=[fit.params], own_fits=own)
        test = SharingTest(tested, compare_nested(_as_fit(fit, tested), _as_fit(separate, ()),
                                                  test_level))

    C_all = np.concatenate([data_a.C, data_b.C])
    if at_loss is None and at_compute is None:
        at_compute = float(C_all.max())
    weights = resample_weights(len(data_a), len(data_b), n_resamples, seed, clusters_a, clusters_b)
    boot = bootstrap_joint(data_a, data_b, fit, weights)
    diags = list(fit.diagnostics)
    n_conv = boot["converged"]
    if n_conv < n_resamples:
        diags.append(Diagnostic("bootstrap_not_converged", f"{n_resamples - n_conv} of "
                                f"{n_resamples} resamples stopped before converging"))
    sa, sb = ({k: v[:, None] for k, v in boot[s].items()} for s in STUDIES)
    if at_loss is not None:
        k = float(multiplier_at_loss(base, fit.params_a, fit.params_b, at_loss))
        ks = multiplier_at_loss(base, sa, sb, at_loss)[:, 0]
        where, value = "loss", float(at_loss)
    else:
        k = float(multiplier_at_compute(base, fit.params_a, fit.params_b, at_compute))
        ks = multiplier_at_compute(base, sa, sb, at_compute)[:, 0]
        where, value = "compute", float(at_compute)
    at = Multiplier(where, value, k, tuple(float(v) for v in _percentiles(ks, level)), level)
    grid = np.geomspace(C_all.min(), C_all.max() * CURVE_BEYOND, CURVE_POINTS)
    curve = _curve(base, fit, boot, grid, level, float(C_all.max()))
    curve_sep = None
    if separate is not None:
        boot_sep = bootstrap_joint(data_a, data_b, separate, weights)
        curve_sep = _curve(base, separate, boot_sep, grid, level, float(C_all.max()))
    return Comparison(law=law, fit=fit, at=at, curve=curve, fit_separate=separate,
                      curve_separate=curve_sep, test=test, n_resamples=n_resamples,
                      n_converged=n_conv, seed=seed,
                      clustered=clusters_a is not None or clusters_b is not None,
                      diagnostics=tuple(diags))


def _curve(base: Law, fit: JointFit, boot: dict, C: np.ndarray, level: float,
           max_data_C: float) -> Curve:
    k = multiplier_at_compute(base, fit.params_a, fit.params_b, C)
    sa, sb = ({n: v[:, None] for n, v in boot[s].items()} for s in STUDIES)
    low, high = _percentiles(multiplier_at_compute(base, sa, sb, C[None, :]), level)
    return Curve(C=C, k=k, low=low, high=high, max_data_C=max_data_C)


def _as_fit(fit: JointFit, tested: tuple[str, ...]) -> FitResult:
    """The joint fit as the one fit of the pair law that it is, for compare_nested; its
    constraints name only the ties under test (the other ties are in both fits)."""
    return FitResult(
        law=f"{fit.law}[A|B]", x=None, params=fit.params, theta=fit.theta,
        objective=fit.objective, n_points=fit.n_a + fit.n_b, delta=fit.delta,
        converged=fit.converged, n_starts=fit.n_starts, n_starts_run=fit.n_starts,
        n_starts_converged=0, best_start=(), best_start_on_edge=False, at_bound=(),
        residuals=fit.residuals, rmse_log=fit.rmse_log, r2_log=float("nan"),
        derived=MappingProxyType({}), diagnostics=fit.diagnostics,
        constraints=Constraints(tie=_ties(tested)), free=fit.free,
    )


# ---- is the loss the same loss? ---------------------------------------------------------------

@dataclass(frozen=True)
class DataIdentity:
    """What a study's runs recorded about their data.

    checksums: result.json's ``data_checksum`` (the hash of the whole data manifest: shards of
    every split, tokenizer, sequence length); eval_ids: the validation split's shards and the
    tokenizer, read from the manifest where the run's ``data.path`` holds a readable one;
    configs: the data section of each run's config.yaml (loader-only keys left out);
    eval_tokens: ``train.eval_tokens`` (how much of the validation split each evaluation reads).
    Each is the set of distinct values over the study's completed runs; ``missing`` counts, per
    kind, the runs that recorded none.
    """

    study: str
    n_runs: int
    checksums: frozenset[str] = frozenset()
    eval_ids: frozenset[str] = frozenset()
    configs: frozenset[str] = frozenset()
    eval_tokens: frozenset[str] = frozenset()
    missing: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class DataCheck:
    """Whether two studies' losses are measured on the same evaluation data and tokenizer.

    same: True, False, or None when nothing recorded lets it be checked; basis: what was
    compared; notes: caveats (e.g. a study whose runs disagree among themselves).
    """

    same: bool | None
    basis: str
    message: str
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return {"same": self.same, "basis": self.basis, "message": self.message,
                "notes": list(self.notes)}


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def _read_yaml(path: Path) -> dict | None:
    if not path.is_file():
        return None
    import yaml  # PyYAML, which the trainer's config already needs

    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return raw if isinstance(raw, dict) else None


def _eval_id(data_cfg: dict) -> str | None:
    """The validation split's shards and the tokenizer, from the manifest at ``data.path``
    (a local folder); None when there is none to read."""
    path = data_cfg.get("path")
    if not path:
        return None
    manifest = Path(str(path)) / "manifest.json"
    try:
        raw = json.loads(manifest.read_text())
        val = raw["splits"]["val"]["shards"]
        return _canonical({"val": [(s["name"], s["sha256"]) for s in val],
                           "tokenizer": raw.get("tokenizer"), "seq_len": raw.get("seq_len"),
                           "kind": raw.get("kind"), "image": raw.get("image")})
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _recorded(result, key: str):
    """A value of a run's result, read as a record or as the mapping older readers return."""
    value = result.get(key) if isinstance(result, Mapping) else getattr(result, key, None)
    return getattr(value, "value", value)  # a status enum as its string


def read_data_identity(folder: str | os.PathLike, name: str,
                       include_unplanned: bool = False) -> DataIdentity:
    """Read what the completed runs of the study in ``folder`` recorded about their data
    (see :class:`DataIdentity`); the runs are those the fit reads (``io.select_runs``)."""
    from scaling.analysis import io

    dirs, _ = io.select_runs(folder, include_unplanned)
    found = {"checksums": set(), "eval_ids": set(), "configs": set(), "eval_tokens": set()}
    missing = dict.fromkeys(found, 0)
    n = 0
    for run in dirs:
        try:
            res = io.read_result(run)
        except AnalysisError:
            continue
        if res is None or _recorded(res, "status") != "completed":
            continue
        n += 1
        values = {"checksums": _recorded(res, "data_checksum")}
        cfg = _read_yaml(Path(run) / "config.yaml") or {}
        data_cfg = cfg.get("data") if isinstance(cfg.get("data"), dict) else None
        train_cfg = cfg.get("train") if isinstance(cfg.get("train"), dict) else {}
        values["configs"] = None if data_cfg is None else _canonical(
            {k: v for k, v in data_cfg.items() if k not in LOADER_KEYS})
        values["eval_ids"] = None if data_cfg is None else _eval_id(data_cfg)
        et = train_cfg.get("eval_tokens")
        values["eval_tokens"] = None if et is None else f"{float(et):g}"
        for key, v in values.items():
            if v is None:
                missing[key] += 1
            else:
                found[key].add(str(v))
    return DataIdentity(study=name, n_runs=n, missing=MappingProxyType(missing),
                        **{k: frozenset(v) for k, v in found.items()})


def check_same_data(a: DataIdentity, b: DataIdentity) -> DataCheck:
    """Compare what two studies recorded about their evaluation data and tokenizer, strongest
    evidence first: the manifest checksum (equal means the same data, tokenizer included); the
    validation split and tokenizer read from the manifests (training data may differ, as in a
    comparison of data mixes); else the data config, which is all some runs record."""
    notes = []
    for s in (a, b):
        for key, what in (("checksums", "data checksums"), ("eval_ids", "evaluation splits"),
                          ("configs", "data configs")):
            values = getattr(s, key)
            if len(values) > 1:
                notes.append(f"study {s.study}'s runs record {len(values)} different {what}")
            if values and s.missing.get(key):
                notes.append(f"{s.missing[key]} of study {s.study}'s {s.n_runs} runs record no "
                             f"{what[:-1]}")
    if a.eval_tokens and b.eval_tokens and a.eval_tokens != b.eval_tokens:
        notes.append(f"the evaluations read different amounts of the validation split "
                     f"(train.eval_tokens {sorted(a.eval_tokens)} in A, {sorted(b.eval_tokens)} "
                     f"in B): the same data, but different samples of it")
    fix = ("compare studies evaluated on the same data, or pass --allow-different-data if you "
           "know the losses are comparable")
    if a.checksums and b.checksums and a.checksums == b.checksums:
        return DataCheck(True, "data manifest checksum (result.json data_checksum)",
                         f"both studies trained and evaluated on data with checksum "
                         f"{', '.join(sorted(a.checksums))}", tuple(notes))
    if a.eval_ids and b.eval_ids:
        same = a.eval_ids == b.eval_ids
        basis = "validation split shards and tokenizer, from the data manifests"
        if same:
            return DataCheck(True, basis, "the studies share their validation split and tokenizer"
                             + (" (their training data differ)" if a.checksums != b.checksums
                                else ""), tuple(notes))
        return DataCheck(False, basis, "the studies' validation splits or tokenizers differ "
                         "(read from their data manifests); their losses are not the same "
                         f"quantity; {fix}", tuple(notes))
    if a.checksums and b.checksums:
        return DataCheck(False, "data manifest checksum (result.json data_checksum)",
                         f"the studies' data differ (checksums {', '.join(sorted(a.checksums))} "
                         f"in A, {', '.join(sorted(b.checksums))} in B) and no readable manifest "
                         f"shows that only their training data differ; {fix}", tuple(notes))
    if a.configs and b.configs:
        basis = "data config in config.yaml only (no checksum or manifest recorded)"
        if a.configs == b.configs:
            return DataCheck(True, basis, "the studies' data configs are the same (checked from "
                             "the config alone: a dataset changed in place would pass)",
                             tuple(notes))
        diff = _config_diff(a.configs, b.configs)
        return DataCheck(False, basis, f"the studies' data configs differ ({diff}); {fix}",
                         tuple(notes))
    return DataCheck(None, "nothing recorded", "the runs record no data checksum, manifest or "
                     f"data config, so the evaluation data cannot be checked; {fix}", tuple(notes))


def _config_diff(a: frozenset[str], b: frozenset[str]) -> str:
    if len(a) != 1 or len(b) != 1:
        return "the runs within a study already disagree"
    ca, cb = json.loads(next(iter(a))), json.loads(next(iter(b)))
    keys = sorted(k for k in set(ca) | set(cb) if ca.get(k) != cb.get(k))
    return ", ".join(f"data.{k}={ca.get(k)!r} in A, {cb.get(k)!r} in B" for k in keys)


# ---- the report -------------------------------------------------------------------------------

def _k(v: float) -> str:
    return "inf" if v == math.inf else f"{v:.3g}"


def format_markdown(cmp: Comparison, names: tuple[str, str], check: DataCheck | None) -> str:
    """compare.md: the multiplier, its interval, the curve in a few rows, the test, the fits."""
    a, b = names
    m = cmp.at
    unit = "FLOPs" if m.at == "compute" else "nats"
    lines = [
        f"# Compute multiplier of B over A", "",
        f"- A: `{a}`", f"- B: `{b}`", "",
        f"**k = {_k(m.k)}** ({m.level:.0%} interval {_k(m.interval[0])} to {_k(m.interval[1])}) "
        f"at {m.at} {m.value:.3g} {unit}: "
        + (f"B at {m.value:.3g} FLOPs reaches the loss A reaches at {_k(m.k)} times that compute."
           if m.at == "compute" else
           f"A needs {_k(m.k)} times the compute B needs to reach loss {m.value:.4g}."),
        "",
        f"Law {cmp.law}, fitted to both studies at once with "
        f"{', '.join(cmp.fit.shared) or 'nothing'} shared and the other parameters separate. "
        f"Bootstrap: {cmp.n_resamples} resamples of "
        f"{'clusters' if cmp.clustered else 'runs'} within each study "
        f"({cmp.n_converged} converged).", "",
    ]
    if check is not None:
        lines += [f"Evaluation data: {check.message} (checked from: {check.basis}).", ""]
        lines += [f"- note: {n}" for n in check.notes] + ([""] if check.notes else [])
    if cmp.test is not None:
        lines += ["## Sharing the exponents", "", cmp.test.sentence(), ""]
    lines += ["## k against compute", "",
              "| C [FLOPs] | k (shared) | interval |"
              + (" k (exponents separate) | interval |" if cmp.curve_separate else ""),
              "|---|---|---|" + ("---|---|" if cmp.curve_separate else "")]
    c = cmp.curve
    for i in range(0, len(c.C), max(1, len(c.C) // 8)):
        row = (f"| {c.C[i]:.3g}{' (extrapolated)' if c.C[i] > c.max_data_C * 1.0001 else ''} "
               f"| {_k(c.k[i])} | {_k(c.low[i])}-{_k(c.high[i])} |")
        if cmp.curve_separate is not None:
            s = cmp.curve_separate
            row += f" {_k(s.k[i])} | {_k(s.low[i])}-{_k(s.high[i])} |"
        lines.append(row)
    lines.append("")
    base = get_law(cmp.law)
    if set(exponents(base)) <= set(cmp.fit.shared) and ("E" in cmp.fit.shared
                                                        or "E" not in base.param_names):
        lines += ["With the exponents and E shared the law makes k the same at every compute; "
                  "the column with the exponents separate shows whether the data say otherwise.",
                  ""]
    lines += ["## Fits", "", "| parameter | A | B |", "|---|---|---|"]
    for n in cmp.fit.params_a:
        lines.append(f"| {n}{' (shared)' if n in cmp.fit.shared else ''} "
                     f"| {cmp.fit.params_a[n]:.4g} | {cmp.fit.params_b[n]:.4g} |")
    lines += ["", f"RMSE of log loss {cmp.fit.rmse_log:.3g} over {cmp.fit.n_a} + {cmp.fit.n_b} runs."]
    if cmp.diagnostics:
        lines += ["", "## Diagnostics", ""] + [f"- {d.code}: {d.message}" for d in cmp.diagnostics]
    return "\n".join(lines) + "\n"


def plot_frontiers(ax, data_a: Data, data_b: Data, cmp: Comparison, names=("A", "B")):
    """Both studies' runs (loss against C) and their fitted compute-optimal frontiers L*(C)."""
    law = get_law(cmp.law)
    C = np.geomspace(min(data_a.C.min(), data_b.C.min()), cmp.curve.max_data_C * 10, 200)
    for d, params, name, color in ((data_a, cmp.fit.params_a, names[0], "tab:blue"),
                                   (data_b, cmp.fit.params_b, names[1], "tab:orange")):
        ax.scatter(d.C, d.loss, s=12, alpha=0.6, color=color, label=f"{name} runs")
        ax.plot(C, optimal_loss(law, params, C), color=color, label=f"{name} frontier L*(C)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training compute C [FLOPs]")
    ax.set_ylabel("loss [nats/token]")
    ax.legend(fontsize=8)
    return ax


def plot_multiplier(ax, cmp: Comparison):
    """k(C) with its bootstrap band; dashed, with the exponents separate."""
    for curve, label, style in ((cmp.curve, f"shared: {', '.join(cmp.fit.shared) or 'none'}", "-"),
                                (cmp.curve_separate, "exponents separate", "--")):
        if curve is None:
            continue
        line, = ax.plot(curve.C, curve.k, style, label=label)
        ax.fill_between(curve.C, curve.low, curve.high, color=line.get_color(), alpha=0.2)
    ax.axvline(cmp.curve.max_data_C, color="grey", lw=0.8, ls=":", label="largest run")
    ax.axhline(1.0, color="black", lw=0.6)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("compute of B, C [FLOPs]")
    ax.set_ylabel("multiplier k: A needs k*C")
    ax.legend(fontsize=8)
    return ax


# ---- the command ------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scaling-compare",
        description="Compute multiplier of study B over study A: the factor k such that B at "
                    "compute C reaches the loss A reaches at k*C (Ho et al. 2024).")
    p.add_argument("study_a", metavar="STUDY_A", help="the baseline study folder")
    p.add_argument("study_b", metavar="STUDY_B", help="the study compared with it")
    p.add_argument("--shared", default=None, metavar="NAMES",
                   help="parameters shared between the studies, comma-separated, or 'none' "
                        "(default: the exponents and E, e.g. alpha,beta,E for chinchilla)")
    at = p.add_mutually_exclusive_group()
    at.add_argument("--at-loss", type=float, default=None, metavar="L",
                    help="report k at this loss [nats]: C_A(L) / C_B(L)")
    at.add_argument("--at-compute", type=float, default=None, metavar="C",
                    help="report k at this compute [FLOPs] (default: the largest run's)")
    p.add_argument("--law", default="chinchilla", help="a law in N and D (default chinchilla)")
    p.add_argument("--out", default=None,
                   help="output directory for compare.json, compare.md and compare.png "
                        "(default: STUDY_B/compare)")
    p.add_argument("--bootstrap", type=int, default=N_RESAMPLES, metavar="K",
                   help=f"bootstrap resamples (default {N_RESAMPLES})")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--level", type=float, default=LEVEL, help="interval level (default 0.95)")
    p.add_argument("--delta", type=float, default=1e-3, help="Huber delta on log loss (default 1e-3)")
    p.add_argument("--n-key", choices=("params", "params_nonembedding"), default="params",
                   help="what N counts (default params)")
    p.add_argument("--include-unplanned", action="store_true",
                   help="also read run folders the studies' plan.json does not list")
    p.add_argument("--allow-different-data", action="store_true",
                   help="compare even when the studies' evaluation data or tokenizer differ or "
                        "cannot be checked")
    p.add_argument("--no-plots", action="store_true", help="write compare.json and compare.md only")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return cli_exit_code("scaling-compare", lambda: _run(args))


def _parse_shared(text: str | None, law: Law) -> tuple[str, ...] | None:
    if text is None:
        return None
    if text.strip().lower() == "none":
        return ()
    return _check_shared(law, [n.strip() for n in text.split(",") if n.strip()])


def _run(args: argparse.Namespace) -> int:
    from scaling.analysis import io
    from scaling.rundir import write_atomic

    law = get_law(args.law)
    pair_law(law)  # refuses a law without a compute-optimal allocation, before reading files
    shared = _parse_shared(args.shared, law)
    if args.bootstrap < 2:
        raise AnalysisError(f"--bootstrap {args.bootstrap} must be at least 2 (e.g. 1000)")
    names = (str(args.study_a), str(args.study_b))
    check = check_same_data(*(read_data_identity(f, s, args.include_unplanned)
                              for f, s in zip(names, STUDIES)))
    if check.same is not True:
        if not args.allow_different_data:
            raise AnalysisError(f"refusing to compare: {check.message} (checked from: {check.basis})")
        print(f"warning: {check.message}; compared anyway (--allow-different-data)")
    for n in check.notes:
        print(f"note: {n}")
    datas = []
    for folder, s in zip(names, STUDIES):
        dirs, _ = io.select_runs(folder, args.include_unplanned)
        data, skipped = io.load_runs(folder, n_key=args.n_key, run_dirs=dirs)
        if skipped:
            print(f"study {s}: {len(skipped)} run(s) left out ({', '.join(x.status for x in skipped[:5])}"
                  f"{', ...' if len(skipped) > 5 else ''})")
        datas.append(data)
    cmp = compare_studies(datas[0], datas[1], law=args.law, shared=shared,
                          at_loss=args.at_loss, at_compute=args.at_compute,
                          n_resamples=args.bootstrap, seed=args.seed, level=args.level,
                          delta=args.delta)
    out = Path(args.out) if args.out else Path(args.study_b) / "compare"
    out.mkdir(parents=True, exist_ok=True)
    doc = {"study_A": names[0], "study_B": names[1], "data_check": check.to_json(),
           **cmp.to_json()}
    io.write_json_atomic(out / "compare.json", doc)
    write_atomic(out / "compare.md", format_markdown(cmp, names, check))
    written = [out / "compare.json", out / "compare.md"]
    if not args.no_plots:
        from scaling.analysis.plots import new_figure

        fig, (ax1, ax2) = new_figure(ncols=2)
        plot_frontiers(ax1, datas[0], datas[1], cmp, names=("A", "B"))
        plot_multiplier(ax2, cmp)
        written.append(_save_figure_atomic(fig, out / "compare.png"))
    m = cmp.at
    print(f"k = {_k(m.k)} ({m.level:.0%} interval {_k(m.interval[0])}-{_k(m.interval[1])}) at "
          f"{m.at} {m.value:.3g}: B at C matches A at k*C")
    if cmp.test is not None:
        print(cmp.test.sentence())
    for d in cmp.diagnostics:
        print(f"warning [{d.code}]: {d.message}")
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _save_figure_atomic(fig, path: Path) -> Path:
    """Save ``fig`` so that readers see the old figure or the new, never half of one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=150)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


if __name__ == "__main__":
    raise SystemExit(main())
