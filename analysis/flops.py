"""The study's own FLOP scale: training FLOPs per token f(N), and the compute-optimal
allocation solved on it.

A study's runs count their compute as ``C = f(N) D``, where f(N) [FLOPs per token] is what the
planner counts for a model of N parameters: ``6 N`` for the matrix multiplies, plus attention
(about ``6 n_layers T d_model`` or twice that, see the notes on counting conventions) and
whatever else the FLOP convention includes. Chinchilla's closed form for the compute-optimal
allocation assumes ``C = 6 N D``; on a study whose runs count attention too, that allocation
and the loss curve it implies sit on another compute axis than the runs, and a curve
``L(N_opt(C), D_opt(C))`` drawn against the runs' C runs below all of them.

:class:`FlopsPerToken` is f(N) read from the runs themselves (``flops / tokens`` per run), and
:func:`allocate` solves the allocation on it numerically:

    N_opt(C) = argmin_N L(N, C / f(N)),   D_opt(C) = C / f(N_opt)

Interpolation rule (stated): the ratio ``r(N) = f(N) / (6 N)`` is interpolated in
``(ln N, ln r)`` between the study's model sizes (the median over runs of one size) by a
monotone cubic (PCHIP: smooth, and no overshoot between sizes), and held at its end value
beyond the smallest and the largest size. A smooth interpolant matters because the loss is
flat in N near the optimum: on GPT shapes with attention counted, sizes a factor 1.9 apart,
interpolating linearly moved N_opt by up to 1.5% from a brute-force minimisation on the true
f(N), and PCHIP by 0.07%. Holding the ratio
keeps f increasing and close to the last measured convention, where extrapolating a slope
would let f drift from ``6 N`` without bound. With every run at ``C = 6 N D`` the ratio is 1
and the allocation is the closed form's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
from numpy.typing import ArrayLike

from scaling.analysis.data import Data
from scaling.analysis.errors import AnalysisError

GOLDEN = (np.sqrt(5.0) - 1.0) / 2.0
SCAN_POINTS = 48  # coarse points in ln N per budget before the golden-section refinement
REFINE_ITERS = 60  # golden-section steps: shrink the bracket by 0.618^60 ~ 3e-13


@dataclass(frozen=True, eq=False)
class FlopsPerToken:
    """f(N) [FLOPs per token] = 6 N r(N), with ln r interpolated in ln N (see the module).

    ``N`` [params]: the knots, increasing; ``ratio``: r at each knot [dimensionless]. No knots
    means r = 1, the 6 N D convention. ``source`` says where it came from, for labels.
    """

    N: np.ndarray
    ratio: np.ndarray
    source: str = "6ND"

    def __call__(self, N: ArrayLike) -> np.ndarray:
        N = np.asarray(N, dtype=float)
        return 6.0 * N * self.r(N)

    def r(self, N: ArrayLike) -> np.ndarray:
        """f(N) / (6 N): how much the study's convention counts beyond 6 N."""
        N = np.asarray(N, dtype=float)
        if self.N.size == 0:
            return np.ones_like(N)
        if self.N.size < 3:  # too few knots for a cubic: linear, held beyond the ends
            return np.exp(np.interp(np.log(N), np.log(self.N), np.log(self.ratio)))
        from scipy.interpolate import PchipInterpolator

        # Clipping ln N to the knots holds r at its end values: the stated extrapolation rule.
        x = np.clip(np.log(N), np.log(self.N[0]), np.log(self.N[-1]))
        return np.exp(PchipInterpolator(np.log(self.N), np.log(self.ratio))(x))

    @property
    def is_6nd(self) -> bool:
        """True when f(N) = 6 N everywhere (to 1e-9), so the closed forms hold."""
        return bool(self.N.size == 0 or np.allclose(self.ratio, 1.0, rtol=0, atol=1e-9))

    @property
    def label(self) -> str:
        return "C = 6 N D" if self.is_6nd else f"C = f(N) D ({self.source})"

    def to_json(self) -> dict:
        return {"convention": "6ND" if self.is_6nd else "study", "source": self.source,
                "N": [float(v) for v in self.N], "ratio_to_6N": [float(v) for v in self.ratio]}

    @classmethod
    def six_n(cls) -> "FlopsPerToken":
        """f(N) = 6 N: the convention of Kaplan et al. and Chinchilla's closed form."""
        return cls(np.zeros(0), np.zeros(0), "6ND")

    @classmethod
    def from_runs(cls, N: ArrayLike, flops: ArrayLike, tokens: ArrayLike,
                  source: str = "runs' flops / tokens") -> "FlopsPerToken":
        """f from runs: N [params], flops [FLOPs] and tokens [count] per run (result.json's
        ``flops`` and ``tokens``, or plan.json's). One knot per distinct N, the median
        ratio of its runs."""
        N, flops, tokens = (np.asarray(v, dtype=float).reshape(-1) for v in (N, flops, tokens))
        if not (N.size == flops.size == tokens.size) or N.size == 0:
            raise AnalysisError(f"flops per token needs N, flops and tokens per run, of one "
                                f"length; got {N.size}, {flops.size} and {tokens.size}")
        ok = np.isfinite(N) & np.isfinite(flops) & np.isfinite(tokens) \
            & (N > 0) & (flops > 0) & (tokens > 0)
        if not ok.any():
            raise AnalysisError("no run has a positive finite N, flops and tokens; the FLOPs "
                                "per token f(N) = flops / tokens cannot be read from them")
        N, ratio = N[ok], flops[ok] / (tokens[ok] * 6.0 * N[ok])
        knots = np.unique(N)
        med = np.array([np.median(ratio[N == k]) for k in knots])
        return cls(knots, med, source)

    @classmethod
    def from_data(cls, data: Data) -> "FlopsPerToken":
        """f from a :class:`Data`'s own columns, f = C / D per run; 6 N when its C was
        derived as 6 N D (the source had no C) or it lacks N, D or C."""
        if data.c_derived or {"N", "D", "C"} & set(data.absent):
            return cls.six_n()
        return cls.from_runs(data.N, data.C, data.D, "runs' C / D")


