"""Each law written in log space, with its Jacobian, for fitting.

:mod:`scaling.analysis.laws` holds the laws as users read them. The fit needs something else: log L as
a function of unconstrained-ish parameters (log-scales such as ``a = log A``), and the
derivative of log L with respect to each, evaluated for a whole batch of parameter vectors at
once. Writing log L as a log-sum-exp keeps every term positive and the arithmetic stable, as in
Epoch AI's replication of Chinchilla (``log L = LSE(a - alpha log N, b - beta log D, e)``).

A :class:`Form` maps internal parameters ``theta`` (shape ``(batch, p)``) and the data columns
(each shape ``(n,)``) to ``log L`` (shape ``(batch, n)``) and its Jacobian (a list of ``p``
arrays of shape ``(batch, n)``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

Columns = dict[str, np.ndarray]
CHUNK_POINTS = 65536


@dataclass(frozen=True)
class Form:
    """A law in the shape the optimiser needs. See the module docstring."""

    name: str
    inputs: tuple[str, ...]  # data columns the law reads, e.g. ("N", "D")
    theta_names: tuple[str, ...]  # internal parameters, e.g. ("a", "b", "e", "alpha", "beta")
    param_names: tuple[str, ...]  # public parameters, e.g. ("E", "A", "B", "alpha", "beta")
    # For each internal parameter, the public one it encodes and whether it is that one's log
    # (a = log A). to_public, the bounds in public units and the constraints all derive from
    # this one mapping, so they cannot disagree.
    encodes: tuple[str, ...]  # e.g. ("A", "B", "E", "alpha", "beta")
    logged: tuple[bool, ...]  # e.g. (True, True, True, False, False)
    log_pred: Callable[[np.ndarray, Columns], tuple[np.ndarray, list[np.ndarray]]]
    lower: np.ndarray  # bounds of the internal parameters (a log-scale one bounds the log)
    upper: np.ndarray
    # Data columns (log inputs, and "lny", the log losses, when the fit has them) -> (starts, p).
    # Grids scale with the data: scales around its inputs, offsets below its lowest loss.
    default_grid: Callable[[Columns], np.ndarray]
    derived: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] = field(
        default=lambda params: {}
    )
    # Optional fused Huber objective and gradient, for the law whose 4,500-start grid makes
    # speed matter; it must agree with the generic path (a test checks it).
    fused: Callable | None = None

    def __post_init__(self):
        if sorted(self.encodes) != sorted(self.param_names) or len(self.logged) != self.n_params:
            raise ValueError(f"form {self.name}: encodes {self.encodes} must list each of "
                             f"{self.param_names} once, with one logged flag per theta")

    @property
    def n_params(self) -> int:
        return len(self.theta_names)

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


# --- Chinchilla: L = E + A N^-alpha + B D^-beta ------------------------------------------

def _chinchilla_log_pred(theta, cols):
    a, b, e, alpha, beta = (theta[:, i : i + 1] for i in range(5))
    lnN, lnD = cols["lnN"], cols["lnD"]
    lse, (w1, w2, w3) = _lse(a - alpha * lnN, b - beta * lnD, np.broadcast_to(e, (theta.shape[0], lnN.shape[-1])))
    return lse, [w1, w2, w3, -w1 * lnN, -w2 * lnD]


def _chinchilla_derived(p):
    alpha, beta, A, B = p["alpha"], p["beta"], p["A"], p["B"]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        s = alpha + beta
        G = (alpha * A / (beta * B)) ** (1.0 / s)
        return {"a": beta / s, "b": alpha / s, "G": G}


def _chinchilla_fused(theta, cols, log_loss, delta, weights):
    """Huber objective and gradient for Chinchilla in fewer array passes than the generic
    path: everything is taken relative to e, so ``log L_hat = e + log(1 + x1 + x2)`` with
    ``x1 = exp(a - e - alpha log N)``, ``x2 = exp(b - e - beta log D)``. The bounds keep the
    exponents below ~200, so no max-shift is needed against overflow."""
    a, b, e, alpha, beta = (theta[:, i : i + 1] for i in range(5))
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


CHINCHILLA = Form(
    name="chinchilla",
    inputs=("N", "D"),
    theta_names=("a", "b", "e", "alpha", "beta"),
    param_names=("E", "A", "B", "alpha", "beta"),
    encodes=("A", "B", "E", "alpha", "beta"),
    logged=(True, True, True, False, False),
    log_pred=_chinchilla_log_pred,
    # Exponents are kept non-negative (a negative one would make loss grow with scale);
    # the log-scales get wide but finite bounds so a runaway start cannot overflow.
    lower=np.array([-50.0, -50.0, -20.0, 0.0, 0.0]),
    upper=np.array([100.0, 100.0, 20.0, 10.0, 10.0]),
    # Epoch AI's grid (data/README.md): 6 x 6 x 5 x 5 x 5 = 4,500 starts.
    default_grid=lambda cols: _grid(
        np.arange(0, 30, 5), np.arange(0, 30, 5), np.arange(-1, 1.5, 0.5),
        np.arange(0, 2.5, 0.5), np.arange(0, 2.5, 0.5),
    ),
    derived=_chinchilla_derived,
    fused=_chinchilla_fused,
)


# --- Power law with an offset: L = E + A x^-alpha -----------------------------------------

def _power_log_pred(theta, cols):
    a, e, alpha = (theta[:, i : i + 1] for i in range(3))
    lnx = cols["lnx"]
    lse, (w1, w2) = _lse(a - alpha * lnx, np.broadcast_to(e, (theta.shape[0], lnx.shape[-1])))
    return lse, [w1, w2, -w1 * lnx]


POWER_LAW = Form(
    name="power_law",
    inputs=("x",),
    theta_names=("a", "e", "alpha"),
    param_names=("E", "A", "alpha"),
    encodes=("A", "E", "alpha"),
    logged=(True, True, False),
    log_pred=_power_log_pred,
    lower=np.array([-50.0, -20.0, 0.0]),
    upper=np.array([200.0, 20.0, 10.0]),
    default_grid=lambda cols: _power_grid(cols),
)


def _power_grid(cols):
    """Starts for E + A x^-alpha scaled to the data: E a fraction of the lowest loss (an offset
    below it), and for each alpha, A such that A x^-alpha spans the losses' scale at the
    data's median x (a = log A around ln L + alpha ln x)."""
    lnx = cols["lnx"]
    lny = cols.get("lny")
    if lny is None:  # no losses given: the grid of the first version
        return _grid(np.arange(0, 65, 5), np.arange(-1, 1.5, 0.5),
                     [0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0])
    y_lo, y_med, x_med = float(lny.min()), float(np.median(lny)), float(np.median(lnx))
    rows = []
    for alpha in (0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0):
        for e in y_lo + np.log([0.05, 0.3, 0.6, 0.8, 0.9, 0.97]):
            for da in (-3.0, -1.0, 0.0, 1.0, 3.0):
                rows.append((y_med + alpha * x_med + da, e, alpha))
    return np.array(rows)


