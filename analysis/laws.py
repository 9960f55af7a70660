"""Scaling laws, each one object: a :class:`Law` in the registry :data:`LAWS`.

A law's formula is a pure function whose docstring is the formula with its units
(:func:`chinchilla`, :func:`power_law`, ...). Inputs broadcast like numpy arrays, so a law can
be evaluated on one point, a column of runs, or a grid. Conventions:

- ``N``: model parameters (count); ``D``: training tokens (or images) seen (count);
  ``C``: training compute in FLOPs (``C ~= 6 N D``).
- ``L``: loss in nats per token (or whatever unit the data's loss column uses).

Beside each formula, in the same section of this file and gathered into the law's
:class:`Law`, is everything else the fitter and the report know about that law:

- its public parameters: the formula's own keyword parameters, read from its signature;
- the law in log space with its Jacobian, which the fitter minimises over: ``log L`` as a
  function of internal parameters ``theta`` (log-scales such as ``a = log A``), for a batch of
  parameter vectors at once. Writing log L as a log-sum-exp keeps every term positive and the
  arithmetic stable, as in Epoch AI's replication of Chinchilla
  (``log L = LSE(a - alpha log N, b - beta log D, e)``);
- the bounds of the internal parameters, and the start grid, built from the data;
- derived quantities (Chinchilla's ``a, b, G``) and, for a law in N and D, the compute-optimal
  allocation;
- for Chinchilla, whose 4,500-start grid makes speed matter, a fused Huber objective.

A law in N and D may take further inputs (``extra_inputs``): the data-constrained law of
Muennighoff et al. (2023) also takes U, each run's unique tokens, and fits Chinchilla's form in
the effective data D'; ``data_constrained_nd`` also in their effective parameters N'.

The log form, its Jacobian and the fused objective are hand-written second copies of the
formula (this package imports no autodiff). tests/test_analysis_laws.py checks each against
the first, for every law in :data:`LAWS`: exp(log form) equals the formula, the Jacobian equals
finite differences of the log form, and a fused objective equals the generic one
(:func:`scaling.analysis.forms.huber_value_and_grad_generic`) in value and gradient.
"""

from __future__ import annotations

import inspect
import itertools
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np
from numpy.typing import ArrayLike

Columns = dict[str, np.ndarray]
ANY_X = ("C", "N", "D")  # the columns a law in one variable may take; C, the default, first
# (theta (batch, p), log columns) -> (log L (batch, n), [d log L / d theta_k for each k]).
LogPred = Callable[[np.ndarray, Columns], tuple[np.ndarray, list[np.ndarray]]]


@dataclass(frozen=True, eq=False)
class Law:
    """One scaling law: its formula, log form, bounds, start grid and derived quantities.

    Calling a law evaluates its formula: ``LAWS["chinchilla"](N, D, E=1.69, ...)`` is
    ``chinchilla(N, D, E=1.69, ...)``.
    """

    name: str
    formula: Callable[..., np.ndarray]  # the pure function; its docstring is the formula
    theta_names: tuple[str, ...]  # internal parameters, e.g. ("a", "b", "e", "alpha", "beta")
    # For each internal parameter, the public one it encodes and whether it is that one's log
    # (a = log A). to_public, the bounds in public units and the constraints all derive from
    # this one mapping, so they cannot disagree.
    encodes: tuple[str, ...]  # e.g. ("A", "B", "E", "alpha", "beta")
    logged: tuple[bool, ...]  # e.g. (True, True, True, False, False)
    # log L and its Jacobian in theta; the columns are "lnN" and "lnD", or "lnx".
    log_pred: LogPred
    lower: np.ndarray  # bounds of the internal parameters (a log-scale one bounds the log)
    upper: np.ndarray
    # Log columns (and "lny", the log losses, when the fit has them) -> starts (k, p). Grids
    # scale with the data: scales around its inputs, offsets below its lowest loss.
    default_grid: Callable[[Columns], np.ndarray]
    # A law in one variable: the columns its x may be, the default first. Empty for a law in
    # N and D.
    x_choices: tuple[str, ...] = ()
    # Public parameters (arrays allowed) -> derived quantities, e.g. {"a": ..., "b": ...}.
    derived: Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]] = lambda params: {}
    # A law in N and D: optimal(C, **params) -> (N_opt, D_opt, L) under C = 6 N D.
    optimal: Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None
    # Inputs a law in N and D takes after them, each a Data column: ("U",), the unique
    # tokens, for the data-constrained law. The log columns are then also "lnU", ...
    extra_inputs: tuple[str, ...] = ()
    # (theta, cols, log_loss, delta, weights) -> (Huber objective, gradient), fused for speed;
    # it must agree with the generic objective built from log_pred (a test checks it).
    fused: Callable | None = None
    # ("N", "D") (with extra_inputs after them), or ("x",) for a law in one variable: the
    # formula's first arguments.
    inputs: tuple[str, ...] = field(init=False)
    # The formula's parameters after its inputs, in its order: e.g. ("E", "A", "B", "alpha",
    # "beta"). Read from the signature, so they cannot drift from the formula.
    param_names: tuple[str, ...] = field(init=False)

    def __post_init__(self):
        inputs = ("x",) if self.x_choices else ("N", "D") + self.extra_inputs
        names = tuple(inspect.signature(self.formula).parameters)[len(inputs):]
        object.__setattr__(self, "inputs", inputs)
        object.__setattr__(self, "param_names", names)
        p = len(self.theta_names)
        if (sorted(self.encodes) != sorted(names) or len(self.logged) != p
                or np.shape(self.lower) != (p,) or np.shape(self.upper) != (p,)):
            raise ValueError(f"law {self.name}: encodes {self.encodes} must list each of "
                             f"{names} once, with one logged flag and bound per theta")

    def __call__(self, *inputs: ArrayLike, **params: float) -> np.ndarray:
        return self.formula(*inputs, **params)

    @property
    def n_params(self) -> int:
        return len(self.theta_names)

    @property
    def default_x(self) -> str | None:
        """The input column of a one-variable law when none is named; None for N-D laws."""
        return self.x_choices[0] if self.x_choices else None

    def to_public(self, theta: np.ndarray) -> np.ndarray:
        """(batch, p) internal parameters -> (batch, p) public ones, in ``param_names`` order."""
        theta = np.asarray(theta, dtype=float)
        cols = [np.exp(theta[:, i]) if self.logged[i] else theta[:, i]
                for i in (self.encodes.index(name) for name in self.param_names)]
        return np.stack(cols, axis=1)

    @property
    def bounds(self) -> dict[str, tuple[float, float]]:
        """The optimiser's box in public units: name -> (low, high), e.g. alpha -> (0, 10)."""
        out = {}
        for name, log, lo, hi in zip(self.encodes, self.logged, self.lower, self.upper):
            out[name] = (float(np.exp(lo)), float(np.exp(hi))) if log else (float(lo), float(hi))
        return {name: out[name] for name in self.param_names}

    def allocate(self, params: Mapping[str, ArrayLike], C: ArrayLike):
        """(N_opt, D_opt, L) at compute C [FLOPs] under C = 6 N D, from public ``params``
        (arrays broadcast; extra keys such as derived quantities are ignored)."""
        if self.optimal is None:
            raise ValueError(f"law {self.name} has no compute-optimal allocation")
        return self.optimal(C, **{k: params[k] for k in self.param_names})