def allocate(
    loss: Callable[..., np.ndarray],
    params: Mapping[str, ArrayLike],
    C: ArrayLike,
    flops: FlopsPerToken,
    N_guess: ArrayLike,
    span: float = 3.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Compute-optimal (N_opt, D_opt, L) at compute C [FLOPs] with ``D = C / f(N)``.

    ``loss(N, D, **params)``: a law in N and D (arrays broadcast: params of shape (k, 1)
    against C of shape (1, m) solve k x m problems at once). ``N_guess``: a starting point
    per problem (the 6 N D closed form); the search spans ``ln N_guess`` +- (``span`` + the
    largest |ln r| of f's knots), first on :data:`SCAN_POINTS` points, then by golden section
    around the best of them. A minimum on the span's edge is returned as NaN rather than as a
    wrong optimum.
    """
    C = np.asarray(C, dtype=float)
    x0 = np.log(np.asarray(N_guess, dtype=float))
    shape = np.broadcast_shapes(x0.shape, C.shape, *(np.shape(v) for v in params.values()))
    x0, Cb = np.broadcast_to(x0, shape), np.broadcast_to(C, shape)
    width = span + (float(np.max(np.abs(np.log(flops.ratio)))) if flops.N.size else 0.0)

    def objective(x):
        N = np.exp(x)
        with np.errstate(all="ignore"):
            v = loss(N, Cb / flops(N), **params)
        return np.where(np.isfinite(v), v, np.inf)

    # A draw whose start is not finite (an overflowing closed form) ends as NaN, marked below,
    # without a RuntimeWarning on the console of every study.
    with np.errstate(invalid="ignore", over="ignore"):
        grid = np.linspace(-width, width, SCAN_POINTS)
        values = np.stack([objective(x0 + g) for g in grid])  # (SCAN_POINTS, *shape)
        best = np.argmin(values, axis=0)
        step = grid[1] - grid[0]
        lo = x0 + grid[best] - step
        hi = x0 + grid[best] + step
        # Golden section on [lo, hi], all problems in step.
        a = hi - GOLDEN * (hi - lo)
        b = lo + GOLDEN * (hi - lo)
        fa, fb = objective(a), objective(b)
        for _ in range(REFINE_ITERS):
            left = fa < fb
            hi = np.where(left, b, hi)
            lo = np.where(left, lo, a)
            new = np.where(left, hi - GOLDEN * (hi - lo), lo + GOLDEN * (hi - lo))
            fnew = objective(new)
            a, b, fa, fb = (np.where(left, new, b), np.where(left, a, new),
                            np.where(left, fnew, fb), np.where(left, fa, fnew))
        x = 0.5 * (lo + hi)
        edge = (best == 0) | (best == SCAN_POINTS - 1) | ~np.isfinite(values.min(axis=0))
        x = np.where(edge, np.nan, x)
        N_opt = np.exp(x)
        D_opt = Cb / flops(N_opt)
    with np.errstate(all="ignore"):
        L = loss(N_opt, D_opt, **params)
    return N_opt, D_opt, L


def local_exponents(C: np.ndarray, N_opt: np.ndarray, D_opt: np.ndarray,
                    axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares slopes of ln N_opt and ln D_opt against ln C along ``axis``: the
    allocation's exponents (a, b) over the budgets C. Under 6 N D and Chinchilla's law these
    are ``beta/(alpha+beta)`` and ``alpha/(alpha+beta)`` exactly; under another f(N) they are
    the exponents a study measures over those budgets (its approach 2 fits the same slope)."""
    lnC = np.log(np.asarray(C, dtype=float))
    u = lnC - lnC.mean()
    u = np.moveaxis(np.broadcast_to(u, np.shape(N_opt)), axis, -1) if np.ndim(N_opt) > 1 else u
    out = []
    for v in (N_opt, D_opt):
        lv = np.moveaxis(np.log(v), axis, -1)
        with np.errstate(invalid="ignore"):
            out.append(np.sum(u * (lv - lv.mean(axis=-1, keepdims=True)), axis=-1)
                       / np.sum(u * u, axis=-1))
    return out[0], out[1]
