"""Scaling laws as pure functions.

Each docstring is the formula with its units. Inputs broadcast like numpy arrays, so a law can
be evaluated on one point, a column of runs, or a grid. Conventions:

- ``N``: model parameters (count); ``D``: training tokens (or images) seen (count);
  ``C``: training compute in FLOPs (``C ~= 6 N D``).
- ``L``: loss in nats per token (or whatever unit the data's loss column uses).

These are the readable forms. The fitter uses the same laws written in log space
(:mod:`scaling.analysis.forms`), and a test checks the two agree.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def power_law(x: ArrayLike, E: float, A: float, alpha: float) -> np.ndarray:
    """Power law with an irreducible offset.

    ``L(x) = E + A * x^(-alpha)``

    x: N (parameters), D (tokens) or C (FLOPs); E: loss floor [nats]; A: scale
    [nats * unit(x)^alpha]; alpha: exponent [dimensionless].
    """
    x = np.asarray(x, dtype=float)
    return E + A * x ** (-alpha)


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


def compute_flops(N: ArrayLike, D: ArrayLike) -> np.ndarray:
    """Training compute under the usual dense-transformer count.

    ``C = 6 N D``  [FLOPs]: 2 N D forward plus 4 N D backward.
    """
    return 6.0 * np.asarray(N, dtype=float) * np.asarray(D, dtype=float)


def chinchilla_optimal(C: ArrayLike, E: float, A: float, B: float, alpha: float, beta: float):
    """Compute-optimal allocation under Chinchilla's law with ``C = 6 N D``.

    ``N_opt(C) = G (C/6)^a``, ``D_opt(C) = G^-1 (C/6)^b`` with ``a = beta/(alpha+beta)``,
    ``b = alpha/(alpha+beta)`` and ``G = (alpha A / (beta B))^(1/(alpha+beta))``.

    C [FLOPs] -> (N_opt [params], D_opt [tokens], L(N_opt, D_opt) [nats]).
    """
    C = np.asarray(C, dtype=float)
    s = alpha + beta
    G = (alpha * A / (beta * B)) ** (1.0 / s)
    N_opt = G * (C / 6.0) ** (beta / s)
    D_opt = (C / 6.0) ** (alpha / s) / G
    return N_opt, D_opt, chinchilla(N_opt, D_opt, E, A, B, alpha, beta)


LAWS = {
    "chinchilla": chinchilla,
    "power_law": power_law,
    "kaplan_n": kaplan_n,
    "kaplan_d": kaplan_d,
    "kaplan_nd": kaplan_nd,
    "broken_power_law": broken_power_law,
}
