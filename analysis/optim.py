"""Batched L-BFGS: many independent small minimisations advanced in lock-step with numpy.

A scaling-law fit is a 2-6 parameter problem solved from thousands of starts (the grid) or on
thousands of resampled data sets (the bootstrap). Python-level overhead, not arithmetic,
dominates a loop of ``scipy.optimize.minimize`` calls, so here every start is one row of a
``(batch, n_params)`` array and each iteration costs a handful of numpy calls for the batch.

The algorithm follows scipy's L-BFGS-B closely enough to reach the same minima: a two-loop
recursion with ``m`` correction pairs, a projected backtracking (Armijo) line search, box
bounds by projection, and scipy's stopping rules (relative decrease ``ftol``, projected
gradient ``gtol``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

# fg(x, rows) -> (f, g): objective (k,) and gradient (k, p) for the batch rows `rows`.
ValueAndGrad = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class BatchResult:
    """Outcome of :func:`minimize_batch`; row i belongs to start i."""

    x: np.ndarray  # (batch, p)
    fun: np.ndarray  # (batch,)
    converged: np.ndarray  # (batch,) bool: stopped by ftol/gtol rather than maxiter/line search
    n_iter: np.ndarray  # (batch,) int


def minimize_batch(
    fg: ValueAndGrad,
    x0: np.ndarray,
    lower: np.ndarray | None = None,
    upper: np.ndarray | None = None,
    *,
    maxiter: int = 1000,
    m: int = 10,
    ftol: float = 2.220446049250313e-09,
    gtol: float = 1e-5,
    max_linesearch: int = 30,
) -> BatchResult:
    """Minimise ``batch`` independent smooth functions of ``p`` variables at once.

    ``fg(x, rows)`` returns the values and gradients for the batch members ``rows`` at points
    ``x`` (one row per member). Rows that have converged drop out of later calls, so the cost
    shrinks as starts finish.
    """
    x = np.array(x0, dtype=float, copy=True)
    if x.ndim != 2:
        raise ValueError(f"x0 has shape {x.shape}; pass a (batch, n_params) array")
    batch, p = x.shape
    lo = np.full(p, -np.inf) if lower is None else np.asarray(lower, dtype=float)
    hi = np.full(p, np.inf) if upper is None else np.asarray(upper, dtype=float)
    x = np.clip(x, lo, hi)

    rows_all = np.arange(batch)
    f, g = fg(x, rows_all)
    f = np.array(f, dtype=float)
    g = np.array(g, dtype=float)
    S = np.zeros((batch, m, p))
    Y = np.zeros((batch, m, p))
    rho = np.zeros((batch, m))
    n_iter = np.zeros(batch, dtype=int)
    converged = _projected_gradient_norm(x, g, lo, hi) <= gtol
    stalled = ~np.isfinite(f)  # a start where the law overflows cannot move; leave it

    for it in range(maxiter):
        act = np.flatnonzero(~converged & ~stalled)
        if act.size == 0:
            break
        xa, fa, ga = x[act], f[act], g[act]
        with np.errstate(all="ignore"):  # a degenerate pair gives inf/nan, caught just below
            d = -_two_loop(ga, S[act], Y[act], rho[act], it, m)
        # Variables pinned at a bound whose direction points outward stay fixed, as in a
        # projected-gradient step; otherwise the projection would shorten every step to zero.
        pinned = ((xa <= lo) & (d < 0)) | ((xa >= hi) & (d > 0))
        d[pinned] = 0.0
        slope = np.einsum("ij,ij->i", ga, d)
        bad = ~(slope < 0) | ~np.isfinite(d).all(axis=1)
        if bad.any():
            # Not a descent direction: drop the curvature history and take steepest descent.
            gd = -ga[bad]
            gd[pinned[bad]] = 0.0
            d[bad] = gd / np.maximum(1.0, np.linalg.norm(gd, axis=1))[:, None]
            S[act[bad]] = 0.0
            Y[act[bad]] = 0.0
            rho[act[bad]] = 0.0
            slope[bad] = np.einsum("ij,ij->i", ga[bad], d[bad])
        first = ~rho[act].any(axis=1)
        if first.any():
            # No curvature information yet: scipy also starts with a step of length 1/|g|.
            scale = 1.0 / np.maximum(np.linalg.norm(d[first], axis=1), 1e-12)
            d[first] *= np.minimum(1.0, scale)[:, None]
            slope[first] = np.einsum("ij,ij->i", ga[first], d[first])

        step = np.ones(act.size)
        x_new = np.empty_like(xa)
        f_new = np.full(act.size, np.inf)
        g_new = np.empty_like(ga)
        todo = np.arange(act.size)
        for _ in range(max_linesearch):
            xt = np.clip(xa[todo] + step[todo, None] * d[todo], lo, hi)
            ft, gt = fg(xt, act[todo])
            decrease = np.einsum("ij,ij->i", ga[todo], xt - xa[todo])
            ok = np.isfinite(ft) & (ft <= fa[todo] + 1e-4 * decrease)
            done = todo[ok]
            x_new[done], f_new[done], g_new[done] = xt[ok], ft[ok], gt[ok]
            todo = todo[~ok]
            if todo.size == 0:
                break
            # Quadratic interpolation of the step, safeguarded to [0.1, 0.5] of the last one.
            st = step[todo]
            fbad = ft[~ok]
            sl = slope[todo]
            denom = 2.0 * (fbad - fa[todo] - sl * st)
            with np.errstate(divide="ignore", invalid="ignore"):
                trial = -sl * st * st / denom
            trial = np.where(np.isfinite(trial), trial, 0.5 * st)
            step[todo] = np.clip(trial, 0.1 * st, 0.5 * st)
        # A start whose line search fails is at a (numerical) minimum along d: stop it.
        stalled[act[todo]] = True
        moved = np.setdiff1d(np.arange(act.size), todo, assume_unique=True)
        if moved.size == 0:
            continue
        rows = act[moved]
        s = x_new[moved] - xa[moved]
        y = g_new[moved] - ga[moved]
        sy = np.einsum("ij,ij->i", s, y)
        yy = np.einsum("ij,ij->i", y, y)
        keep = sy > 2.2e-16 * yy  # the curvature condition; a pair failing it is skipped
        slot = it % m
        S[rows, slot] = np.where(keep[:, None], s, 0.0)
        Y[rows, slot] = np.where(keep[:, None], y, 0.0)
        rho[rows, slot] = np.where(keep, 1.0 / np.where(keep, sy, 1.0), 0.0)

        f_old = fa[moved]
        x[rows], f[rows], g[rows] = x_new[moved], f_new[moved], g_new[moved]
        n_iter[rows] += 1
        rel = (f_old - f[rows]) / np.maximum(np.maximum(np.abs(f_old), np.abs(f[rows])), 1.0)
        pg = _projected_gradient_norm(x[rows], g[rows], lo, hi)
        converged[rows] = (rel <= ftol) | (pg <= gtol)
    return BatchResult(x=x, fun=f, converged=converged, n_iter=n_iter)


def _two_loop(g: np.ndarray, S: np.ndarray, Y: np.ndarray, rho: np.ndarray, it: int, m: int):
    """Apply the L-BFGS inverse-Hessian estimate to g, for every row at once."""
    q = g.copy()
    count = min(it, m)
    order = [(it - 1 - j) % m for j in range(count)]  # newest pair first
    alphas = []
    for slot in order:
        a = rho[:, slot] * np.einsum("ij,ij->i", S[:, slot], q)
        q -= a[:, None] * Y[:, slot]
        alphas.append(a)
    gamma = np.ones(g.shape[0])
    have = np.zeros(g.shape[0], dtype=bool)
    for slot in order:  # scale by s'y / y'y of the newest usable pair
        use = (rho[:, slot] > 0) & ~have
        if use.any():
            yy = np.einsum("ij,ij->i", Y[use, slot], Y[use, slot])
            gamma[use] = 1.0 / (rho[use, slot] * yy)
            have |= use
    r = gamma[:, None] * q
    for slot, a in zip(reversed(order), reversed(alphas)):
        b = rho[:, slot] * np.einsum("ij,ij->i", Y[:, slot], r)
        r += (a - b)[:, None] * S[:, slot]
    return r


def _projected_gradient_norm(x, g, lo, hi) -> np.ndarray:
    """Infinity norm of the projected gradient, scipy's gtol measure."""
    pg = np.clip(x - g, lo, hi) - x
    return np.abs(pg).max(axis=1)