# --- Kaplan: L(N) = (N_c/N)^alpha_N, L(D) = (D_c/D)^alpha_D --------------------------------

def _kaplan_1d_log_pred(theta, cols):
    lnc, alpha = theta[:, 0:1], theta[:, 1:2]
    lnx = cols["lnx"]
    u = lnc - lnx
    lp = alpha * u
    return lp, [np.broadcast_to(alpha, lp.shape), u]


def _kaplan_1d(name, param_names):
    return Form(
        name=name,
        inputs=("x",),
        theta_names=("log_" + param_names[0], param_names[1]),
        param_names=param_names,
        encodes=param_names,
        logged=(True, False),
        log_pred=_kaplan_1d_log_pred,
        lower=np.array([-50.0, 1e-6]),
        upper=np.array([200.0, 10.0]),
        default_grid=_kaplan_1d_grid,
    )


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


KAPLAN_N = _kaplan_1d("kaplan_n", ("N_c", "alpha_N"))
KAPLAN_D = _kaplan_1d("kaplan_d", ("D_c", "alpha_D"))


# --- Kaplan: L(N, D) = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D -------------------------

def _kaplan_nd_log_pred(theta, cols):
    lnNc, lnDc, aN, aD = (theta[:, i : i + 1] for i in range(4))
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


KAPLAN_ND = Form(
    name="kaplan_nd",
    inputs=("N", "D"),
    theta_names=("log_N_c", "log_D_c", "alpha_N", "alpha_D"),
    param_names=("N_c", "D_c", "alpha_N", "alpha_D"),
    encodes=("N_c", "D_c", "alpha_N", "alpha_D"),
    logged=(True, True, False, False),
    log_pred=_kaplan_nd_log_pred,
    lower=np.array([-50.0, -50.0, 1e-4, 1e-4]),
    upper=np.array([200.0, 200.0, 10.0, 10.0]),
    default_grid=lambda cols: _kaplan_nd_grid(cols),
    derived=lambda p: {
        "a": p["alpha_D"] / (p["alpha_N"] + p["alpha_D"]),
        "b": p["alpha_N"] / (p["alpha_N"] + p["alpha_D"]),
    },
)


# --- Broken power law, one break (Caballero et al. 2022) -----------------------------------
# L = E + B x^-c0 (1 + (x/d1)^(1/f1))^(-c1 f1)
# log L = LSE(e, b - c0 log x - c1 f1 softplus((log x - log d1)/f1))