def _lse(*terms: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """log(sum exp(terms)) and the softmax weights, computed without overflow."""
    top = terms[0]
    for t in terms[1:]:
        top = np.maximum(top, t)
    exps = [np.exp(t - top) for t in terms]
    total = exps[0]
    for e in exps[1:]:
        total = total + e
    inv = 1.0 / total
    return top + np.log(total), [e * inv for e in exps]


def _grid(*axes) -> np.ndarray:
    return np.array(list(itertools.product(*axes)), dtype=float)


def _thetas(theta: np.ndarray, p: int) -> tuple[np.ndarray, ...]:
    """The columns of a (batch, p) theta as (batch, 1) arrays, to broadcast over the data."""
    return tuple(theta[:, i : i + 1] for i in range(p))


def _loss_scales(cols: Columns) -> tuple[float, float, float]:
    """(lowest log loss, median log loss, median log x): what a one-variable grid scales to."""
    lny, lnx = cols["lny"], cols["lnx"]
    return float(lny.min()), float(np.median(lny)), float(np.median(lnx))


def _shape(theta: np.ndarray, col: np.ndarray) -> tuple[int, int]:
    """(batch, n): the shape of log L for a batch of thetas on a column of n runs."""
    return theta.shape[0], col.shape[-1]


# --- Chinchilla: L = E + A N^-alpha + B D^-beta ------------------------------------------

def chinchilla(
    N: ArrayLike,
    D: ArrayLike,
    E: float = 1.69,
    A: float = 406.4,
    B: float = 410.7,
    alpha: float = 0.34,
    beta: float = 0.28,
) -> np.ndarray:
    """Hoffmann et al. (2022) parametric loss (approach 3).

    ``L(N, D) = E + A / N^alpha + B / D^beta``

    N: parameters [count]; D: tokens [count]; E: irreducible loss [nats];
    A [nats * params^alpha]; B [nats * tokens^beta]; alpha, beta [dimensionless].
    Defaults are Hoffmann et al.'s published fit.
    """
    N = np.asarray(N, dtype=float)
    D = np.asarray(D, dtype=float)
    return E + A * N ** (-alpha) + B * D ** (-beta)


def chinchilla_allocation(A, B, alpha, beta) -> dict[str, np.ndarray]:
    """Exponents and coefficient of Chinchilla's compute-optimal allocation (below).

    ``a = beta/(alpha+beta)``, ``b = alpha/(alpha+beta)`` [dimensionless];
    ``G = (alpha A / (beta B))^(1/(alpha+beta))`` [params / (FLOPs/6)^a, so that
    ``N_opt = G (C/6)^a`` is in params]. Arrays broadcast; a degenerate law (alpha = beta = 0)
    gives NaN, not an error.
    """
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        s = alpha + beta
        G = (alpha * A / (beta * B)) ** (1.0 / s)
        return {"a": beta / s, "b": alpha / s, "G": G}


def chinchilla_optimal(C: ArrayLike, E: float, A: float, B: float, alpha: float, beta: float):
    """Compute-optimal allocation under Chinchilla's law with ``C = 6 N D``.

    ``N_opt(C) = G (C/6)^a``, ``D_opt(C) = G^-1 (C/6)^b`` with ``a = beta/(alpha+beta)``,
    ``b = alpha/(alpha+beta)`` and ``G = (alpha A / (beta B))^(1/(alpha+beta))``.

    C [FLOPs] -> (N_opt [params], D_opt [tokens], L(N_opt, D_opt) [nats]).
    """
    C = np.asarray(C, dtype=float)
    k = chinchilla_allocation(A, B, alpha, beta)
    N_opt = k["G"] * (C / 6.0) ** k["a"]
    D_opt = (C / 6.0) ** k["b"] / k["G"]
    return N_opt, D_opt, chinchilla(N_opt, D_opt, E, A, B, alpha, beta)


def _chinchilla_log_pred(theta, cols):
    a, b, e, alpha, beta = _thetas(theta, 5)
    lnN, lnD = cols["lnN"], cols["lnD"]
    lse, (w1, w2, w3) = _lse(a - alpha * lnN, b - beta * lnD,
                             np.broadcast_to(e, _shape(theta, lnN)))
    return lse, [w1, w2, w3, -w1 * lnN, -w2 * lnD]


def _chinchilla_fused(theta, cols, log_loss, delta, weights):
    """Huber objective and gradient for Chinchilla in fewer array passes than the generic
    path: everything is taken relative to e, so ``log L_hat = e + log(1 + x1 + x2)`` with
    ``x1 = exp(a - e - alpha log N)``, ``x2 = exp(b - e - beta log D)``. The bounds keep the
    exponents below ~200, so no max-shift is needed against overflow."""
    a, b, e, alpha, beta = _thetas(theta, 5)
    lnN, lnD = cols["lnN"], cols["lnD"]
    x1 = alpha * lnN
    np.subtract(a - e, x1, out=x1)
    np.exp(x1, out=x1)
    x2 = beta * lnD
    np.subtract(b - e, x2, out=x2)
    np.exp(x2, out=x2)
    s = x1 + x2
    s += 1.0
    r = np.log(s)
    np.subtract(log_loss - e, r, out=r)  # residual log L_obs - log L_hat
    ar = np.abs(r)
    c = np.minimum(ar, delta)
    f = ar - 0.5 * c
    f *= c  # Huber value per point
    # dHuber/dr = clip(r, -delta, delta); two ufuncs are faster than np.clip or copysign.
    np.minimum(r, delta, out=r)
    np.maximum(r, -delta, out=r)
    if weights is not None:
        f *= weights
        r *= weights
    r /= s  # dHuber/dr * d(log L_hat)/de; times x1 or x2 gives the a and b derivatives
    x1 *= r
    x2 *= r
    grad = np.empty((theta.shape[0], 5))
    grad[:, 0] = -x1.sum(axis=1)
    grad[:, 1] = -x2.sum(axis=1)
    grad[:, 2] = -r.sum(axis=1)
    grad[:, 3] = x1 @ lnN
    grad[:, 4] = x2 @ lnD
    return f.sum(axis=1), grad


# Chinchilla's start grid, in fractions of the lowest loss: each term A N^-alpha (B D^-beta)
# at the data's median N (D) from 0.1% to 20 times it, and E from a twentieth of it to just
# below it. Six, six and five values, times Epoch's five values of each exponent: 4,500 starts,
# as many as Epoch's grid.
CHIN_TERM_FRACTIONS = (1e-3, 6e-3, 0.035, 0.2, 1.2, 20.0)
CHIN_E_FRACTIONS = (0.05, 0.25, 0.5, 0.75, 0.95)
CHIN_EXPONENTS = (0.0, 0.5, 1.0, 1.5, 2.0)


def _chinchilla_grid(cols):
    """Starts for E + A N^-alpha + B D^-beta scaled to the data.

    The exponents are dimensionless, so their starts are Epoch AI's (0 to 2 by 0.5). The
    scales are not: for each exponent, ``a = log A`` starts where ``A N^-alpha`` at the data's
    median N is a fraction of the lowest loss (:data:`CHIN_TERM_FRACTIONS`), so
    ``a = ln L_min + ln(fraction) + alpha median(ln N)``, and b the same in D; ``e = log E``
    starts at fractions of the lowest loss (an offset below it, :data:`CHIN_E_FRACTIONS`).
    N and D in other units, or a loss in other units, move the grid with them. Without the
    losses (``lny``) or the inputs, it is Epoch AI's fixed grid (data/README.md):
    a, b in 0..25 by 5, e in -1..1 by 0.5, alpha, beta in 0..2 by 0.5.
    """
    if not {"lny", "lnN", "lnD"} <= cols.keys():
        return _grid(np.arange(0, 30, 5), np.arange(0, 30, 5), np.arange(-1, 1.5, 0.5),
                     CHIN_EXPONENTS, CHIN_EXPONENTS)
    y_lo = float(np.min(cols["lny"]))
    n_med, d_med = float(np.median(cols["lnN"])), float(np.median(cols["lnD"]))
    terms = y_lo + np.log(CHIN_TERM_FRACTIONS)
    ex = np.array(CHIN_EXPONENTS)
    g = _grid(terms, terms, y_lo + np.log(CHIN_E_FRACTIONS), ex, ex)
    g[:, 0] += g[:, 3] * n_med  # a = ln(term) + alpha median(ln N)
    g[:, 1] += g[:, 4] * d_med
    return g


CHINCHILLA = Law(
    name="chinchilla",
    formula=chinchilla,
    theta_names=("a", "b", "e", "alpha", "beta"),
    encodes=("A", "B", "E", "alpha", "beta"),
    logged=(True, True, True, False, False),
    log_pred=_chinchilla_log_pred,
    # Exponents are kept non-negative (a negative one would make loss grow with scale);
    # the log-scales get wide but finite bounds so a runaway start cannot overflow.
    lower=np.array([-50.0, -50.0, -20.0, 0.0, 0.0]),
    upper=np.array([100.0, 100.0, 20.0, 10.0, 10.0]),
    default_grid=_chinchilla_grid,
    derived=lambda p: chinchilla_allocation(p["A"], p["B"], p["alpha"], p["beta"]),
    optimal=chinchilla_optimal,
    fused=_chinchilla_fused,
)


# --- Power law with an offset: L = E + A x^-alpha -----------------------------------------

def power_law(x: ArrayLike, E: float, A: float, alpha: float) -> np.ndarray:
    """Power law with an irreducible offset.

    ``L(x) = E + A * x^(-alpha)``

    x: N (parameters), D (tokens) or C (FLOPs); E: loss floor [nats]; A: scale
    [nats * unit(x)^alpha]; alpha: exponent [dimensionless].
    """
    x = np.asarray(x, dtype=float)
    return E + A * x ** (-alpha)


def _power_log_pred(theta, cols):
    a, e, alpha = _thetas(theta, 3)
    lnx = cols["lnx"]
    lse, (w1, w2) = _lse(a - alpha * lnx, np.broadcast_to(e, _shape(theta, lnx)))
    return lse, [w1, w2, -w1 * lnx]


def _power_grid(cols):
    """Starts for E + A x^-alpha scaled to the data: E a fraction of the lowest loss (an offset
    below it), and for each alpha, A such that A x^-alpha spans the losses' scale at the
    data's median x (a = log A around ln L + alpha ln x)."""
    if "lny" not in cols:  # no losses given: the grid of the first version
        return _grid(np.arange(0, 65, 5), np.arange(-1, 1.5, 0.5),
                     [0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0])
    y_lo, y_med, x_med = _loss_scales(cols)
    rows = []
    for alpha in (0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0):
        for e in y_lo + np.log([0.05, 0.3, 0.6, 0.8, 0.9, 0.97]):
            for da in (-3.0, -1.0, 0.0, 1.0, 3.0):
                rows.append((y_med + alpha * x_med + da, e, alpha))
    return np.array(rows)


POWER_LAW = Law(
    name="power_law",
    formula=power_law,
    x_choices=ANY_X,
    theta_names=("a", "e", "alpha"),
    encodes=("A", "E", "alpha"),
    logged=(True, True, False),
    log_pred=_power_log_pred,
    lower=np.array([-50.0, -20.0, 0.0]),
    upper=np.array([200.0, 20.0, 10.0]),
    default_grid=_power_grid,
)


# --- Kaplan: L(N) = (N_c/N)^alpha_N, L(D) = (D_c/D)^alpha_D --------------------------------

def kaplan_n(N: ArrayLike, N_c: float = 8.8e13, alpha_N: float = 0.076) -> np.ndarray:
    """Kaplan et al. (2020) loss against model size, trained to convergence.

    ``L(N) = (N_c / N)^alpha_N``

    N: non-embedding parameters [count]; N_c [count]; alpha_N [dimensionless]; L [nats].
    Defaults are Kaplan's published values (alpha_N = 0.076, N_c = 8.8e13).
    """
    N = np.asarray(N, dtype=float)
    return (N_c / N) ** alpha_N


def kaplan_d(D: ArrayLike, D_c: float = 5.4e13, alpha_D: float = 0.095) -> np.ndarray:
    """Kaplan et al. (2020) loss against data, for a large model with early stopping.

    ``L(D) = (D_c / D)^alpha_D``

    D: training tokens [count]; D_c [tokens]; alpha_D [dimensionless]; L [nats].
    Defaults are Kaplan's published values (alpha_D = 0.095, D_c = 5.4e13).
    """
    D = np.asarray(D, dtype=float)
    return (D_c / D) ** alpha_D


def _kaplan_1d_log_pred(theta, cols):
    lnc, alpha = _thetas(theta, 2)
    u = lnc - cols["lnx"]
    lp = alpha * u
    return lp, [np.broadcast_to(alpha, lp.shape), u]


def _kaplan_1d_grid(cols):
    """Starts for (x_c / x)^alpha scaled to the data. log L = alpha (ln x_c - ln x), so for
    each alpha the start passing through a data point has ln x_c = ln x + log L / alpha: above
    the data when the loss exceeds 1, below it when the loss is under 1."""
    lnx = cols["lnx"]
    lny = cols.get("lny")
    alphas = np.array([0.02, 0.05, 0.1, 0.2, 0.5, 1.0])
    if lny is None:
        return _grid(np.log(10.0) * np.arange(8, 32, 2), alphas)
    q = np.quantile(np.arange(lnx.size), [0.0, 0.25, 0.5, 0.75, 1.0]).round().astype(int)
    order = np.argsort(lnx)
    pts = [(lnx[order[i]], lny[order[i]]) for i in q]
    rows = [(px + py / a, a) for a in alphas for px, py in pts]
    return np.array(rows)


def _kaplan_1d(formula) -> Law:
    """kaplan_n or kaplan_d: the same law in its one input, N or D."""
    x, scale, alpha = inspect.signature(formula).parameters
    return Law(
        name=formula.__name__,
        formula=formula,
        x_choices=(x,),
        theta_names=("log_" + scale, alpha),
        encodes=(scale, alpha),
        logged=(True, False),
        log_pred=_kaplan_1d_log_pred,
        lower=np.array([-50.0, 1e-6]),
        upper=np.array([200.0, 10.0]),
        default_grid=_kaplan_1d_grid,
    )


KAPLAN_N = _kaplan_1d(kaplan_n)
KAPLAN_D = _kaplan_1d(kaplan_d)


# --- Kaplan: L(N, D) = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D -------------------------

def kaplan_nd(
    N: ArrayLike,
    D: ArrayLike,
    N_c: float = 8.8e13,
    D_c: float = 5.4e13,
    alpha_N: float = 0.076,
    alpha_D: float = 0.095,
) -> np.ndarray:
    """Kaplan et al. (2020) joint law in model size and data.

    ``L(N, D) = [ (N_c / N)^(alpha_N / alpha_D) + D_c / D ]^alpha_D``

    N: non-embedding parameters [count]; D: tokens [count]; N_c [count]; D_c [tokens];
    alpha_N, alpha_D [dimensionless]; L [nats].
    """
    N = np.asarray(N, dtype=float)
    D = np.asarray(D, dtype=float)
    return ((N_c / N) ** (alpha_N / alpha_D) + D_c / D) ** alpha_D


def kaplan_nd_optimal(C: ArrayLike, N_c: float, D_c: float, alpha_N: float, alpha_D: float):
    """Compute-optimal allocation under Kaplan's joint law with ``C = 6 N D``.

    Minimising ``(N_c/N)^q + 6 D_c N / C`` over N, with ``q = alpha_N / alpha_D``, gives
    ``N_opt(C) = (q N_c^q C / (6 D_c))^(1/(q+1))`` and ``D_opt = C / (6 N_opt)``; the
    exponent ``1/(q+1)`` is ``a = alpha_D / (alpha_N + alpha_D)``.

    C [FLOPs] -> (N_opt [params], D_opt [tokens], L(N_opt, D_opt) [nats]).
    """
    C = np.asarray(C, dtype=float)
    q = alpha_N / alpha_D
    lnN = (np.log(q) + q * np.log(N_c) + np.log(C / 6.0) - np.log(D_c)) / (q + 1)
    N_opt = np.exp(lnN)
    D_opt = C / (6.0 * N_opt)
    return N_opt, D_opt, kaplan_nd(N_opt, D_opt, N_c, D_c, alpha_N, alpha_D)


def _kaplan_nd_log_pred(theta, cols):
    lnNc, lnDc, aN, aD = _thetas(theta, 4)
    q = aN / aD
    u1 = q * (lnNc - cols["lnN"])
    u2 = np.broadcast_to(lnDc - cols["lnD"], u1.shape)
    S, (w1, w2) = _lse(u1, u2)
    return aD * S, [aN * w1, aD * w2, w1 * (lnNc - cols["lnN"]), S - w1 * u1]


def _kaplan_nd_grid(cols):
    """Scales N_c and D_c from 6 decades below the data's smallest N (D) to 16 above its
    largest: below the data when the loss is under 1, far above it for Kaplan's own fits."""
    ln10 = np.log(10.0)
    lnN, lnD = cols.get("lnN"), cols.get("lnD")
    if lnN is None or lnD is None:
        return _grid(ln10 * np.arange(8, 32, 4), ln10 * np.arange(8, 32, 4),
                     [0.03, 0.1, 0.3, 1.0], [0.03, 0.1, 0.3, 1.0])
    return _grid(np.linspace(lnN.min() - 6 * ln10, lnN.max() + 16 * ln10, 6),
                 np.linspace(lnD.min() - 6 * ln10, lnD.max() + 16 * ln10, 6),
                 [0.03, 0.1, 0.3, 1.0], [0.03, 0.1, 0.3, 1.0])


def _kaplan_nd_derived(p):
    s = p["alpha_N"] + p["alpha_D"]
    return {"a": p["alpha_D"] / s, "b": p["alpha_N"] / s}


KAPLAN_ND = Law(
    name="kaplan_nd",
    formula=kaplan_nd,
    theta_names=("log_N_c", "log_D_c", "alpha_N", "alpha_D"),
    encodes=("N_c", "D_c", "alpha_N", "alpha_D"),
    logged=(True, True, False, False),
    log_pred=_kaplan_nd_log_pred,
    lower=np.array([-50.0, -50.0, 1e-4, 1e-4]),
    upper=np.array([200.0, 200.0, 10.0, 10.0]),
    default_grid=_kaplan_nd_grid,
    derived=_kaplan_nd_derived,
    optimal=kaplan_nd_optimal,
)


# --- Broken power law, one break (Caballero et al. 2022) -----------------------------------

def broken_power_law(
    x: ArrayLike, E: float, B: float, c0: float, c1: float, d1: float, f1: float
) -> np.ndarray:
    """Broken power law with one break (Caballero et al. 2022, "Broken Neural Scaling Laws").

    ``L(x) = E + B * x^(-c0) * (1 + (x / d1)^(1 / f1))^(-c1 * f1)``

    x: N, D or C; E: loss floor [nats]; B: scale [nats * unit(x)^c0]; c0: exponent before the
    break; c0 + c1: exponent after it [dimensionless]; d1: where the break is [unit(x)];
    f1 > 0: how sharp it is (smaller is sharper) [dimensionless].
    """
    x = np.asarray(x, dtype=float)
    return E + B * x ** (-c0) * (1.0 + (x / d1) ** (1.0 / f1)) ** (-c1 * f1)


def _bpl_log_pred(theta, cols):
    """log L = LSE(e, b - c0 log x - c1 f1 softplus((log x - log d1) / f1))."""
    e, b, c0, c1, ld, f1 = _thetas(theta, 6)
    lnx = cols["lnx"]
    z = (lnx - ld) / f1
    sp = np.logaddexp(0.0, z)  # softplus(z)
    sig = 0.5 * (1.0 + np.tanh(0.5 * z))  # logistic(z), overflow-free
    u2 = b - c0 * lnx - c1 * f1 * sp
    lse, (w1, w2) = _lse(np.broadcast_to(e, u2.shape), u2)
    return lse, [w1, w2, -w2 * lnx, -w2 * f1 * sp, w2 * c1 * sig, -w2 * c1 * (sp - sig * z)]


def _bpl_grid(cols):
    lnx = cols["lnx"]
    # Breaks are searched inside the data: a break outside it is not identifiable.
    breaks = np.quantile(lnx, [0.25, 0.5, 0.75])
    if "lny" not in cols:
        return _grid([-1.0, 0.0, 1.0], [0.0, 5.0, 10.0, 20.0], [0.0, 0.1, 0.3],
                     [0.1, 0.3, 1.0], breaks, [0.3, 1.0])
    # Scaled to the losses: E a fraction of the lowest (an offset below it), and B such that
    # B x^-c0 is of the losses' size at the data's median x.
    y_lo, y_med, x_med = _loss_scales(cols)
    rows = [(e, y_med + c0 * x_med + db, c0, c1, br, f1)
            for e in y_lo + np.log([0.3, 0.7, 0.95])
            for c0 in (0.0, 0.1, 0.3) for db in (-2.0, 0.0, 2.0)
            for c1 in (0.1, 0.3, 1.0) for br in breaks for f1 in (0.3, 1.0)]
    return np.array(rows)


BROKEN_POWER_LAW = Law(
    name="broken_power_law",
    formula=broken_power_law,
    x_choices=ANY_X,
    theta_names=("e", "b", "c0", "c1", "log_d1", "f1"),
    encodes=("E", "B", "c0", "c1", "d1", "f1"),
    logged=(True, True, False, False, True, False),
    log_pred=_bpl_log_pred,
    lower=np.array([-20.0, -50.0, -2.0, -5.0, -100.0, 0.01]),
    upper=np.array([20.0, 200.0, 10.0, 10.0, 200.0, 10.0]),
    default_grid=_bpl_grid,
)


# --- Data-constrained: Chinchilla with effective data (Muennighoff et al. 2023) -------------

def effective_data(D: ArrayLike, U: ArrayLike, R_D_star: float) -> np.ndarray:
    """Effective data of a run that repeats its unique tokens (Muennighoff et al. 2023).

    ``D' = U_D + U_D R*_D (1 - exp(-R_D / R*_D))`` with ``U_D = min(U, D)`` and
    ``R_D = D / U_D - 1`` the repetitions (epochs - 1).

    D: tokens seen [count]; U: unique tokens available [count]; R_D_star: the repetitions at
    which a repeated token's value has fallen by 1/e [dimensionless]. D' [tokens] equals D for
    a single epoch and tends to ``(1 + R*_D) U_D`` with many.
    """
    return _saturated(D, U, R_D_star)


def _saturated(x: ArrayLike, cap: ArrayLike, R_star: ArrayLike) -> np.ndarray:
    """``U + U R* (1 - exp(-R / R*))`` with ``U = min(cap, x)`` and ``R = x / U - 1``: x itself up
    to the cap, and past it each further cap's worth counts exp(-1/R*) less than the one before.
    D' is this in tokens (the cap is U, the unique tokens) and N' in parameters (the cap is
    N_opt(U_D))."""
    x = np.asarray(x, dtype=float)
    U = np.minimum(np.asarray(cap, dtype=float), x)
    R = x / U - 1.0
    return U + U * R_star * -np.expm1(-R / R_star)


def data_constrained(
    N: ArrayLike,
    D: ArrayLike,
    U: ArrayLike,
    E: float = 1.69,
    A: float = 406.4,
    B: float = 410.7,
    alpha: float = 0.34,
    beta: float = 0.28,
    R_D_star: float = 15.39,
) -> np.ndarray:
    """Muennighoff et al. (2023) data-constrained law: Chinchilla's in effective data.

    ``L(N, D, U) = E + A / N^alpha + B / D'^beta`` with
    ``D' = U_D + U_D R*_D (1 - exp(-R_D / R*_D))``, ``U_D = min(U, D)``,
    ``R_D = D / U_D - 1`` (epochs - 1).

    N: parameters [count]; D: tokens seen [count]; U: unique tokens [count]; E [nats];
    A [nats * params^alpha]; B [nats * tokens^beta]; alpha, beta [dimensionless];
    R_D_star [dimensionless]. Defaults: Hoffmann et al.'s fit and Muennighoff et al.'s
    R*_D = 15.39. With one epoch (U >= D) it is Chinchilla's law.
    """
    return chinchilla(N, effective_data(D, U, R_D_star), E, A, B, alpha, beta)


def epoch_value(epochs: ArrayLike, R_D_star: ArrayLike) -> np.ndarray:
    """What one more pass over the unique data is worth, as a fraction of new unique data.

    Going from ``epochs`` to ``epochs + 1`` passes over U unique tokens adds
    ``U R*_D exp(-R_D / R*_D) (1 - exp(-1 / R*_D))`` effective tokens (R_D = epochs - 1);
    the same number of tokens of new unique data would add U. The ratio, returned, is 1 for
    unlimited data and falls by ``exp(-1/R*_D)`` with every epoch [dimensionless].
    """
    R = np.asarray(epochs, dtype=float) - 1.0
    Rs = np.asarray(R_D_star, dtype=float)
    return Rs * np.exp(-R / Rs) * -np.expm1(-1.0 / Rs)


# exp(-R / R*) is 0 in floats long before R = e^300 (R* <= 1e6); capping ln(x / U) there only
# keeps R finite where a far-off start puts N_opt(U_D) at e^-1000 parameters.
LOG_RATIO_MAX = 300.0


def _saturated_log(lnx, lncap, r):
    """The log form of :func:`_saturated`: ln x', d ln x' / d r for r = ln R*, and
    d ln x' / d ln cap, broadcast to (batch, n). The last is 0 where x is within its cap and
    ``1 - exp(-R/R*) (R + 1) / (x'/U)`` past it: 0 at the cap too, so the kink is smooth."""
    Rs = np.exp(r)  # (batch, 1)
    lnU = np.minimum(lncap, lnx)
    R = np.expm1(np.minimum(lnx - lnU, LOG_RATIO_MAX))  # repetitions, (n,)
    q = R / Rs
    em = np.exp(-q)
    g = 1.0 + Rs * -np.expm1(-q)  # x' / U
    dg = -np.expm1(-q) - q * em  # d g / d R*
    return lnU + np.log(g), Rs * dg / g, 1.0 - em * (R + 1.0) / g


def _data_constrained_log_pred(theta, cols):
    lnDp, dlnDp, _ = _saturated_log(cols["lnD"], cols["lnU"], theta[:, 5:6])
    lse, jac = _chinchilla_log_pred(theta[:, :5], {"lnN": cols["lnN"], "lnD": lnDp})
    beta = theta[:, 4:5]
    return lse, jac + [-jac[1] * beta * dlnDp]


def _data_constrained_grid(cols):
    """Chinchilla's grid (:func:`_chinchilla_grid`, D at the data's tokens), times three
    starts of R*_D spread over the data's repetitions: from the median to four times the
    largest (log-spaced); without repeated runs, Muennighoff et al.'s 15.39 alone."""
    base = _chinchilla_grid(cols)
    R = np.expm1(cols["lnD"] - np.minimum(cols["lnU"], cols["lnD"])) if "lnU" in cols else None
    if R is None or not (R > 0).any():
        rstar = np.log([15.39])
    else:
        R = R[R > 0]
        rstar = np.linspace(np.log(np.median(R)), np.log(4 * R.max()), 3)
    return np.array([np.r_[row, r] for r in rstar for row in base])


def _data_constrained_derived(p):
    Rs = p["R_D_star"]
    # epochs at which a repeated token is worth half a new one, and the most a run on U
    # unique tokens can be worth in epochs of them: D' -> (1 + R*_D) U.
    return {"half_value_epochs": 1.0 + Rs * np.log(2.0), "max_effective_epochs": 1.0 + Rs}


DATA_CONSTRAINED = Law(
    name="data_constrained",
    formula=data_constrained,
    extra_inputs=("U",),
    theta_names=("a", "b", "e", "alpha", "beta", "log_R_D_star"),
    encodes=("A", "B", "E", "alpha", "beta", "R_D_star"),
    logged=(True, True, True, False, False, True),
    log_pred=_data_constrained_log_pred,
    # R*_D from 0.01 (a repeated token is worthless) to 1e6 (repeats as good as new data).
    lower=np.r_[CHINCHILLA.lower, np.log(1e-2)],
    upper=np.r_[CHINCHILLA.upper, np.log(1e6)],
    default_grid=_data_constrained_grid,
    derived=_data_constrained_derived,
)



# --- Data-constrained in N and D: excess parameters too (Muennighoff et al. 2023, eq. 5) -------

def data_optimal_params(D: ArrayLike, A: float, B: float, alpha: float, beta: float) -> np.ndarray:
    """The compute-optimal parameters for D tokens under Chinchilla's law.

    ``N_opt(D) = G^((alpha+beta)/alpha) D^(beta/alpha)`` with
    ``G = (alpha A / (beta B))^(1/(alpha+beta))``: :func:`chinchilla_optimal`'s
    ``D_opt = G^-1 (C/6)^b`` solved for ``C/6 = (G D)^(1/b)`` and put into ``N_opt = G (C/6)^a``
    (a/b = beta/alpha). It is the N at which the two terms fall equally fast under C = 6 N D,
    ``alpha A N^-alpha = beta B D^-beta``.

    D: tokens [count] -> N_opt [params]; A, B, alpha, beta as in :func:`chinchilla`.
    """
    D = np.asarray(D, dtype=float)
    G = chinchilla_allocation(A, B, alpha, beta)["G"]
    return G ** ((alpha + beta) / alpha) * D ** (beta / alpha)


def effective_params(
    N: ArrayLike, D: ArrayLike, U: ArrayLike, A: float, B: float, alpha: float, beta: float,
    R_N_star: float,
) -> np.ndarray:
    """Effective parameters of a model larger than its unique data supports (Muennighoff et
    al. 2023).

    ``N' = U_N + U_N R*_N (1 - exp(-R_N / R*_N))`` with ``U_N = min(N, N_opt(U_D))``, the
    compute-optimal parameters for the run's unique tokens ``U_D = min(U, D)``
    (:func:`data_optimal_params`), and ``R_N = N / U_N - 1`` the excess parameters.

    N: parameters [count]; D: tokens seen [count]; U: unique tokens [count]; A, B, alpha, beta
    as in :func:`chinchilla`; R_N_star: the excess at which an extra parameter's value has
    fallen by 1/e [dimensionless]. N' [params] equals N up to N_opt(U_D) and tends to
    ``(1 + R*_N) U_N`` far beyond it. A run of less than one epoch has U_D = D, so a model
    larger than compute-optimal for its tokens has excess parameters too.
    """
    U_D = np.minimum(np.asarray(U, dtype=float), np.asarray(D, dtype=float))
    return _saturated(N, data_optimal_params(U_D, A, B, alpha, beta), R_N_star)


def data_constrained_nd(
    N: ArrayLike,
    D: ArrayLike,
    U: ArrayLike,
    E: float = 1.69,
    A: float = 406.4,
    B: float = 410.7,
    alpha: float = 0.34,
    beta: float = 0.28,
    R_D_star: float = 15.39,
    R_N_star: float = 5.31,
) -> np.ndarray:
    """Muennighoff et al. (2023) data-constrained law with both of its terms (their eq. 5):
    Chinchilla's law in effective parameters and effective data.

    ``L(N, D, U) = E + A / N'^alpha + B / D'^beta`` with
    ``D' = U_D + U_D R*_D (1 - exp(-R_D / R*_D))`` (:func:`effective_data`) and
    ``N' = U_N + U_N R*_N (1 - exp(-R_N / R*_N))`` (:func:`effective_params`),
    ``U_N = min(N, N_opt(U_D))``, ``R_N = N / U_N - 1``.

    Units as in :func:`data_constrained`; R_N_star [dimensionless]. Defaults: Hoffmann et
    al.'s fit and Muennighoff et al.'s R*_D = 15.39 and R*_N = 5.31. Where every run has
    N <= N_opt(U_D) it is :func:`data_constrained`, and R*_N has no effect on the loss.

    What fits it: runs that repeat their data for many epochs (for R*_D) and sizes from below
    N_opt(U_D) to well above it (for R*_N), at two or more amounts of unique data, so that where
    N_opt(U_D) lies (set by A, B, alpha and beta) is seen apart from how fast excess parameters
    lose value. All seven parameters are fitted together (Muennighoff et al. fitted Chinchilla's
    five first, on single-epoch runs, and then R*_D and R*_N).

    The built-in ``data_constrained_tiny`` study pins neither down: one amount of unique data
    (49,152 tokens), three sizes within half a decade, all past N_opt(U_D) (up to 4.4 times it
    under its own fit), and 0.8 to 20 epochs. Measured on it (1,000 resamples): R*_D = 134
    [38, 1e6] and R*_N = 3.2e3, each beyond every run's R_D (at most 19.4) and R_N (at most
    3.4), so the runs say only that their repeats and excess parameters lose little; alpha's
    interval runs to its bound (10), since three sizes at one U cannot tell a bend in N' from
    A / N^alpha.
    """
    N_p = effective_params(N, D, U, A, B, alpha, beta, R_N_star)
    return chinchilla(N_p, effective_data(D, U, R_D_star), E, A, B, alpha, beta)


def _data_constrained_nd_log_pred(theta, cols):
    """:func:`_data_constrained_log_pred` in ln N' instead of ln N, and the chain rule through
    ln N': ``ln N_opt(U_D) = (a - b + ln(alpha/beta) + beta ln U_D) / alpha`` moves with a, b,
    alpha and beta, and ln N' moves with it by ``s`` (0 where N is within it)."""
    a, b, _, alpha, beta = _thetas(theta, 5)
    lnUD = np.minimum(cols["lnU"], cols["lnD"])
    ln_cap = (a - b + np.log(alpha / beta) + beta * lnUD) / alpha
    lnNp, dlnNp, s = _saturated_log(cols["lnN"], ln_cap, theta[:, 6:7])
    lse, jac = _data_constrained_log_pred(theta[:, :6], {**cols, "lnN": lnNp})
    w1 = jac[0]  # d log L / d a at fixed N': the N term's softmax weight
    dcap = -alpha * w1 * s  # d log L / d ln N_opt(U_D)
    return lse, [w1 + dcap / alpha, jac[1] - dcap / alpha, jac[2],
                 jac[3] + dcap * (1.0 / alpha - ln_cap) / alpha,
                 jac[4] + dcap * (lnUD - 1.0 / beta) / alpha, jac[5], -alpha * w1 * dlnNp]


# Starts of R*_N: Muennighoff et al.'s 5.31 and a decade either side. Unlike R*_D's, they cannot
# be spread over the data's excess parameters, which depend on the fitted A, B, alpha and beta.
R_N_STAR_STARTS = (0.531, 5.31, 53.1)


def _data_constrained_nd_grid(cols):
    """:func:`_data_constrained_grid` times the starts of R*_N (:data:`R_N_STAR_STARTS`), with
    Epoch's zero exponent raised to half its step (0.25): N_opt(U_D) divides by alpha and takes
    the log of beta, so at zero it has no value. a and b move with it, so that each term still
    starts at its fraction of the lowest loss at the data's median N (D)."""
    base = _data_constrained_grid(cols)
    raised = np.maximum(base[:, 3:5], CHIN_EXPONENTS[1] / 2) - base[:, 3:5]
    base[:, 3:5] += raised
    if {"lny", "lnN", "lnD"} <= cols.keys():  # a grid scaled to the data (see _chinchilla_grid)
        base[:, 0] += raised[:, 0] * np.median(cols["lnN"])
        base[:, 1] += raised[:, 1] * np.median(cols["lnD"])
    return np.vstack([np.c_[base, np.full(len(base), np.log(r))] for r in R_N_STAR_STARTS])


def _data_constrained_nd_derived(p):
    Rs = p["R_N_star"]
    # N / U_N at which an excess parameter is worth half a parameter within N_opt(U_D)
    # (dN'/dN = exp(-R_N/R*_N)), and the most a model of any size is worth: N' -> (1 + R*_N) U_N.
    return {**_data_constrained_derived(p), "half_value_size_ratio": 1.0 + Rs * np.log(2.0),
            "max_effective_size_ratio": 1.0 + Rs}


DATA_CONSTRAINED_ND = Law(
    name="data_constrained_nd",
    formula=data_constrained_nd,
    extra_inputs=("U",),
    theta_names=DATA_CONSTRAINED.theta_names + ("log_R_N_star",),
    encodes=DATA_CONSTRAINED.encodes + ("R_N_star",),
    logged=DATA_CONSTRAINED.logged + (True,),
    log_pred=_data_constrained_nd_log_pred,
    # R*_N is bounded as R*_D. alpha and beta are kept above 1e-3 instead of 0: N_opt(U_D)
    # divides by alpha and takes the log of beta. Published exponents of language-model laws are 0.05 and
    # above (Kaplan's 0.076, Chinchilla's 0.28 and 0.34), so the bound holds no real fit back.
    lower=np.r_[DATA_CONSTRAINED.lower[:3], 1e-3, 1e-3, DATA_CONSTRAINED.lower[5], np.log(1e-2)],
    upper=np.r_[DATA_CONSTRAINED.upper, np.log(1e6)],
    default_grid=_data_constrained_nd_grid,
    derived=_data_constrained_nd_derived,
)


# --- Other formulas ------------------------------------------------------------------------

def compute_flops(N: ArrayLike, D: ArrayLike) -> np.ndarray:
    """Training compute under the usual dense-transformer count.

    ``C = 6 N D``  [FLOPs]: 2 N D forward plus 4 N D backward.
    """
    return 6.0 * np.asarray(N, dtype=float) * np.asarray(D, dtype=float)


LAWS: dict[str, Law] = {
    law.name: law
    for law in (CHINCHILLA, POWER_LAW, KAPLAN_N, KAPLAN_D, KAPLAN_ND, BROKEN_POWER_LAW,
                DATA_CONSTRAINED, DATA_CONSTRAINED_ND)
}