def _softplus(z):
    return np.logaddexp(0.0, z)


def _bpl_log_pred(theta, cols):
    e, b, c0, c1, ld, f1 = (theta[:, i : i + 1] for i in range(6))
    lnx = cols["lnx"]
    z = (lnx - ld) / f1
    sp = _softplus(z)
    sig = 0.5 * (1.0 + np.tanh(0.5 * z))  # logistic(z), overflow-free
    u2 = b - c0 * lnx - c1 * f1 * sp
    lse, (w1, w2) = _lse(np.broadcast_to(e, u2.shape), u2)
    return lse, [w1, w2, -w2 * lnx, -w2 * f1 * sp, w2 * c1 * sig, -w2 * c1 * (sp - sig * z)]


def _bpl_grid(cols):
    lnx = cols["lnx"]
    # Breaks are searched inside the data: a break outside it is not identifiable.
    breaks = np.quantile(lnx, [0.25, 0.5, 0.75])
    lny = cols.get("lny")
    if lny is None:
        return _grid([-1.0, 0.0, 1.0], [0.0, 5.0, 10.0, 20.0], [0.0, 0.1, 0.3],
                     [0.1, 0.3, 1.0], breaks, [0.3, 1.0])
    # Scaled to the losses: E a fraction of the lowest (an offset below it), and B such that
    # B x^-c0 is of the losses' size at the data's median x.
    y_lo, y_med, x_med = float(lny.min()), float(np.median(lny)), float(np.median(lnx))
    rows = [(e, y_med + c0 * x_med + db, c0, c1, br, f1)
            for e in y_lo + np.log([0.3, 0.7, 0.95])
            for c0 in (0.0, 0.1, 0.3) for db in (-2.0, 0.0, 2.0)
            for c1 in (0.1, 0.3, 1.0) for br in breaks for f1 in (0.3, 1.0)]
    return np.array(rows)


BROKEN_POWER_LAW = Form(
    name="broken_power_law",
    inputs=("x",),
    theta_names=("e", "b", "c0", "c1", "log_d1", "f1"),
    param_names=("E", "B", "c0", "c1", "d1", "f1"),
    encodes=("E", "B", "c0", "c1", "d1", "f1"),
    logged=(True, True, False, False, True, False),
    log_pred=_bpl_log_pred,
    lower=np.array([-20.0, -50.0, -2.0, -5.0, -100.0, 0.01]),
    upper=np.array([20.0, 200.0, 10.0, 10.0, 200.0, 10.0]),
    default_grid=_bpl_grid,
)


FORMS: dict[str, Form] = {
    f.name: f for f in (CHINCHILLA, POWER_LAW, KAPLAN_N, KAPLAN_D, KAPLAN_ND, BROKEN_POWER_LAW)
}


def huber_value_and_grad(
    form: Form,
    theta: np.ndarray,
    cols: Columns,
    log_loss: np.ndarray,
    delta: float,
    weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Sum over points of Huber_delta(log L_obs - log L_pred), and its gradient in theta.

    ``weights`` (shape ``(batch, n)`` or ``(n,)``) multiplies each point's term; the bootstrap
    passes resampling counts here instead of copying the data.
    """
    fn = form.fused or (lambda *a: huber_value_and_grad_generic(form, *a))
    n_rows, n_points = theta.shape[0], log_loss.shape[-1]
    # Work through the batch in blocks of about 64k points: the temporaries then stay in
    # cache, which makes the whole evaluation 2-4x faster than one pass over a 4,500 x 240
    # array.
    rows = max(1, CHUNK_POINTS // n_points)
    if n_rows <= rows:
        return fn(theta, cols, log_loss, delta, weights)
    f = np.empty(n_rows)
    grad = np.empty((n_rows, theta.shape[1]))
    for i in range(0, n_rows, rows):
        sl = slice(i, i + rows)
        w = weights if weights is None or weights.ndim == 1 else weights[sl]
        f[sl], grad[sl] = fn(theta[sl], cols, log_loss, delta, w)
    return f, grad


def huber_value_and_grad_generic(form, theta, cols, log_loss, delta, weights=None):
    """:func:`huber_value_and_grad` from ``form.log_pred`` and its Jacobian."""
    lp, jac = form.log_pred(theta, cols)
    r = log_loss - lp
    ar = np.abs(r)
    c = np.minimum(ar, delta)
    # Huber: r^2/2 inside delta, delta(|r| - delta/2) outside; c(|r| - c/2) is both at once.
    f = c * (ar - 0.5 * c)
    psi = np.copysign(c, r)  # dHuber/dr
    if weights is not None:
        f = f * weights
        psi = psi * weights
    grad = np.stack([-(psi * j).sum(axis=1) for j in jac], axis=1)
    return f.sum(axis=1), grad
